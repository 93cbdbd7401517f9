"""readers: frequency, sections, pause; weekly editions; per-section-set renderings

Revision ID: 0007_readers
Revises: 0006_security
Create Date: 2026-12-01 09:30:00

``issues.kind`` gains ``weekly``: its CHECK constraint is rebuilt (SQLite through a
batch table copy, PostgreSQL by dropping and re-adding the named constraint).
The sections readers choose from are ``stories.section`` (0005_story_section).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision: str = "0007_readers"
down_revision: str | None = "0006_security"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KINDS = ("digest", "manual")
_NEW_KINDS = ("digest", "manual", "weekly")


def _kind(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(
        *values, name="issue_kind", native_enum=False, create_constraint=True, length=16
    )


def upgrade() -> None:
    # A table copy on SQLite: keep AUTOINCREMENT (ids are never reused).
    with op.batch_alter_table(
        "subscribers", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.add_column(
            sa.Column(
                "frequency",
                sa.Enum(
                    "daily",
                    "weekly",
                    name="frequency",
                    native_enum=False,
                    create_constraint=True,
                    length=16,
                ),
                server_default="daily",
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("sections", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("paused_until", newsletter.models.UTCDateTime(), nullable=True)
        )
    _set_kinds(_OLD_KINDS, _NEW_KINDS)
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.add_column(sa.Column("edition_week", sa.String(length=10), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_issues_edition_week"), ["edition_week"])
    op.create_table(
        "issue_variants",
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("sections", sa.Text(), nullable=False),
        sa.Column("story_count", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("preheader", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issue_id"],
            ["issues.id"],
            name=op.f("fk_issue_variants_issue_id_issues"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("issue_id", "number", name=op.f("pk_issue_variants")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.Integer(), nullable=True))


def _set_kinds(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """Rebuild the CHECK constraint of ``issues.kind`` for the ``new`` values."""
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("issues", schema=None, recreate="always") as batch_op:
            batch_op.alter_column("kind", existing_type=_kind(old), type_=_kind(new))
        return
    op.drop_constraint(op.f("ck_issues_issue_kind"), "issues", type_="check")
    listed = ", ".join(f"'{value}'" for value in new)
    op.create_check_constraint(op.f("ck_issues_issue_kind"), "issues", f"kind IN ({listed})")


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("variant")
    op.drop_table("issue_variants")
    op.execute("DELETE FROM issues WHERE kind = 'weekly'")
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_issues_edition_week"), type_="unique")
        batch_op.drop_column("edition_week")
    _set_kinds(_NEW_KINDS, _OLD_KINDS)
    with op.batch_alter_table(
        "subscribers", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_subscribers_frequency"), type_="check")
        batch_op.drop_column("paused_until")
        batch_op.drop_column("sections")
        batch_op.drop_column("frequency")
