"""SyncService settings, from environment variables with safe defaults.

Google's hosts are the real ones unless `GBP_API_ROOT` points every Google call (OAuth token,
accounts, locations, reviews) at one root, as the emulator serves them; each base URL can also be
overridden on its own, which wins over the root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from service_runtime.auth import AuthSettings
from service_runtime.config import ConfigError, Env
from service_runtime.database import PoolSettings, database_url_from_env
from service_runtime.tls import ServerTls
from sync_service.crypto import TokenCipher

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_ACCOUNT_MANAGEMENT_URL = "https://mybusinessaccountmanagement.googleapis.com"
GOOGLE_BUSINESS_INFORMATION_URL = "https://mybusinessbusinessinformation.googleapis.com"
GOOGLE_V4_URL = "https://mybusiness.googleapis.com"

DEFAULT_KEY_FILE = Path("var") / "token-encryption.key"


@dataclass(frozen=True)
class GoogleEndpoints:
    """Where each Google API lives. Paths below these roots are Google's own."""

    token_url: str = GOOGLE_TOKEN_URL
    account_management_url: str = GOOGLE_ACCOUNT_MANAGEMENT_URL
    business_information_url: str = GOOGLE_BUSINESS_INFORMATION_URL
    v4_url: str = GOOGLE_V4_URL

    @classmethod
    def rooted(cls, root: str) -> GoogleEndpoints:
        """Every API under one root, the token endpoint at `{root}/token` (the emulator's shape)."""
        root = root.rstrip("/")
        return cls(
            token_url=f"{root}/token",
            account_management_url=root,
            business_information_url=root,
            v4_url=root,
        )


@dataclass(frozen=True)
class GoogleSettings:
    """How the Google client talks to Google."""

    endpoints: GoogleEndpoints = field(default_factory=GoogleEndpoints)
    client_id: str = ""
    client_secret: str = ""
    # Requests per quota window per Google Cloud project and API, shared by every sync of every
    # replica (see docs/quota.md); the default of each API unless it has its own below.
    quota_per_window: int = 300
    # Per-API quotas; None: `quota_per_window`.
    quota_per_window_account_management: int | None = None
    quota_per_window_business_information: int | None = None
    quota_per_window_reviews: int | None = None
    # Google's quotas are per minute; a shorter window exists for tests against the emulator.
    quota_window: timedelta = timedelta(minutes=1)
    # The most time between taking a quota slot and Google counting the request (connection
    # set-up, network): the shared budget's rate is lowered by it so that no window Google
    # counts can see more than the quota (docs/quota.md).
    quota_latency_allowance: timedelta = timedelta(seconds=1)
    # One HTTP request, connect to last byte.
    request_timeout: timedelta = timedelta(seconds=30)
    # In-call retries of transient failures (5xx, timeouts, connection errors); 429 is not
    # retried in-call: the job is retried later by the queue with the server's delay.
    max_retries: int = 2
    retry_base_delay: timedelta = timedelta(seconds=1)
    # A longer Retry-After than this is not waited for in-call; the queue retries the job.
    max_in_call_wait: timedelta = timedelta(seconds=10)
    # Refresh the access token when it expires within this margin.
    token_refresh_margin: timedelta = timedelta(seconds=60)

    def quota_limit(self, api: str) -> int:
        """Requests per `quota_window` for one API (a `GoogleApiName` value)."""
        own = {
            "account_management": self.quota_per_window_account_management,
            "business_information": self.quota_per_window_business_information,
            "reviews": self.quota_per_window_reviews,
        }[api]
        return self.quota_per_window if own is None else own


