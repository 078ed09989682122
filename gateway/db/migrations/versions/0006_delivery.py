"""Delivery: connector instances, the outbox (deliveries) with its attempts; jobs and batches name their targets.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.common.time import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "connector_instances",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("system_id", sa.String(40), sa.ForeignKey("systems.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("circuit_failures", sa.Integer(), nullable=False),
        sa.Column("circuit_open_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("system_id", "name", name="uq_connector_instances_system_name"),
    )
    op.create_index("ix_connector_instances_system_id", "connector_instances", ["system_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("system_id", sa.String(40), sa.ForeignKey("systems.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "connector_id", sa.String(40), sa.ForeignKey("connector_instances.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True),
        sa.Column("batch_id", sa.String(40), sa.ForeignKey("batches.id", ondelete="CASCADE"), nullable=True),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("external_url", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_deliveries_idempotency_key"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_deliveries_system", "deliveries", ["system_id", "id"])
    op.create_index("ix_deliveries_job_id", "deliveries", ["job_id"])
    op.create_index("ix_deliveries_batch_id", "deliveries", ["batch_id"])
    op.create_index("ix_deliveries_connector_id", "deliveries", ["connector_id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("delivery_id", sa.String(40), sa.ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_delivery_attempts_delivery_id", "delivery_attempts", ["delivery_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deliver", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
    with op.batch_alter_table("systems") as batch:
        batch.add_column(sa.Column("callback_secrets", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("systems") as batch:
        batch.drop_column("callback_secrets")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("callback_url")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("callback_url")
        batch.drop_column("deliver")
    op.drop_index("ix_delivery_attempts_delivery_id", "delivery_attempts")
    op.drop_table("delivery_attempts")
    for index in (
        "ix_deliveries_connector_id",
        "ix_deliveries_batch_id",
        "ix_deliveries_job_id",
        "ix_deliveries_system",
        "ix_deliveries_due",
    ):
        op.drop_index(index, "deliveries")
    op.drop_table("deliveries")
    op.drop_index("ix_connector_instances_system_id", "connector_instances")
    op.drop_table("connector_instances")
