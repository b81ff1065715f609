"""git names whole: branch, builder, kernel_version and cache_key become Text

Revision ID: 0002_git_names_whole
Revises: 0001_initial
Create Date: 2025-07-01

Git accepts branch names far longer than 255 characters, and a branch name
also travels in ``kernel_version`` (a matrix cell of a branch is labelled
``branch:<repo>/<branch>``), in ``cache_key`` (ktstr's git keys start with
the ref) and, for pollers, in ``builder``. A VARCHAR limit there made the
record step refuse the whole row, so these columns hold text of any length.
Existing rows are kept as they are: widening a column never changes a value.
Batch mode recreates the table on SQLite, which cannot ALTER a column type.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_git_names_whole"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# (column, its old VARCHAR length): the downgrade restores the limits.
WIDENED = (("builder", 200), ("branch", 255), ("kernel_version", 64), ("cache_key", 255))


def upgrade() -> None:
    with op.batch_alter_table("kernel_builds") as batch:
        for name, length in WIDENED:
            batch.alter_column(
                name, existing_type=sa.String(length), type_=sa.Text(), existing_nullable=True
            )


def downgrade() -> None:
    # Values longer than the old limits would be cut or refused by the database: a
    # downgrade is only safe while every value still fits.
    with op.batch_alter_table("kernel_builds") as batch:
        for name, length in WIDENED:
            batch.alter_column(
                name, existing_type=sa.Text(), type_=sa.String(length), existing_nullable=True
            )
