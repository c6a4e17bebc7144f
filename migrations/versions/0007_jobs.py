"""job end states: job.state may be 'completed_with_failures' (some dies failed) and is 32 characters wide

Revision ID: 0007_jobs
Revises: 0006_records
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_jobs"
down_revision: str | None = "0006_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')"
NEW = "state IN ('queued', 'running', 'succeeded', 'completed_with_failures', 'failed', 'cancelled')"


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint(op.f("ck_job_state_valid"), type_="check")
        batch.alter_column("state", existing_type=sa.String(length=16), type_=sa.String(length=32))
        batch.create_check_constraint("state_valid", sa.text(NEW))


def downgrade() -> None:
    # A job that completed with failures was, before this revision, recorded as succeeded.
    op.execute("UPDATE job SET state = 'succeeded' WHERE state = 'completed_with_failures'")
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint(op.f("ck_job_state_valid"), type_="check")
        batch.alter_column("state", existing_type=sa.String(length=32), type_=sa.String(length=16))
        batch.create_check_constraint("state_valid", sa.text(OLD))