@dataclass(frozen=True)
class SyncSettings:
    listen_addr: str = "127.0.0.1:50052"
    database_url: str = ""
    # DB_POOL_SIZE, DB_MAX_OVERFLOW, DB_POOL_TIMEOUT, as for QueueService.
    db_pool: PoolSettings = field(default_factory=PoolSettings)
    auth: AuthSettings = field(
        default_factory=lambda: AuthSettings(jwt_secret="", trigger_secret="")
    )
    google: GoogleSettings = field(default_factory=GoogleSettings)
    # Comma-separated Fernet keys: the first encrypts, all decrypt (rotation). Empty: a
    # development key file is created at `token_key_file`.
    token_encryption_keys: tuple[str, ...] = ()
    token_key_file: Path = DEFAULT_KEY_FILE
    # Incremental syncs re-read this much before the last watermark: Google's updateTime order
    # is not a strict log, and a review edited while the last sync ran must not be missed.
    incremental_overlap: timedelta = timedelta(days=1)
    # Locations whose reviews are read at the same time within one sync.
    location_concurrency: int = 4
    # Upper bound of one sync when the caller sets no deadline.
    max_sync_duration: timedelta = timedelta(minutes=10)
    # An unfinished pass older than this is not resumed but begun again: its snapshot time
    # would be too old to stamp what the next attempt reads.
    checkpoint_max_age: timedelta = timedelta(hours=6)
    grace_period: timedelta = timedelta(seconds=10)
    log_level: str = "INFO"
    # Prometheus metrics endpoint (host, port); None: none (see docs/observability.md).
    metrics_addr: tuple[str, int] | None = None
    # SYNC_TLS_CERT_FILE, SYNC_TLS_KEY_FILE, SYNC_TLS_CLIENT_CA_FILE; None: plain text.
    tls: ServerTls | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> SyncSettings:
        env = env or Env()
        root = env.url("GBP_API_ROOT", "")
        base = GoogleEndpoints.rooted(root) if root else GoogleEndpoints()
        endpoints = GoogleEndpoints(
            token_url=env.url("GOOGLE_OAUTH_TOKEN_URL", base.token_url),
            account_management_url=env.url(
                "GBP_ACCOUNT_MANAGEMENT_URL", base.account_management_url
            ),
            business_information_url=env.url(
                "GBP_BUSINESS_INFORMATION_URL", base.business_information_url
            ),
            v4_url=env.url("GBP_V4_URL", base.v4_url),
        )
        defaults = GoogleSettings()
        quota = env.int(
            "GBP_QUOTA_PER_MINUTE", defaults.quota_per_window, minimum=1, maximum=1_000_000
        )
        google = GoogleSettings(
            endpoints=endpoints,
            client_id=env.str("GOOGLE_OAUTH_CLIENT_ID", ""),
            client_secret=env.str("GOOGLE_OAUTH_CLIENT_SECRET", ""),
            quota_per_window=quota,
            quota_per_window_account_management=env.int(
                "GBP_QUOTA_PER_MINUTE_ACCOUNT_MANAGEMENT", quota, minimum=1, maximum=1_000_000
            ),
            quota_per_window_business_information=env.int(
                "GBP_QUOTA_PER_MINUTE_BUSINESS_INFORMATION", quota, minimum=1, maximum=1_000_000
            ),
            quota_per_window_reviews=env.int(
                "GBP_QUOTA_PER_MINUTE_REVIEWS", quota, minimum=1, maximum=1_000_000
            ),
            quota_latency_allowance=env.duration(
                "GBP_QUOTA_LATENCY_ALLOWANCE",
                defaults.quota_latency_allowance,
                minimum=timedelta(0),
                maximum=timedelta(minutes=1),
            ),
            quota_window=env.duration(
                "GBP_QUOTA_WINDOW",
                defaults.quota_window,
                minimum=timedelta(milliseconds=100),
                maximum=timedelta(hours=1),
            ),
            request_timeout=env.duration(
                "GBP_REQUEST_TIMEOUT",
                defaults.request_timeout,
                minimum=timedelta(milliseconds=100),
                maximum=timedelta(minutes=5),
            ),
            max_retries=env.int("GBP_MAX_RETRIES", defaults.max_retries, minimum=0, maximum=10),
            retry_base_delay=env.duration(
                "GBP_RETRY_BASE_DELAY",
                defaults.retry_base_delay,
                minimum=timedelta(0),
                maximum=timedelta(minutes=1),
            ),
            max_in_call_wait=env.duration(
                "GBP_MAX_IN_CALL_WAIT",
                defaults.max_in_call_wait,
                minimum=timedelta(0),
                maximum=timedelta(minutes=5),
            ),
            token_refresh_margin=env.duration(
                "GBP_TOKEN_REFRESH_MARGIN",
                defaults.token_refresh_margin,
                minimum=timedelta(0),
                maximum=timedelta(minutes=30),
            ),
        )
        keys: tuple[str, ...] = env.parsed(
            "TOKEN_ENCRYPTION_KEY", (), kind="fernet_keys", parse=_fernet_keys
        )
        return cls(
            listen_addr=env.address("SYNC_LISTEN_ADDR", cls.listen_addr),
            database_url=database_url_from_env(env),
            db_pool=PoolSettings.from_env(env),
            auth=AuthSettings.from_env(env),
            google=google,
            token_encryption_keys=keys,
            token_key_file=Path(env.str("TOKEN_ENCRYPTION_KEY_FILE", str(DEFAULT_KEY_FILE))),
            incremental_overlap=env.duration(
                "SYNC_INCREMENTAL_OVERLAP",
                cls.incremental_overlap,
                minimum=timedelta(0),
                maximum=timedelta(days=30),
            ),
            location_concurrency=env.int(
                "SYNC_LOCATION_CONCURRENCY", cls.location_concurrency, minimum=1, maximum=64
            ),
            max_sync_duration=env.duration(
                "SYNC_MAX_DURATION",
                cls.max_sync_duration,
                minimum=timedelta(seconds=1),
                maximum=timedelta(hours=6),
            ),
            checkpoint_max_age=env.duration(
                "SYNC_CHECKPOINT_MAX_AGE",
                cls.checkpoint_max_age,
                minimum=timedelta(minutes=1),
                maximum=timedelta(days=7),
            ),
            grace_period=env.duration(
                "GRACE_PERIOD",
                cls.grace_period,
                minimum=timedelta(0),
                maximum=timedelta(minutes=10),
            ),
            log_level=env.log_level("LOG_LEVEL", cls.log_level),
            metrics_addr=env.metrics_address("SYNC_METRICS_ADDR"),
            tls=ServerTls.from_env(env, "SYNC"),
        )


def _fernet_keys(raw: str) -> tuple[str, ...]:
    """TOKEN_ENCRYPTION_KEY's comma-separated Fernet keys, each checked now rather than at the
    first token written. Errors name a key by position only: the value is a secret."""
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    try:
        TokenCipher(keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return keys
