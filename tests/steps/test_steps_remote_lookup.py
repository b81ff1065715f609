"""RemoteLookup: a local miss asks the master, transfers a published entry and installs it."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from buildbot.process import remotetransfer
from buildbot.process.results import SKIPPED, SUCCESS, WARNINGS
from buildbot.test.steps import ExpectDownloadFile, ExpectRemoteRef, ExpectRmdir
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps import RemoteLookup, not_cache_hit
from ktstr_steps.buildsteps.lookup import held_something
from ktstr_steps.buildsteps.services import ARTIFACTS_SERVICE_NAME
from tests.support.steps_harness import STATE, KtstrStepMixin, ktstr

KEY = "local-0123456-x86_64-kcc0bd848c-base-tinyconfig"
FILES = {"bzImage": b"MZ image", "metadata.json": b"{}", "vmlinux": b"\x7fELF",
         ".config": b"CONFIG_X=y\n"}


class FakeArtifacts:
    """The master's artifacts service, as far as the remote lookup uses it."""

    def __init__(self, found: dict[str, Any] | None) -> None:
        self.found = found
        self.asked: list[str] = []

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str:
        return f"http://master/artifacts/{builder_dir}/{number}/{name}"

    def find_entry(self, cache_key: str) -> defer.Deferred[dict[str, Any] | None]:
        self.asked.append(cache_key)
        return defer.succeed(self.found)


def download(name: str) -> ExpectDownloadFile:
    return ExpectDownloadFile(workerdest=f"remote-entry/{name}", workdir="wkdir",
                              blocksize=256 * 1024, maxsize=None, mode=0o644,
                              reader=ExpectRemoteRef(remotetransfer.FileReader))


