"""Schema migrations (Alembic). `python -m migrations` brings DATABASE_URL to the newest schema.

The same migrations run on PostgreSQL and on SQLite. Each revision is frozen history: it never
imports the live table definitions, which move on.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service_runtime.database import database_url_from_env, ensure_sqlite_directory, sync_url

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    url = database_url or database_url_from_env()
    config = Config()
    config.set_main_option("script_location", str(HERE))
    # `%` would be read as interpolation by configparser.
    config.set_main_option(
        "sqlalchemy.url", sync_url(url).render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    url = database_url or database_url_from_env()
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
