"""MatrixLookup hands the tree store's and the download cache's limits to the lookup command."""

from __future__ import annotations

from typing import Any

from buildbot.process.results import SUCCESS
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps.matrix_cell import MatrixLookup
from tests.support.steps_harness import KtstrStepMixin, ktstr

KEY = "6.12.3-tarball-x86_64-kc0123abcd"
STORE = "/srv/trees"


def lookup_cmd(*extra: str) -> Any:
    return ktstr("phase", "lookup", "--state", "ktstr-state.json", "--version", "6.12.3",
                 "--profile", "tiny", "--download-cache", "/dl", "--tree-store", STORE,
                 *extra, "--json", timeout=3600)


class TestMatrixLookupLimits(KtstrStepMixin, unittest.TestCase):
    def setup_lookup(self, step: MatrixLookup, **props: Any) -> None:
        self.setup_ktstr_step(step, **{"kernel_version": "6.12.3", "profile": "tiny",
                                       "tree_store": STORE, **props})

    def test_limits_from_settings_and_worker_properties(self) -> defer.Deferred:
        self.setup_lookup(MatrixLookup(download_cache="/dl", download_max_files=20,
                                       download_max_gb=10.5),
                          tree_max_trees=6, tree_max_gb=100.0)
        self.expect_commands(lookup_cmd(
            "--tree-max-trees", "6", "--tree-max-gb", "100", "--download-max-files", "20",
            "--download-max-gb", "10.5").answer({
                "cache_key": KEY, "hit": False, "source_dir": f"{STORE}/tarballs/{KEY}",
                "downloaded": True, "removed": [{"path": "/dl/linux-6.1.1.tar.xz"}]}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} (downloaded)")
        return self.run_step()

    def test_no_limits_no_arguments(self) -> defer.Deferred:
        self.setup_lookup(MatrixLookup(download_cache="/dl"))
        self.expect_commands(lookup_cmd().answer({
            "cache_key": KEY, "hit": True, "entry_dir": f"/cache/{KEY}",
            "outcome": "cache-hit"}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache hit {KEY}")
        return self.run_step()

    def test_bad_limits_are_config_errors(self) -> None:
        with self.assertRaisesConfigError("download_max_files must be an integer"):
            MatrixLookup(download_cache="/dl", download_max_files=-1)
        with self.assertRaisesConfigError("download_max_gb must be a number of GiB"):
            MatrixLookup(download_cache="/dl", download_max_gb=float("nan"))
