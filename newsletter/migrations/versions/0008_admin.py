"""admin: editors, login events, the editor's story order

Revision ID: 0008_admin
Revises: 0007_readers
Create Date: 2026-12-01 09:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import newsletter.models


revision: str = '0008_admin'
down_revision: str | None = '0007_readers'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at', newsletter.models.UTCDateTime(), nullable=False),
    sa.Column('last_login_at', newsletter.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('login_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('at', newsletter.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_events'))
    )
    op.create_index('ix_login_events_account_at', 'login_events', ['account', 'at'], unique=False)
    op.create_index('ix_login_events_ip_at', 'login_events', ['ip', 'at'], unique=False)
    with op.batch_alter_table('stories') as batch_op:
        batch_op.add_column(sa.Column('pinned', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('position', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('stories') as batch_op:
        batch_op.drop_column('position')
        batch_op.drop_column('pinned')
    op.drop_index('ix_login_events_ip_at', table_name='login_events')
    op.drop_index('ix_login_events_account_at', table_name='login_events')
    op.drop_table('login_events')
    op.drop_table('users')
