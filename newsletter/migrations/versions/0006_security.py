"""subscribers.epoch: confirm tokens tied to their moment (issue 16)

Revision ID: 0006_security
Revises: 0002_bounces
Create Date: 2026-12-01 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_security"
down_revision: str | None = "0003_claims_throttles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("epoch")
