"""image provenance (algorithm version, predicted agreement, compute time); test_result.reason

Revision ID: 0003_image_provenance
Revises: 0002_job_claims
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_image_provenance"
down_revision: str | None = "0002_job_claims"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.add_column(
            sa.Column("algorithm_version", sa.String(length=32), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("predicted_agreement", sa.Double(), nullable=True))
        batch.add_column(sa.Column("compute_s", sa.Double(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("calibratable", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
    with op.batch_alter_table("test_result") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("test_result") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("image") as batch:
        batch.drop_column("reason")
        batch.drop_column("calibratable")
        batch.drop_column("compute_s")
        batch.drop_column("predicted_agreement")
        batch.drop_column("algorithm_version")
