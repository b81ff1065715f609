"""PublishKernel: the worker prepares the files (``phase publish``), the step only uploads them."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from buildbot.process import remotetransfer
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS, WARNINGS
from buildbot.test.steps import ExpectRemoteRef, ExpectRmdir, ExpectUploadFile
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps.publish import PublishKernel
from ktstr_steps.buildsteps.services import ARTIFACTS_SERVICE_NAME as SERVICE_NAME
from tests.support.steps_harness import STATE, KtstrStepMixin, ktstr

KEY = "local-1a2b3c4-x86_64-kc0123abcd"
BUNDLE = "/work/kernel/publish"
FILES = {"bzImage": b"kernel image", "vmlinux": b"stripped vmlinux", ".config": b"CONFIG_X=y\n",
         "metadata.json": b'{"version": "6.12.3"}'}


def publish_answer(**over: Any) -> dict[str, Any]:
    files = {name: {"path": f"{BUNDLE}/{name}", "size": len(data), "sha256": f"sha-{name}"}
             for name, data in FILES.items()}
    return {"ok": True, "publish": True, "dir": BUNDLE, "files": files,
            "sums": f"{BUNDLE}/SHA256SUMS", "outcome": "cached", "cache_key": KEY,
            "diff_hash": None, "vmlinux_from": "cache entry", "missing": [], "notes": [], **over}


def upload(name: str, data: bytes) -> ExpectUploadFile:
    return ExpectUploadFile(workersrc=f"{BUNDLE}/{name}", workdir="wkdir", blocksize=256 * 1024,
                            maxsize=None, keepstamp=False,
                            writer=ExpectRemoteRef(remotetransfer.FileWriter))


class FakeArtifacts:
    """The master's artifacts service as the step sees it (found by its service name)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.max_file_bytes = None
        self.published_dirs: list[str] = []
        self.found: dict[str, Any] | None = None  # what find_entry answers
        self.asked: list[str] = []

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str:
        return f"http://master/artifacts/{builder_dir}/{number}/{name}"

    def published(self, builder_dir: str) -> defer.Deferred[None]:
        self.published_dirs.append(builder_dir)
        return defer.succeed(None)

    def find_entry(self, cache_key: str) -> defer.Deferred[dict[str, Any] | None]:
        self.asked.append(cache_key)
        return defer.succeed(self.found)

    def publish_earlier(self, outcome: str = "cached") -> Path:
        """Build 3 of linux-tiny as the master's artifacts service left it; find_entry finds it."""
        build = self.root / "linux-tiny" / "3"
        build.mkdir(parents=True)
        for name, data in FILES.items():
            (build / name).write_bytes(data)
        (build / "SHA256SUMS").write_text("sums\n")
        files = {n: {"size": len(d), "sha256": f"sha-{n}"} for n, d in FILES.items()}
        (build / "files.json").write_text(json.dumps({
            "builder": "linux-tiny", "build_number": 3, "outcome": outcome, "cache_key": KEY,
            "vmlinux_from": "cache entry", "missing": [], "notes": [], "files": files}))
        self.found = {"dir": str(build), "builder_dir": "linux-tiny", "number": 3,
                      "files": files, "outcome": outcome, "builder": "linux-tiny"}
        return build


def publish_cmd():
    return ktstr("phase", "publish", "--state", STATE, "--json")


