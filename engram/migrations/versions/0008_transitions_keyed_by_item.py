"""the audit trail keyed by item: primary key (tenant, item_id, transition_id), no separate item index

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 15:10:00

``transitions`` was keyed by ``(tenant, transition_id)``, a sha256 id, with a second index ``(tenant, item_id, at)``
for an item's history. Every audit row went to a random place in the first B-tree, and once the table outgrew what one
transaction touches, each row dirtied a page of its own there (written to the WAL, then again at the checkpoint): the
lifecycle's cost per event grew with the store (``bench/index_growth.py``). Keyed by item first, the rows of one item
sit together, an item's history is a range of the key, and the rows of items whose ids grow (events numbered by their
client, as most are) append at the end of the key. The item index is no longer needed. ``transition_id`` still
derives from the move, so a rerun of a move still conflicts with the row it wrote.

SQLite cannot change a primary key in place: the table is copied into one with the new key, in the migration's
transaction, which holds the store's write lock; the copy needs about the table's size again in the WAL while it runs.
PostgreSQL swaps the constraint: dropping the old key and building the new one take an ACCESS EXCLUSIVE lock on the
table, so reads and writes of the audit trail wait until the new key is built, a time that grows with the table.
Upgrade a large store with its work pools paused (``prefect work-pool pause NAME``), then resume them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _rebuild_sqlite(key: list[str], item_index: bool) -> None:
    """Copy ``transitions`` into a table with primary key ``key`` (its columns as the database has them), then put it
    in the old one's place, indexes too. All of it in the migration's transaction: a failure midway leaves the old
    table as it was."""
    bind = op.get_bind()
    op.execute("DROP TABLE IF EXISTS transitions_rekeyed")  # what a copy outside a transaction could have left
    old = sa.Table("transitions", sa.MetaData(), autoload_with=bind)
    columns = [sa.Column(c.name, c.type, nullable=c.nullable) for c in old.columns]
    op.create_table("transitions_rekeyed", *columns, sa.PrimaryKeyConstraint(*key))
    names = ", ".join(c.name for c in columns)
    op.execute(f"INSERT INTO transitions_rekeyed ({names}) SELECT {names} FROM transitions")  # noqa: S608
    op.drop_table("transitions")  # its indexes go with it
    op.rename_table("transitions_rekeyed", "transitions")
    if item_index:
        op.create_index("ix_transitions_item", "transitions", ["tenant", "item_id", "at"])
    op.create_index("ix_transitions_run", "transitions", ["flow_run_id"])
    op.create_index("ix_transitions_seq", "transitions", ["tenant", "seq"])


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(["tenant", "item_id", "transition_id"], item_index=False)
        return
    op.drop_constraint("transitions_pkey", "transitions", type_="primary")
    op.create_primary_key("transitions_pkey", "transitions", ["tenant", "item_id", "transition_id"])
    op.drop_index("ix_transitions_item", table_name="transitions")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(["tenant", "transition_id"], item_index=True)
        return
    op.create_index("ix_transitions_item", "transitions", ["tenant", "item_id", "at"])
    op.drop_constraint("transitions_pkey", "transitions", type_="primary")
    op.create_primary_key("transitions_pkey", "transitions", ["tenant", "transition_id"])
