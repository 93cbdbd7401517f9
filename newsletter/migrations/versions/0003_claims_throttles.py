"""per-batch delivery claims; deployment-wide send rate; shared web throttles

Revision ID: 0003_claims_throttles
Revises: 0002_bounces
Create Date: 2026-12-01 09:05:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import newsletter.models


revision: str = '0003_claims_throttles'
down_revision: str | None = '0002_bounces'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('claim_expires_at', newsletter.models.UTCDateTime(), nullable=True))
    op.create_table('rate_windows',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('tat_us', sa.BigInteger(), nullable=False),
    sa.Column('granted', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_rate_windows'))
    )
    op.create_table('throttles',
    sa.Column('key', sa.String(length=400), nullable=False),
    sa.Column('window_start', sa.Float(), nullable=False),
    sa.Column('hits', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_throttles'))
    )
    with op.batch_alter_table('throttles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_throttles_window_start'), ['window_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('throttles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_throttles_window_start'))
    op.drop_table('throttles')
    op.drop_table('rate_windows')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('claim_expires_at')
        batch_op.drop_column('claimed_by')
