"""build identity: what went into a build, what came out, and what changed since the last

Revision ID: 0003_build_identity
Revises: 0002_git_names_whole
Create Date: 2026-12-01

Each kernel build row gains its whole identity (commit, profile, base config,
fragments, arch, make variables, toolchain, host), the requested vs effective
config lists with the reason each dropped option was dropped, the final
config's set symbols, the output sizes, make's warnings as data, why make ran,
and, against the previous build of the branch and profile, the config diff,
the new warnings and the alerts. Every column is nullable: rows written before
this migration keep NULL there and read as they did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_build_identity"
down_revision = "0002_git_names_whole"
branch_labels = None
depends_on = None

COLUMNS = (
    ("identity", sa.JSON),
    ("config_overrides", sa.JSON),
    ("config_dropped", sa.JSON),
    ("config_symbols", sa.JSON),
    ("bzimage_bytes", sa.BigInteger),
    ("vmlinux_bytes", sa.BigInteger),
    ("vmlinux_stripped_bytes", sa.BigInteger),
    ("warnings", sa.JSON),
    ("explanation", sa.Text),
    ("config_diff", sa.JSON),
    ("new_warnings", sa.JSON),
    ("alerts", sa.JSON),
)


def upgrade() -> None:
    with op.batch_alter_table("kernel_builds") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("kernel_builds") as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
