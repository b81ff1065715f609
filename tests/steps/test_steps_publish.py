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

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str:
        return f"http://master/artifacts/{builder_dir}/{number}/{name}"

    def published(self, builder_dir: str) -> defer.Deferred[None]:
        self.published_dirs.append(builder_dir)
        return defer.succeed(None)


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
        self.expect_commands(
            publish_cmd().answer(publish_answer()).exit(0),
            *[upload(n, FILES[n]).upload_string(FILES[n]).exit(0) for n in sorted(FILES)],
            upload("SHA256SUMS", b"sums").upload_string(b"sums\n").exit(0),
            ExpectRmdir(dir=BUNDLE, log_environ=False).exit(0),
        )
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

    def test_remote_hit_links_the_masters_copy_and_uploads_nothing(self) -> None:
        svc = self.setup_publish(kernel_outcome="remote-hit",
                                 artifacts_url="http://master/artifacts/linux-tiny/3/")
        self.expect_commands()  # the files are on the master already
        self.expect_outcome(result=SKIPPED,
                            state_string="already on the master (remote hit) (skipped)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(svc.published_dirs, []))
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
