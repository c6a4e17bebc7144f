"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("role IN ('viewer', 'station', 'engineer', 'admin')", name=op.f('ck_api_key_role_valid')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_key')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_key_prefix'))
    )
    op.create_table('audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit'))
    )
    op.create_index(op.f('ix_audit_created_at'), 'audit', ['created_at'], unique=False)

    op.create_table('idempotency_record',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response_body', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_record')),
    sa.UniqueConstraint('owner', 'key', name=op.f('uq_idempotency_record_owner_key'))
    )
    op.create_index(op.f('ix_idempotency_record_created_at'), 'idempotency_record', ['created_at'], unique=False)

    op.create_table('job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('counters', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_job_state_valid')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job'))
    )
    op.create_index(op.f('ix_job_state'), 'job', ['state'], unique=False)

    op.create_table('lot',
    sa.Column('lot_id', sa.String(length=32), nullable=False),
    sa.Column('product', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('lot_id', name=op.f('pk_lot'))
    )
    op.create_index(op.f('ix_lot_created_at'), 'lot', ['created_at'], unique=False)
    op.create_index(op.f('ix_lot_product'), 'lot', ['product'], unique=False)

    op.create_table('model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('blob', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('class_names', sa.JSON(), nullable=False),
    sa.Column('software_accuracy', sa.Double(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_model_name_version'))
    )
    op.create_table('wafer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lot_id', sa.String(length=32), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('die_map', sa.JSON(), nullable=False),
    sa.Column('shape', sa.JSON(), nullable=True),
    sa.Column('n_sites', sa.Integer(), nullable=False),
    sa.CheckConstraint('number BETWEEN 1 AND 99', name=op.f('ck_wafer_number_range')),
    sa.ForeignKeyConstraint(['lot_id'], ['lot.lot_id'], name=op.f('fk_wafer_lot_id_lot'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wafer')),
    sa.UniqueConstraint('lot_id', 'number', name=op.f('uq_wafer_lot_id_number'))
    )
    op.create_table('die',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('wafer_id', sa.Integer(), nullable=False),
    sa.Column('x', sa.Integer(), nullable=False),
    sa.Column('y', sa.Integer(), nullable=False),
    sa.Column('ecid', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['wafer_id'], ['wafer.id'], name=op.f('fk_die_wafer_id_wafer'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_die')),
    sa.UniqueConstraint('ecid', name=op.f('uq_die_ecid')),
    sa.UniqueConstraint('wafer_id', 'x', 'y', name=op.f('uq_die_wafer_id_x_y'))
    )
    op.create_table('job_item',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('die_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_job_item_state_valid')),
    sa.ForeignKeyConstraint(['die_id'], ['die.id'], name=op.f('fk_job_item_die_id_die'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], name=op.f('fk_job_item_job_id_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_item')),
    sa.UniqueConstraint('job_id', 'die_id', 'step', name=op.f('uq_job_item_job_id_die_id_step'))
    )
    op.create_table('signature',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('die_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.Column('blob', sa.LargeBinary(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('reads', sa.Integer(), nullable=False),
    sa.Column('tester_s', sa.Double(), nullable=False),
    sa.Column('n_dead_cols', sa.Integer(), nullable=False),
    sa.Column('n_stuck_cells', sa.Integer(), nullable=False),
    sa.Column('offset_spread_mac', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['die_id'], ['die.id'], name=op.f('fk_signature_die_id_die'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signature')),
    sa.UniqueConstraint('die_id', 'version', name=op.f('uq_signature_die_id_version'))
    )
    op.create_index(op.f('ix_signature_sha256'), 'signature', ['sha256'], unique=False)
    op.create_index('uq_signature_current_die', 'signature', ['die_id'], unique=True, sqlite_where=sa.text('is_current'), postgresql_where=sa.text('is_current'))

    op.create_table('image',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('die_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('signature_id', sa.Integer(), nullable=False),
    sa.Column('ecid', sa.String(length=64), nullable=False),
    sa.Column('signature_sha256', sa.String(length=64), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['die_id'], ['die.id'], name=op.f('fk_image_die_id_die'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_image_model_id_model')),
    sa.ForeignKeyConstraint(['signature_id'], ['signature.id'], name=op.f('fk_image_signature_id_signature')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image')),
    sa.UniqueConstraint('die_id', 'model_id', 'signature_id', name=op.f('uq_image_die_id_model_id_signature_id'))
    )
    op.create_index(op.f('ix_image_content_sha256'), 'image', ['content_sha256'], unique=False)
    op.create_index(op.f('ix_image_ecid'), 'image', ['ecid'], unique=False)

    op.create_table('test_result',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('die_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=True),
    sa.Column('accuracy', sa.Double(), nullable=False),
    sa.Column('hard_bin', sa.Integer(), nullable=False),
    sa.Column('soft_bin', sa.Integer(), nullable=False),
    sa.Column('test_time_s', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['die_id'], ['die.id'], name=op.f('fk_test_result_die_id_die'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['image_id'], ['image.id'], name=op.f('fk_test_result_image_id_image')),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_test_result_model_id_model')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_test_result'))
    )
    op.create_index(op.f('ix_test_result_created_at'), 'test_result', ['created_at'], unique=False)
    op.create_index(op.f('ix_test_result_die_id'), 'test_result', ['die_id'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_test_result_die_id'), table_name='test_result')
    op.drop_index(op.f('ix_test_result_created_at'), table_name='test_result')

    op.drop_table('test_result')
    op.drop_index(op.f('ix_image_ecid'), table_name='image')
    op.drop_index(op.f('ix_image_content_sha256'), table_name='image')

    op.drop_table('image')
    op.drop_index('uq_signature_current_die', table_name='signature')
    op.drop_index(op.f('ix_signature_sha256'), table_name='signature')

    op.drop_table('signature')
    op.drop_table('job_item')
    op.drop_table('die')
    op.drop_table('wafer')
    op.drop_table('model')
    op.drop_index(op.f('ix_lot_product'), table_name='lot')
    op.drop_index(op.f('ix_lot_created_at'), table_name='lot')

    op.drop_table('lot')
    op.drop_index(op.f('ix_job_state'), table_name='job')

    op.drop_table('job')
    op.drop_index(op.f('ix_idempotency_record_created_at'), table_name='idempotency_record')

    op.drop_table('idempotency_record')
    op.drop_index(op.f('ix_audit_created_at'), table_name='audit')

    op.drop_table('audit')
    op.drop_table('api_key')
