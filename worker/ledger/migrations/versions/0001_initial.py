"""The ledger's first schema: events, contacts (sequence per contact), commands.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.UniqueConstraint("source", "key", name="uq_events_source_key"),
    )
    op.create_table(
        "contacts",
        sa.Column("channel", sa.String(100), primary_key=True),
        sa.Column("contact_key", sa.String(600), primary_key=True),
        sa.Column("next_seq", sa.BigInteger, nullable=False),
        sa.Column("contact_id", sa.String(200), nullable=True),
        sa.Column("resolved_at", sa.Float, nullable=True),
    )
    op.create_table(
        "commands",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", Id, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("contact_key", sa.String(600), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("contact_id", sa.String(200), nullable=True),
        sa.Column("match_field", sa.String(100), nullable=True),
        sa.Column("match_value", sa.String(500), nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("not_before", sa.Float, nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("published_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("reason", sa.String(100), nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_commands_state_not_before", "commands", ["state", "not_before"])
    op.create_index("ix_commands_contact_seq", "commands", ["channel", "contact_key", "seq"])
    op.create_index("ix_commands_event", "commands", ["event_id"])


def downgrade() -> None:
    op.drop_table("commands")
    op.drop_table("contacts")
    op.drop_table("events")
