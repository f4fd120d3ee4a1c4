"""SyncService's Prometheus metrics: Google calls by API and answer, and the quota's waits."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# The label of calls to the OAuth token endpoint, which is no API's quota.
OAUTH = "oauth"

GOOGLE_CALLS = Counter(
    "gmbsync_google_requests_total",
    "HTTP requests sent to Google, by API (account_management, business_information, "
    "reviews, oauth) and answer (the HTTP status code, or transport_error).",
    ["api", "status"],
)
GOOGLE_SECONDS = Histogram(
    "gmbsync_google_request_duration_seconds",
    "Time Google took to answer one HTTP request (quota waits excluded), by API.",
    ["api"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUOTA_WAIT = Histogram(
    "gmbsync_quota_wait_seconds",
    "Time a request waited for a slot of the deployment's Google quota, by API (0 when a "
    "slot was free).",
    ["api"],
    buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUOTA_REFUSED = Counter(
    "gmbsync_quota_refused_total",
    "Requests refused because no quota slot would free before the sync's deadline, by API.",
    ["api"],
)
