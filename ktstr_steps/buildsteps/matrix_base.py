"""What the matrix run's steps share: the build properties they pass on, and the master-only step.

The parent run's steps (resolve, fan-out, finish) run on the master only (the
``matrix`` builder's worker is an in-process LocalWorker) and hand each other
the run's cells, run row id and totals as build properties.
"""

from __future__ import annotations

from buildbot.process import buildstep

from ktstr_steps.buildsteps.services import RecordsService, find_records_service

# Build properties of the parent run, read by the later steps of the same build.
CELLS_PROP = "matrix_cells"
RUN_ID_PROP = "matrix_run_id"
TOTALS_PROP = "matrix_totals"


class MasterStep(buildstep.BuildStep):
    """A step that runs on the master only (no remote commands)."""

    def records(self) -> tuple[RecordsService | None, str | None]:
        return find_records_service(self.master)


__all__ = ["CELLS_PROP", "RUN_ID_PROP", "TOTALS_PROP", "MasterStep"]
