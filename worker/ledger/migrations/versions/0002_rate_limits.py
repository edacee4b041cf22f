"""Rate limits: each channel's schedule of starts and pause; slots held by a command.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("schedule", sa.JSON, nullable=False),
        sa.Column("paused_until", sa.Float, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("bad_token_at", sa.Float, nullable=True),
        sa.Column("bad_token_detail", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("slots", sa.JSON, nullable=True))
        batch.add_column(sa.Column("rate_limited_since", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("rate_limited_since")
        batch.drop_column("slots")
    op.drop_table("channels")
