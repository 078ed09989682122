"""Template versions; jobs record the template version they were rendered from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.common.time import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "template_versions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_key", sa.String(40), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("record_kind", sa.String(40), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column(
            "created_by_system_id", sa.String(40), sa.ForeignKey("systems.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("owner_key", "name", "version", name="uq_template_versions_owner_name_version"),
    )
    op.create_index("ix_template_versions_lookup", "template_versions", ["owner_key", "name"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("template_version_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("template_name", sa.String(100), nullable=True))
        batch.add_column(sa.Column("template_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("template_version")
        batch.drop_column("template_name")
        batch.drop_column("template_version_id")
    op.drop_index("ix_template_versions_lookup", "template_versions")
    op.drop_table("template_versions")
