"""records of what happened: test_result accuracy and test time NULL when nothing was measured (alarms,
die faults), with the alarm's code and step; one record per (job item, attempt)

Rows stored before this revision with a ``reason`` (an alarm or die-fault bin given without a
measurement) carried an invented ``accuracy`` and ``test_time_s`` of 0: the upgrade sets them NULL.
The downgrade writes 0 back (the older schema cannot say "not measured").

Revision ID: 0006_records
Revises: 0005_provenance
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_records"
down_revision: str | None = "0005_provenance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("test_result") as batch:
        batch.alter_column("accuracy", existing_type=sa.Double(), nullable=True)
        batch.alter_column("test_time_s", existing_type=sa.Double(), nullable=True)
        batch.add_column(sa.Column("alarm_code", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("step", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("job_item_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_test_result_job_item_id_job_item"),
            "job_item",
            ["job_item_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_unique_constraint(batch.f("uq_test_result_job_item_id_attempt"), ["job_item_id", "attempt"])
    op.execute("UPDATE test_result SET accuracy = NULL, test_time_s = NULL WHERE reason IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE test_result SET accuracy = 0.0 WHERE accuracy IS NULL")
    op.execute("UPDATE test_result SET test_time_s = 0.0 WHERE test_time_s IS NULL")
    with op.batch_alter_table("test_result") as batch:
        batch.drop_constraint(batch.f("uq_test_result_job_item_id_attempt"), type_="unique")
        batch.drop_constraint(batch.f("fk_test_result_job_item_id_job_item"), type_="foreignkey")
        batch.drop_column("attempt")
        batch.drop_column("job_item_id")
        batch.drop_column("step")
        batch.drop_column("alarm_code")
        batch.alter_column("test_time_s", existing_type=sa.Double(), nullable=False)
        batch.alter_column("accuracy", existing_type=sa.Double(), nullable=False)
