"""provenance (driver, version, tester identity, site, resource, options hash, host) of every signature,
image and test result; retries of signatures and test results

Revision ID: 0005_provenance
Revises: 0004_datasets_model_v2
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_provenance"
down_revision: str | None = "0004_datasets_model_v2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provenance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("driver", sa.String(length=64), nullable=False),
        sa.Column("driver_version", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.String(length=128), nullable=False),
        sa.Column("site", sa.Integer(), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=True),
        sa.Column("options_sha256", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provenance")),
        sa.UniqueConstraint("key_sha256", name=op.f("uq_provenance_key_sha256")),
    )
    for table, retries in (("signature", True), ("image", False), ("test_result", True)):
        with op.batch_alter_table(table) as batch:
            if retries:
                batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
            batch.add_column(sa.Column("provenance_id", sa.Integer(), nullable=True))
            batch.create_foreign_key(
                batch.f(f"fk_{table}_provenance_id_provenance"), "provenance", ["provenance_id"], ["id"]
            )


def downgrade() -> None:
    for table, retries in (("test_result", True), ("image", False), ("signature", True)):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(batch.f(f"fk_{table}_provenance_id_provenance"), type_="foreignkey")
            batch.drop_column("provenance_id")
            if retries:
                batch.drop_column("retries")
    op.drop_table("provenance")
