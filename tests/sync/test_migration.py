"""Revision 0002 applies, reverts and re-applies on SQLite, and matches the table definitions."""

from __future__ import annotations

import sqlalchemy as sa

import migrations
from sync_service.tables import gmb_locations, gmb_reviews


def test_revision_0002_round_trips_and_matches_the_tables(sqlite_url: str):
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table in (gmb_locations, gmb_reviews):
                assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.c.keys())
            assert {i["name"] for i in inspector.get_indexes("gmb_reviews")} == {
                "ix_gmb_reviews_location_update"
            }
        migrations.downgrade(sqlite_url, "0001")
        with engine.connect() as conn:
            assert "gmb_reviews" not in sa.inspect(conn).get_table_names()
        migrations.upgrade(sqlite_url)
        with engine.connect() as conn:
            assert {"gmb_locations", "gmb_reviews"} <= set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
