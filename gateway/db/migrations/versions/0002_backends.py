"""Backends, learned speeds; image-to-image, describe and notes on jobs; captions and tags on assets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.common.time import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backends",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("auth_kind", sa.String(8), nullable=False),
        sa.Column("auth_username", sa.String(200), nullable=True),
        sa.Column("auth_secret", sa.Text(), nullable=True),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("discovered_models", sa.JSON(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("health_error", sa.Text(), nullable=True),
        sa.Column("loaded_model", sa.String(200), nullable=True),
        sa.Column("checked_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "backend_speeds",
        sa.Column("backend", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("seconds_per_unit", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sampler", sa.String(100), nullable=True))
        batch.add_column(sa.Column("scheduler", sa.String(100), nullable=True))
        batch.add_column(sa.Column("denoising_strength", sa.Float(), nullable=True))
        batch.add_column(sa.Column("init_image_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("mask_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("describe", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("oom_fallback", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("notes", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("caption", sa.Text(), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("tags")
        batch.drop_column("caption")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "notes",
            "oom_fallback",
            "describe",
            "mask_sha256",
            "init_image_sha256",
            "denoising_strength",
            "scheduler",
            "sampler",
        ):
            batch.drop_column(column)
    op.drop_table("backend_speeds")
    op.drop_table("backends")
