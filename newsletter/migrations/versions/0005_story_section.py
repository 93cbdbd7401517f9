"""stories.section (the kicker) and stories.sort_at (undated stories' place)

Revision ID: 0005_story_section
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import newsletter.models

revision: str = "0005_story_section"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("section", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("sort_at", newsletter.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stories", schema=None) as batch_op:
        batch_op.drop_column("sort_at")
        batch_op.drop_column("section")
