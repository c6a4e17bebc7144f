"""job claims and progress: job.lot_id, job_item claim/lease/timing columns

Revision ID: 0002_job_claims
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002_job_claims'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job') as batch:
        batch.add_column(sa.Column('lot_id', sa.String(length=32), nullable=True))
        batch.create_index(batch.f('ix_job_lot_id'), ['lot_id'], unique=False)
    with op.batch_alter_table('job_item') as batch:
        batch.add_column(sa.Column('claimed_by', sa.String(length=96), nullable=True))
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True))
        batch.create_index('ix_job_item_job_id_state', ['job_id', 'state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job_item') as batch:
        batch.drop_index('ix_job_item_job_id_state')
        batch.drop_column('finished_at')
        batch.drop_column('started_at')
        batch.drop_column('heartbeat_at')
        batch.drop_column('claimed_by')
    with op.batch_alter_table('job') as batch:
        batch.drop_index(batch.f('ix_job_lot_id'))
        batch.drop_column('lot_id')
