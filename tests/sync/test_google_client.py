"""The Google client's building blocks: error classification, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from cryptography.fernet import Fernet

from service_runtime.config import ConfigError, Env
from sync_service import google_client as g
from sync_service.crypto import TokenCipher, TokenDecryptError, load_or_create_key_file
from sync_service.models import parse_rfc3339
from sync_service.settings import GOOGLE_V4_URL, SyncSettings

URL = "https://mybusiness.googleapis.com/v4/accounts/1/locations/2/reviews"


def _response(status: int, body: object = None, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(
        status, json=body, headers=headers, request=httpx.Request("GET", URL + "?pageToken=x")
    )


def _quota_body(value: str) -> dict:
    return {
        "error": {
            "code": 429,
            "message": "Quota exceeded",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "metadata": {"quota_limit_value": value},
                }
            ],
        }
    }


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, _quota_body("300"), g.QuotaExceeded),
        (429, _quota_body("0"), g.ApiAccessNotApproved),
        (500, {}, g.GoogleUnavailable),
        (503, None, g.GoogleUnavailable),
        (504, {}, g.GoogleUnavailable),
        (400, {"error": {"code": 400, "message": "bad"}}, g.BadRequest),
        (401, {}, g.Unauthenticated),
        (403, {}, g.AccessDenied),
        (404, {"errors": [{"reason": "notFound"}]}, g.ResourceNotFound),
    ],
)
def test_api_errors_are_classified_once_from_the_response(status, body, kind):
    error = g.classify_api_error(_response(status, body))

    assert type(error) is kind
    assert error.http_status == status
    assert error.url == URL  # the query (page tokens) is left out of messages and logs
    is_retryable = isinstance(error, g.RetryableGoogleError)
    assert is_retryable == (kind in (g.QuotaExceeded, g.GoogleUnavailable))


def test_retry_after_is_honoured_in_seconds_as_a_date_or_as_retry_info():
    later = datetime.now(UTC) + timedelta(seconds=120)
    seconds = g.classify_api_error(_response(429, _quota_body("300"), {"Retry-After": "12"}))
    dated = g.classify_api_error(
        _response(503, {}, {"Retry-After": format_datetime(later, usegmt=True)})
    )
    body = _quota_body("300")
    body["error"]["details"].append(
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45s"}
    )
    info = g.classify_api_error(_response(429, body))
    default = g.classify_api_error(_response(429, _quota_body("300")))

    assert isinstance(seconds, g.QuotaExceeded) and seconds.retry_after == 12
    assert isinstance(dated, g.GoogleUnavailable) and 100 < dated.retry_after <= 120
    assert isinstance(info, g.QuotaExceeded) and info.retry_after == 45
    assert isinstance(default, g.QuotaExceeded) and default.retry_after == 30
    assert default.server_delay is None


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": "invalid_grant", "error_description": "revoked"}, g.InvalidGrant),
        (401, {"error": "invalid_client"}, g.InvalidClient),
        (500, {"error": "internal_failure"}, g.GoogleUnavailable),
        (400, {"error": "unsupported_grant_type"}, g.BadRequest),
    ],
)
def test_token_endpoint_errors_are_classified(status, body, kind):
    assert type(g.classify_token_error(_response(status, body))) is kind


def test_rfc3339_times_with_nine_digits_and_offsets_parse_to_utc():
    assert parse_rfc3339("2021-03-02T10:47:32.807123456Z") == datetime(
        2021, 3, 2, 10, 47, 32, 807123, tzinfo=UTC
    )
    assert parse_rfc3339("2021-03-02T12:47:32+02:00") == datetime(
        2021, 3, 2, 10, 47, 32, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339("yesterday")


def test_settings_point_every_google_url_at_one_root_and_allow_overrides():
    new_key, old_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = SyncSettings.from_env(
        Env(
            {
                "GBP_API_ROOT": "http://127.0.0.1:8085/",
                "GBP_V4_URL": GOOGLE_V4_URL,
                "GBP_QUOTA_PER_MINUTE": "120",
                "TOKEN_ENCRYPTION_KEY": f"{new_key}, {old_key}",
            }
        )
    )

    endpoints = settings.google.endpoints
    assert endpoints.token_url == "http://127.0.0.1:8085/token"
    assert endpoints.account_management_url == "http://127.0.0.1:8085"
    assert endpoints.business_information_url == "http://127.0.0.1:8085"
    assert endpoints.v4_url == GOOGLE_V4_URL
    assert settings.google.quota_per_window == 120
    assert settings.token_encryption_keys == (new_key, old_key)
    assert settings.listen_addr == "127.0.0.1:50052"
    with pytest.raises(ConfigError, match="GBP_API_ROOT"):
        SyncSettings.from_env(Env({"GBP_API_ROOT": "localhost:8085"}))
    with pytest.raises(ConfigError, match="GBP_QUOTA_PER_MINUTE"):
        SyncSettings.from_env(Env({"GBP_QUOTA_PER_MINUTE": "0"}))


def test_token_keys_rotate_and_a_missing_key_file_is_created_private(tmp_path):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed = TokenCipher([old]).encrypt("refresh-token")

    assert TokenCipher([new, old]).decrypt(sealed) == "refresh-token"
    with pytest.raises(TokenDecryptError):
        TokenCipher([new]).decrypt(sealed)
    with pytest.raises(ValueError, match="key #1") as bad:
        TokenCipher(["not-a-key"])
    assert "not-a-key" not in str(bad.value)
    path = tmp_path / "var" / "token.key"
    key = load_or_create_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_or_create_key_file(path) == key
