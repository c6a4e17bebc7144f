"""datasets (content-addressed blobs); model format 2 columns: input, preprocessing, datasets,
ideal-chip accuracy, pass limits and grade table

Revision ID: 0004_datasets_model_v2
Revises: 0003_image_provenance
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_datasets_model_v2"
down_revision: str | None = "0003_image_provenance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset_blob",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_dataset_blob")),
    )
    op.create_table(
        "dataset",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("features", sa.String(length=16), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"], ["dataset_blob.sha256"], name=op.f("fk_dataset_sha256_dataset_blob")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_dataset_name_version")),
    )
    with op.batch_alter_table("model") as batch:
        batch.add_column(sa.Column("format_version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("input_shape", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("preprocessing", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("calibration_dataset_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("test_dataset_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("ideal_accuracy", sa.Double(), nullable=True))
        batch.add_column(sa.Column("pass_limits", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("grade_table", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_model_calibration_dataset_id_dataset"), "dataset", ["calibration_dataset_id"], ["id"]
        )
        batch.create_foreign_key(
            batch.f("fk_model_test_dataset_id_dataset"), "dataset", ["test_dataset_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("model") as batch:
        batch.drop_constraint(batch.f("fk_model_test_dataset_id_dataset"), type_="foreignkey")
        batch.drop_constraint(batch.f("fk_model_calibration_dataset_id_dataset"), type_="foreignkey")
        for column in (
            "grade_table",
            "pass_limits",
            "ideal_accuracy",
            "test_dataset_id",
            "calibration_dataset_id",
            "preprocessing",
            "input_shape",
            "format_version",
        ):
            batch.drop_column(column)
    op.drop_table("dataset")
    op.drop_table("dataset_blob")
