"""Batches of recipe runs; jobs carry tags, a watermark and their batch; systems a watermark logo.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.common.time import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("system_id", sa.String(40), sa.ForeignKey("systems.id"), nullable=False),
        sa.Column("recipe", sa.String(100), nullable=False),
        sa.Column("record_id", sa.String(200), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("system_id", "idempotency_key", name="uq_batches_system_idempotency_key"),
    )
    op.create_index("ix_batches_system_created", "batches", ["system_id", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("watermark", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column(
                "batch_id",
                sa.String(40),
                sa.ForeignKey("batches.id", name="fk_jobs_batch_id", ondelete="SET NULL"),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("batch_role", sa.String(100), nullable=True))
        batch.add_column(sa.Column("batch_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("batch_name", sa.String(120), nullable=True))
        batch.create_index("ix_jobs_batch", ["batch_id"])
    with op.batch_alter_table("systems") as batch:
        batch.add_column(sa.Column("logo_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("systems") as batch:
        batch.drop_column("logo_sha256")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_batch")
        batch.drop_column("batch_name")
        batch.drop_column("batch_index")
        batch.drop_column("batch_role")
        batch.drop_constraint("fk_jobs_batch_id", type_="foreignkey")
        batch.drop_column("batch_id")
        batch.drop_column("watermark")
        batch.drop_column("tags")
    op.drop_index("ix_batches_system_created", "batches")
    op.drop_table("batches")
