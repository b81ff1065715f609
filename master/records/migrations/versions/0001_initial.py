"""initial: kernel_builds and matrix_runs

Revision ID: 0001_initial
Revises:
Create Date: 2025-06-01

Written out in full rather than imported from models.py: a revision is a
snapshot and must not change when the models do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "matrix_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("buildid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("spec", sa.Text(), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("profiles", sa.JSON(), nullable=False),
        sa.Column("cells", sa.Integer(), nullable=False),
        sa.Column("built", sa.Integer(), nullable=False),
        sa.Column("cache_hits", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_matrix_runs"),
    )
    op.create_index("ix_matrix_runs_started_at", "matrix_runs", ["started_at"])

    op.create_table(
        "kernel_builds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("buildid", sa.Integer(), nullable=True),
        sa.Column("builderid", sa.Integer(), nullable=True),
        sa.Column("build_number", sa.Integer(), nullable=True),
        sa.Column("builder", sa.String(200), nullable=True),
        sa.Column("branch", sa.String(255), nullable=True),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("kernel_version", sa.String(64), nullable=True),
        sa.Column("profile", sa.String(100), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("llc_index", sa.Integer(), nullable=True),
        sa.Column("llc_cpus", sa.String(200), nullable=True),
        sa.Column("make_jobs", sa.Integer(), nullable=True),
        sa.Column("cache_key", sa.String(255), nullable=True),
        sa.Column("config_hash", sa.String(16), nullable=True),
        sa.Column("kconfig_hash", sa.String(16), nullable=True),
        sa.Column("extra_kconfig_hash", sa.String(16), nullable=True),
        sa.Column("dirty", sa.Boolean(), nullable=True),
        sa.Column("kernel_outcome", sa.String(32), nullable=True),
        sa.Column("result", sa.String(16), nullable=True),
        sa.Column("make_warnings", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reserve_s", sa.Float(), nullable=True),
        sa.Column("source_lock_s", sa.Float(), nullable=True),
        sa.Column("lookup_s", sa.Float(), nullable=True),
        sa.Column("configure_s", sa.Float(), nullable=True),
        sa.Column("make_s", sa.Float(), nullable=True),
        sa.Column("validate_s", sa.Float(), nullable=True),
        sa.Column("compile_commands_s", sa.Float(), nullable=True),
        sa.Column("store_s", sa.Float(), nullable=True),
        sa.Column("image_path", sa.Text(), nullable=True),
        sa.Column("entry_dir", sa.Text(), nullable=True),
        sa.Column("overrides_count", sa.Integer(), nullable=True),
        sa.Column("dropped_count", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("diff_hash", sa.String(64), nullable=True),
        sa.Column("matrix_run_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_kernel_builds"),
        sa.UniqueConstraint("buildid", name="uq_kernel_builds_buildid"),
        sa.ForeignKeyConstraint(
            ["matrix_run_id"],
            ["matrix_runs.id"],
            name="fk_kernel_builds_matrix_run_id_matrix_runs",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_kernel_builds_branch_started_at", "kernel_builds", ["branch", "started_at"])
    op.create_index("ix_kernel_builds_started_at", "kernel_builds", ["started_at"])
    op.create_index("ix_kernel_builds_cache_key", "kernel_builds", ["cache_key"])
    op.create_index("ix_kernel_builds_matrix_run_id", "kernel_builds", ["matrix_run_id"])


def downgrade() -> None:
    op.drop_table("kernel_builds")
    op.drop_table("matrix_runs")
