"""semantic content hash

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 22:00:00

Existing rows keep a null ``content_hash``: an archived row's text is blanked, so its hash cannot be computed here,
and a hot row's would need the consolidator's stemmer inside a migration. The code falls back instead: a hot row's
hash is computed from its text, and the archive records it before it blanks the text; a row archived before this
revision has its hash in the detail of its ``archive`` audit row, where it was kept until then.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("semantic_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("semantic_items", schema=None) as batch_op:
        batch_op.drop_column("content_hash")
