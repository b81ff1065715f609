"""SQLAlchemy 2 models of the records database: one row per kernel build, one per matrix run.

The tables live in their own ``MetaData`` (never Buildbot's ``Model.metadata``)
and are versioned in their own alembic table, ``ktstr_alembic_version``, so the
records can share a database with Buildbot without either side's migrations
seeing the other's tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ktstr_steps import results

# Alembic's version table for this schema; alembic's default name belongs to Buildbot.
VERSION_TABLE = "ktstr_alembic_version"

# Every value of kernel_builds.kernel_outcome: the pipeline's outcomes plus the two only
# the master knows (ktstr_steps.results.Outcome says which is which).
OUTCOMES: tuple[str, ...] = results.RECORDED_OUTCOMES

# Buildbot's result names, indexed by Buildbot's result integers
# (buildbot.process.results: SUCCESS=0 ... CANCELLED=6).
RESULTS: tuple[str, ...] = (
    "success",
    "warnings",
    "failure",
    "skipped",
    "exception",
    "retry",
    "cancelled",
)

# Pipeline phase names (the "phases" map of the build result object), one column each.
PHASES: tuple[str, ...] = results.PHASES

# Stable constraint/index names so migrations and autogenerate agree on every dialect.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no zone and hands back naive values, PostgreSQL returns aware
    ones; normalising both ways keeps comparisons and JSON output identical.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        # SQLite would store the offset as text; store plain UTC so ORDER BY works on the text.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class MatrixRun(Base):
    """One nightly (or forced) matrix run: what was asked, what it resolved to, the totals."""

    __tablename__ = "matrix_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    buildid: Mapped[int | None] = mapped_column(Integer)  # the parent (fan-out) Buildbot build
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    spec: Mapped[str | None] = mapped_column(Text)  # the requested matrix, as written in settings
    versions: Mapped[list[str]] = mapped_column(JSON)  # resolved kernel versions
    profiles: Mapped[list[str]] = mapped_column(JSON)
    cells: Mapped[int] = mapped_column(Integer, default=0)
    built: Mapped[int] = mapped_column(Integer, default=0)
    cache_hits: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)

    builds: Mapped[list[KernelBuild]] = relationship(back_populates="matrix_run")

    __table_args__ = (Index(None, "started_at"),)


class KernelBuild(Base):
    """One kernel build as the record step saw it (push, matrix cell or try build)."""

    __tablename__ = "kernel_builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Buildbot identifiers are plain ints: the records DB has no FK into Buildbot's tables.
    buildid: Mapped[int | None] = mapped_column(Integer, unique=True)
    builderid: Mapped[int | None] = mapped_column(Integer)
    build_number: Mapped[int | None] = mapped_column(Integer)
    # Git names and what carries them (poller builders, matrix labels, git cache keys)
    # are Text: git accepts names of any length, and a cut-off would refuse the row.
    builder: Mapped[str | None] = mapped_column(Text)
    branch: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(64))
    repository: Mapped[str | None] = mapped_column(Text)
    kernel_version: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(100))
    worker: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(200))
    llc_index: Mapped[int | None] = mapped_column(Integer)
    llc_cpus: Mapped[str | None] = mapped_column(String(200))
    make_jobs: Mapped[int | None] = mapped_column(Integer)
    cache_key: Mapped[str | None] = mapped_column(Text)
    config_hash: Mapped[str | None] = mapped_column(String(16))
    kconfig_hash: Mapped[str | None] = mapped_column(String(16))
    extra_kconfig_hash: Mapped[str | None] = mapped_column(String(16))
    dirty: Mapped[bool | None] = mapped_column(Boolean)
    kernel_outcome: Mapped[str | None] = mapped_column(String(32))
    result: Mapped[str | None] = mapped_column(String(16))
    make_warnings: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reserve_s: Mapped[float | None] = mapped_column(Float)
    source_lock_s: Mapped[float | None] = mapped_column(Float)
    lookup_s: Mapped[float | None] = mapped_column(Float)
    configure_s: Mapped[float | None] = mapped_column(Float)
    make_s: Mapped[float | None] = mapped_column(Float)
    validate_s: Mapped[float | None] = mapped_column(Float)
    compile_commands_s: Mapped[float | None] = mapped_column(Float)
    store_s: Mapped[float | None] = mapped_column(Float)
    image_path: Mapped[str | None] = mapped_column(Text)
    entry_dir: Mapped[str | None] = mapped_column(Text)
    overrides_count: Mapped[int | None] = mapped_column(Integer)
    dropped_count: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    diff_hash: Mapped[str | None] = mapped_column(String(64))
    matrix_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("matrix_runs.id", ondelete="SET NULL")
    )
    # What went in and what came out (migration 0003; NULL on older rows).
    identity: Mapped[dict | None] = mapped_column(JSON)
    config_overrides: Mapped[list | None] = mapped_column(JSON)
    config_dropped: Mapped[list | None] = mapped_column(JSON)
    config_symbols: Mapped[dict | None] = mapped_column(JSON)  # final .config's set symbols
    bzimage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    vmlinux_bytes: Mapped[int | None] = mapped_column(BigInteger)
    vmlinux_stripped_bytes: Mapped[int | None] = mapped_column(BigInteger)
    warnings: Mapped[list | None] = mapped_column(JSON)
    explanation: Mapped[str | None] = mapped_column(Text)  # why make ran; NULL for hits
    # Against the branch's previous build of the same profile (the records service).
    config_diff: Mapped[dict | None] = mapped_column(JSON)
    new_warnings: Mapped[list | None] = mapped_column(JSON)
    alerts: Mapped[list | None] = mapped_column(JSON)

    matrix_run: Mapped[MatrixRun | None] = relationship(back_populates="builds")

    __table_args__ = (
        Index(None, "branch", "started_at"),  # per-branch history
        Index(None, "started_at"),  # recent rows
        Index(None, "cache_key"),  # the cache page
        Index(None, "matrix_run_id"),  # the matrix grid
    )


# Columns a caller may set; "id" is the database's.
BUILD_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in KernelBuild.__table__.columns if c.name != "id"
)