class TestPublishKernel(KtstrStepMixin, unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        self.root = Path(tempfile.mkdtemp(prefix="ktstr-artifacts-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        return super().setUp()

    def setup_publish(self, **props: Any) -> FakeArtifacts:
        svc = FakeArtifacts(self.root)
        step = self.setup_ktstr_step(PublishKernel(), **props)
        self.urls: dict[str, str] = {}
        real_add = step.addURL

        def add_url(name: str, url: str) -> Any:
            self.urls[name.split(" (")[0]] = url
            return real_add(name, url)

        step.addURL = add_url
        self.master.service_manager = type("Services", (), {})()
        self.master.service_manager.namedServices = {SERVICE_NAME: svc}
        return svc

    def test_published_build_uploads_what_the_worker_listed(self) -> None:
        svc = self.setup_publish(got_revision="1a2b3c4d5e")
        self.expect_whole_upload()
        self.expect_outcome(result=SUCCESS,
                            state_string="published bzImage, vmlinux, .config, metadata.json")
        self.expect_property("artifacts_url", "http://master/artifacts/kernel/7/", "PublishKernel")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            final = self.root / "kernel" / "7"
            self.assertEqual(sorted(p.name for p in final.iterdir()),
                             sorted([*FILES, "SHA256SUMS", "files.json"]))
            for name, data in FILES.items():
                self.assertEqual((final / name).read_bytes(), data)
            manifest = json.loads((final / "files.json").read_text())
            self.assertEqual(manifest["outcome"], "cached")
            self.assertEqual(manifest["cache_key"], KEY)
            self.assertEqual(manifest["revision"], "1a2b3c4d5e")
            self.assertEqual(manifest["vmlinux_from"], "cache entry")
            self.assertEqual(manifest["files"]["bzImage"],
                             {"size": len(FILES["bzImage"]), "sha256": "sha-bzImage"})
            self.assertEqual(svc.published_dirs, ["kernel"])
            # Nothing half-uploaded is left next to it.
            self.assertEqual([p.name for p in (self.root / "kernel").iterdir()], ["7"])
            self.assertEqual(self.urls["bzImage"], "http://master/artifacts/kernel/7/bzImage")
            self.assertEqual(self.urls["all files"], "http://master/artifacts/kernel/7/")
            self.assertEqual(set(self.urls), {*FILES, "all files"})

        return d

    def test_failed_build_publishes_nothing(self) -> None:
        self.setup_publish()
        self.build.results = FAILURE
        self.expect_commands()  # not even the worker command
        self.expect_outcome(result=SKIPPED, state_string="build failed: nothing to publish (skipped)")
        return self.run_step()

    def check_linked(self, svc: FakeArtifacts, earlier: Path, outcome: str) -> None:
        final = self.root / "kernel" / "7"
        self.assertEqual(sorted(p.name for p in final.iterdir()),
                         sorted([*FILES, "SHA256SUMS", "files.json"]))
        for name in [*FILES, "SHA256SUMS"]:
            # The same bytes, not a second copy of them.
            self.assertEqual((final / name).stat().st_ino, (earlier / name).stat().st_ino)
        manifest = json.loads((final / "files.json").read_text())
        self.assertEqual((manifest["build_number"], manifest["outcome"], manifest["cache_key"]),
                         (7, outcome, KEY))
        self.assertEqual(manifest["revision"], "1a2b3c4d5e")
        self.assertEqual(manifest["files"]["bzImage"],
                         {"size": len(FILES["bzImage"]), "sha256": "sha-bzImage"})
        self.assertEqual(svc.asked, [KEY])
        self.assertEqual(svc.published_dirs, ["kernel"])  # retention runs as for an upload
        self.assertEqual(self.urls["bzImage"], "http://master/artifacts/kernel/7/bzImage")
        self.assertEqual(sorted(p.name for p in (self.root / "kernel").iterdir()), ["7"])

    def run_linked(self, outcome: str, **props: Any) -> defer.Deferred:
        svc = self.setup_publish(kernel_outcome=outcome, cache_key=KEY,
                                 got_revision="1a2b3c4d5e", **props)
        earlier = svc.publish_earlier()
        self.expect_commands()  # no worker command, no upload
        self.expect_outcome(result=SUCCESS, state_string=(
            "published bzImage, vmlinux, .config, metadata.json (linked from linux-tiny build 3)"))
        self.expect_property("artifacts_url", "http://master/artifacts/kernel/7/", "PublishKernel")
        d = self.run_step()
        d.addCallback(lambda _: self.check_linked(svc, earlier, outcome))
        return d

    def test_cache_hit_links_the_copy_the_master_already_has(self) -> None:
        return self.run_linked("cache-hit")

    def test_remote_hit_links_the_copy_it_was_installed_from(self) -> None:
        # artifacts_url pointed at build 3: now this build's own directory, which
        # retention of build 3 cannot take away.
        return self.run_linked("remote-hit", artifacts_url="http://master/artifacts/linux-tiny/3/")

    def expect_whole_upload(self, **answer: Any) -> None:
        """The worker command, every file's upload and the bundle's removal, all succeeding."""
        self.expect_commands(
            publish_cmd().answer(publish_answer(**answer)).exit(0),
            *[upload(n, FILES[n]).upload_string(FILES[n]).exit(0) for n in sorted(FILES)],
            upload("SHA256SUMS", b"sums").upload_string(b"sums\n").exit(0),
            ExpectRmdir(dir=BUNDLE, log_environ=False).exit(0),
        )

    def test_cache_hit_never_published_uploads_like_a_build(self) -> None:
        svc = self.setup_publish(kernel_outcome="cache-hit", cache_key=KEY)
        self.expect_whole_upload(outcome="cache-hit")
        self.expect_outcome(result=SUCCESS,
                            state_string="published bzImage, vmlinux, .config, metadata.json")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(svc.asked, [KEY]))
        return d

    def test_published_copy_with_a_file_gone_is_not_used(self) -> None:
        svc = self.setup_publish(kernel_outcome="cache-hit", cache_key=KEY)
        earlier = svc.publish_earlier()
        (earlier / "vmlinux").unlink()  # retention took it between the lookup and the link
        self.expect_whole_upload(outcome="cache-hit")
        self.expect_outcome(result=SUCCESS,
                            state_string="published bzImage, vmlinux, .config, metadata.json")
        self.expect_log_file("published-copy", (
            f"ktstr-ci: the copy published by linux-tiny build 3 is not usable "
            f"({earlier / 'vmlinux'}: No such file or directory); uploading this build's files\n"))
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            final = self.root / "kernel" / "7"
            self.assertEqual((final / "vmlinux").read_bytes(), FILES["vmlinux"])
            self.assertNotEqual((final / "bzImage").stat().st_ino,
                                (earlier / "bzImage").stat().st_ino)

        return d

    def test_worker_says_there_is_nothing_to_publish(self) -> None:
        self.setup_publish()
        reason = "no built kernel (outcome failed)"
        self.expect_commands(
            publish_cmd().answer({"ok": True, "publish": False, "reason": reason}).exit(0))
        self.expect_outcome(result=SKIPPED, state_string=f"nothing to publish: {reason} (skipped)")
        return self.run_step()

    def test_upload_that_fails_is_a_warning_and_publishes_nothing(self) -> None:
        svc = self.setup_publish()
        self.expect_commands(
            publish_cmd().answer(publish_answer()).exit(0),
            upload(".config", FILES[".config"]).upload_string(FILES[".config"]).exit(0),
            upload("bzImage", FILES["bzImage"]).exit(1),
            ExpectRmdir(dir=BUNDLE, log_environ=False).exit(0),
        )
        self.expect_outcome(result=WARNINGS,
                            state_string=f"upload of bzImage ({BUNDLE}/bzImage) failed (warnings)")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            # Nothing of the build is served, not even the part that arrived.
            self.assertEqual(list((self.root / "kernel").iterdir()), [])
            self.assertEqual(svc.published_dirs, ["kernel"])  # retention still runs

        return d

    def test_worker_command_failure_is_a_warning(self) -> None:
        self.setup_publish()
        self.expect_commands(publish_cmd().answer({
            "ok": False, "errors": [{"kind": "publish-failed",
                                     "message": "bzImage of this build is missing (/t/bzImage)"}]
        }).exit(1))
        self.expect_outcome(result=WARNINGS, state_string="nothing published: publish failed: "
                            "bzImage of this build is missing (/t/bzImage) (warnings)")
        return self.run_step()

    def test_without_the_artifacts_service_it_is_skipped(self) -> None:
        self.setup_ktstr_step(PublishKernel())
        self.expect_commands()
        self.expect_outcome(result=SKIPPED,
                            state_string="downloads not configured on this master (skipped)")
        return self.run_step()