def rmdir() -> ExpectRmdir:
    return ExpectRmdir(dir="remote-entry", log_environ=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install_cmd():
    expect = [f"--expect={n}={sha(FILES[n])}:{len(FILES[n])}"
              for n in ("bzImage", "metadata.json", "vmlinux")]
    return ktstr("phase", "install", "--state", STATE, "--key", KEY, "--dir", "remote-entry",
                 *expect,
                 "--origin", "kernel-tiny build 7 on the master", "--json")


class TestRemoteLookup(KtstrStepMixin, unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        self.dir = Path(tempfile.mkdtemp(prefix="ktstr-remote-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        for name, data in FILES.items():
            (self.dir / name).write_bytes(data)
        return super().setUp()

    def found(self) -> dict[str, Any]:
        files = {n: {"size": len(d), "sha256": sha(d)} for n, d in FILES.items()}
        return {"dir": str(self.dir), "builder_dir": "kernel-tiny", "number": 7,
                "builder": "kernel-tiny", "files": files, "outcome": "cached"}

    def setup_remote(self, found: dict[str, Any] | None, step: RemoteLookup | None = None,
                     **props: Any) -> FakeArtifacts:
        svc = FakeArtifacts(found)
        props.setdefault("remote_lookup_key", KEY)
        self.setup_ktstr_step(step or RemoteLookup(before_checkout=True), **props)
        self.master.service_manager = type("Services", (), {})()
        self.master.service_manager.namedServices = {ARTIFACTS_SERVICE_NAME: svc}
        return svc

    def test_hit_transfers_the_entry_files_and_installs_them(self) -> None:
        svc = self.setup_remote(self.found())
        self.expect_commands(
            rmdir().exit(0),
            download("bzImage").exit(0),
            download("metadata.json").exit(0),
            download("vmlinux").exit(0),
            install_cmd().answer({
                "ok": True, "installed": True, "outcome": "remote-hit", "cache_key": KEY,
                "entry_dir": f"/cache/{KEY}", "image_path": f"/cache/{KEY}/bzImage",
                "config_hash": "0badc0de"}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=(
            f"remote hit {KEY} (from kernel-tiny build 7 on the master)"))
        self.expect_property("kernel_outcome", "remote-hit")
        self.expect_property("entry_dir", f"/cache/{KEY}")
        self.expect_property("hit_before_checkout", True)
        self.expect_property("remote_lookup_tried", KEY)
        # The build links the master's copy it came from instead of publishing it again.
        self.expect_property("artifacts_url", "http://master/artifacts/kernel-tiny/7/")
        d = self.run_step()

        @d.addCallback
        def check(_: Any) -> None:
            self.assertEqual(svc.asked, [KEY])
            # The phases after the lookup and the release see the hit and stay skipped.
            props = {"kernel_outcome": "remote-hit", "hit_before_checkout": True}
            fake = type("S", (), {"getProperty": lambda s, n, d=None: props.get(n, d)})()
            self.assertFalse(not_cache_hit(fake))
            self.assertFalse(held_something(fake))
        return d

    def test_hit_after_the_checkout_keeps_the_release(self) -> None:
        self.setup_remote(self.found(), RemoteLookup(name="remote-lookup-tree"))
        self.expect_commands(
            rmdir().exit(0), download("bzImage").exit(0), download("metadata.json").exit(0),
            download("vmlinux").exit(0),
            install_cmd().answer({"ok": True, "installed": True, "cache_key": KEY,
                                         "entry_dir": f"/cache/{KEY}"}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=(
            f"remote hit {KEY} (from kernel-tiny build 7 on the master)"))
        self.expect_property("kernel_outcome", "remote-hit")
        self.expect_no_property("hit_before_checkout")
        return self.run_step()

    def test_miss_goes_on_without_any_worker_command(self) -> None:
        svc = self.setup_remote(None)
        self.expect_outcome(result=SUCCESS, state_string=f"remote miss {KEY}")
        self.expect_no_property("kernel_outcome")
        self.expect_property("remote_lookup_tried", KEY)
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(svc.asked, [KEY]))
        return d

    def test_corrupt_entry_is_a_warning_and_goes_on_as_a_miss(self) -> None:
        refused = (f"remote cache entry {KEY} refused: bzImage has sha256 {'e' * 64} "
                   f"(8 bytes), the master recorded {sha(FILES['bzImage'])} (8 bytes) at publish")
        self.setup_remote(self.found())
        self.expect_commands(
            rmdir().exit(0), download("bzImage").exit(0), download("metadata.json").exit(0),
            download("vmlinux").exit(0),
            install_cmd().stderr(f"ktstr-ci: warning: {refused}; building it here\n")
            .answer({"ok": True, "installed": False, "cache_key": KEY,
                            "refused": refused, "file": "bzImage", "got": "e" * 64,
                            "expected": sha(FILES["bzImage"])}).exit(0))
        self.expect_outcome(result=WARNINGS, state_string=(
            f"remote entry refused: bzImage sha256 eeeeeeeeeeee, recorded "
            f"{sha(FILES['bzImage'])[:12]}; building it here (warnings)"))
        self.expect_no_property("kernel_outcome")
        self.expect_no_property("hit_before_checkout")
        self.expect_log_file_stderr("stdio", f"ktstr-ci: warning: {refused}; building it here\n")
        return self.run_step()

    def test_failed_transfer_is_a_warning_and_leaves_nothing(self) -> None:
        self.setup_remote(self.found())
        self.expect_commands(
            rmdir().exit(0), download("bzImage").exit(1), rmdir().exit(0))
        line = f"remote cache entry {KEY} not installed: the transfer of bzImage failed; " \
               "building it here"
        self.expect_outcome(result=WARNINGS, state_string=f"{line} (warnings)")
        self.expect_no_property("kernel_outcome")
        self.expect_log_file_stderr("stdio", f"ktstr-ci: warning: {line}\n")
        return self.run_step()

    def test_file_gone_from_the_master_is_a_warning(self) -> None:
        (self.dir / "vmlinux").unlink()
        self.setup_remote(self.found())
        self.expect_commands(
            rmdir().exit(0), download("bzImage").exit(0), download("metadata.json").exit(0),
            rmdir().exit(0))
        self.expect_outcome(result=WARNINGS, state_string=(
            f"remote cache entry {KEY} not installed: vmlinux is not on the master "
            "(No such file or directory); building it here (warnings)"))
        return self.run_step()

    def test_key_already_asked_for_is_skipped(self) -> None:
        svc = self.setup_remote(self.found(), remote_lookup_tried=KEY)
        self.expect_outcome(result=SKIPPED, state_string="nothing to ask the master (skipped)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(svc.asked, []))
        return d

    def test_local_hit_or_no_key_is_skipped(self) -> None:
        self.setup_remote(self.found(), kernel_outcome="cache-hit")
        self.expect_outcome(result=SKIPPED, state_string="nothing to ask the master (skipped)")
        return self.run_step()

    def test_master_without_artifacts_is_skipped(self) -> None:
        self.setup_ktstr_step(RemoteLookup(), remote_lookup_key=KEY)
        self.expect_outcome(result=SKIPPED, state_string="no remote cache on this master (skipped)")
        self.expect_no_property("remote_lookup_tried")
        return self.run_step()


class TestLookupsChooseTheRemoteKey(KtstrStepMixin, unittest.TestCase):
    def tree_lookup(self, data: dict[str, Any], **props: Any) -> None:
        from ktstr_steps.buildsteps import CacheLookup
        from tests.support.steps_harness import TREE

        self.setup_ktstr_step(CacheLookup(profile="tiny"), **props)
        self.expect_commands(ktstr("phase", "lookup", "--state", STATE, "--source", TREE,
                                   "--profile", "tiny", "--json")
                             .answer({"cache_key": "tree-key", "hit": False, **data})
                             .exit(0))

    def test_clean_miss_offers_its_key_to_the_remote_lookup(self) -> None:
        self.tree_lookup({"dirty": False, "is_git": True}, remote_lookup_key=KEY)
        self.expect_outcome(result=SUCCESS, state_string="cache miss tree-key")
        self.expect_property("remote_lookup_key", "tree-key")
        return self.run_step()

    def test_dirty_tree_withdraws_the_commits_key(self) -> None:
        # The commit's kernel is not this dirty tree's: it must not be installed for it.
        self.tree_lookup({"dirty": True, "is_git": True}, remote_lookup_key=KEY)
        self.expect_outcome(result=SUCCESS, state_string="cache miss tree-key (dirty tree)")
        self.expect_property("remote_lookup_key", None)
        return self.run_step()
