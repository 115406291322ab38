"""Alembic migrations of the hot store; ``upgrade_to_head`` is what ``Store.migrate`` and ``provision`` call."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at engram's revisions (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_to_head(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision; a no-op when it is already there."""
    migrate(engine, "head")


def migrate(engine: Engine, revision: str, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) the database behind ``engine`` to ``revision``, in one transaction."""
    cfg = alembic_config()
    with engine.connect() as conn:
        # On the store's SQLite engine, a write transaction starts with BEGIN IMMEDIATE (``Store._setup_sqlite``): the
        # migration holds the write lock from its first statement instead of failing to take it halfway through a
        # copy when another process wrote meanwhile.
        conn.info["engram_write"] = True
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                (command.downgrade if down else command.upgrade)(cfg, revision)
        finally:
            conn.info.pop("engram_write", None)


def revision_of(conn: Connection) -> str | None:
    """The revision the schema on ``conn`` is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return revision_of(conn)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
