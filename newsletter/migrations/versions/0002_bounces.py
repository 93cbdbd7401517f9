"""bounces: bounce_events, delivery bounce columns, subscriber status complained

Revision ID: 0002_bounces
Revises: 0001
Create Date: 2026-12-01 09:10:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision: str = "0002_bounces"
down_revision: str | None = "0005_story_section"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_STATUSES = ("pending", "active", "unsubscribed", "bounced")
_NEW_STATUSES = (*_OLD_STATUSES, "complained")
_TYPES = ("hard", "soft", "policy", "complaint", "autoreply", "none")


def _status(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(
        *values, name="subscriber_status", native_enum=False, create_constraint=True, length=16
    )


def upgrade() -> None:
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("message_key", sa.String(length=255), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column(
            "type",
            sa.Enum(*_TYPES, name="bounce_event_type", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("received_at", newsletter.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_bounce_events_issue_id_issues"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_bounce_events_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
        sa.UniqueConstraint("message_key", name=op.f("uq_bounce_events_message_key")),
    )
    op.create_index(op.f("ix_bounce_events_received_at"), "bounce_events", ["received_at"], unique=False)
    op.create_index(
        "ix_bounce_events_subscriber_type", "bounce_events", ["subscriber_id", "type"], unique=False
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column(
                "bounce_type",
                sa.Enum(*_TYPES, name="bounce_type", native_enum=False, create_constraint=True, length=16),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("bounce_status", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("bounce_text", sa.Text(), nullable=True))
        batch.add_column(sa.Column("bounced_at", newsletter.models.UTCDateTime(), nullable=True))
        batch.create_index(batch.f("ix_deliveries_message_id"), ["message_id"], unique=False)
    # SQLite cannot alter a CHECK constraint: batch mode rebuilds the table (keeping
    # AUTOINCREMENT, so ids are still never reused); PostgreSQL alters in place.
    with op.batch_alter_table(
        "subscribers", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.alter_column(
            "status", existing_type=_status(_OLD_STATUSES), type_=_status(_NEW_STATUSES),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("complained_at", newsletter.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE subscribers SET status = 'bounced' WHERE status = 'complained'")
    with op.batch_alter_table(
        "subscribers", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("complained_at")
        batch.alter_column(
            "status", existing_type=_status(_NEW_STATUSES), type_=_status(_OLD_STATUSES),
            existing_nullable=False,
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index(batch.f("ix_deliveries_message_id"))
        batch.drop_constraint(batch.f("ck_deliveries_bounce_type"), type_="check")
        batch.drop_column("bounced_at")
        batch.drop_column("bounce_text")
        batch.drop_column("bounce_status")
        batch.drop_column("bounce_type")
    op.drop_index("ix_bounce_events_subscriber_type", table_name="bounce_events")
    op.drop_index(op.f("ix_bounce_events_received_at"), table_name="bounce_events")
    op.drop_table("bounce_events")
