"""The driver's statements are sent compact, short enough for psycopg's query cache, and mean
what they were written to mean."""

from __future__ import annotations

import pytest

from queue_service.drivers import postgres
from queue_service.drivers.sqltext import compact

# psycopg caches the conversion of queries up to this length (`MAX_CACHED_STATEMENT_LENGTH`).
PSYCOPG_CACHED_LENGTH = 4096
HOT = (
    "INSERT_SQL",
    "INSERT_REF_SQL",
    "PICK_SQL",
    "PICK_LEASED_SQL",
    "REPORT_SQL",
    "REPORT_ACK_SQL",
    "RELEASE_SQL",
    "EXTEND_SQL",
)


def test_comments_and_layout_go_and_quotes_stay_as_written():
    sql = """
    SELECT 'a  -- not a comment', "Odd  Name", 'it''s  here'  -- a comment
    FROM t   -- another
        WHERE x =   1
    """

    assert compact(sql) == (
        "SELECT 'a  -- not a comment', \"Odd  Name\", 'it''s  here' FROM t WHERE x = 1"
    )


@pytest.mark.parametrize("name", HOT)
def test_each_hot_statement_fits_psycopgs_query_cache(name):
    sql = getattr(postgres, name)

    assert len(sql) <= PSYCOPG_CACHED_LENGTH
    assert "\n" not in sql and "--" not in sql.replace("'--'", "")
