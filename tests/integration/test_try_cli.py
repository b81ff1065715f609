"""``ktstr-ci try`` on a real service: a dirty kernel work tree is built on try-<profile>,
followed on the terminal, and the exit status is the build's; a refused login, an unknown
builder, a branch CI does not have and a patch that does not apply are one line each.

The real command runs as a subprocess in the fake kernel's work tree (a clone of what was
pushed), against the kit's settings file, with bounded timeouts of its own: every
``subprocess.run`` here has a timeout only as a backstop.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fakekernel import git, make_fake_kernel
from tests.support.paths import VENV_BIN
from tests.support.servicekit import ServiceKit, free_port

BANNER = 'static const char linux_banner[] = "Linux version 6.12.0-ktstrfake";'
TRY_BANNER = 'static const char linux_banner[] = "Linux version 6.12.0-ktstrfake-try";'


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceKit]:
    root = tmp_path_factory.mktemp("trycli")
    extra = f'\n[try]\nport = {free_port()}\nusers = ["try"]\nprofiles = ["tiny"]\n'
    extra += '\n[matrix]\nenabled = false\n'
    with ServiceKit(root, extra_toml=extra) as k:
        tree = make_fake_kernel(root / "pushed")
        k.push(tree, "main")
        assert k.wait_build("main", finished=True, timeout=300)["results"] == k.SUCCESS
        yield k


def work_tree(kit: ServiceKit, path: Path) -> Path:
    """A developer's clone of the CI repository, on main."""
    subprocess.run(["git", "clone", "-q", "-b", "main", str(kit.repo_path), str(path)],
                   check=True, capture_output=True, timeout=60)
    return path


def ktstr_try(kit: ServiceKit, tree: Path, *args: str, password: str | None = None,
              timeout: float = 400) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**kit.env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("KTSTR_CI_TRY_PASSWORD", None)
    if password is not None:
        env["KTSTR_CI_TRY_PASSWORD"] = password
    t0 = time.monotonic()
    proc = subprocess.run([str(VENV_BIN / "ktstr-ci"), "try", *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [x for x in proc.stderr.splitlines() if x.startswith("ktstr-ci: error: ")]


def try_builds(kit: ServiceKit) -> list[dict]:
    return kit.builds(builder="try-tiny")


def test_a_dirty_work_tree_builds_is_followed_and_exits_0(kit: ServiceKit,
                                                          tmp_path: Path) -> None:
    tree = work_tree(kit, tmp_path / "dev")
    main_c = tree / "init" / "main.c"
    main_c.write_text(main_c.read_text().replace(BANNER, TRY_BANNER))  # uncommitted
    proc, _ = ktstr_try(kit, tree, "--profile", "tiny")
    assert proc.returncode == 0, proc.stderr
    [build] = try_builds(kit)
    url = f"{kit.settings.web_url}#/builders/{build['builderid']}/builds/{build['number']}"
    assert proc.stdout.splitlines() == [url]  # the build's URL, on stdout
    err = proc.stderr
    assert "queued: " in err and "#/buildrequests/" in err
    # The steps as they ran, the make summary among them, then the result.
    make = next(s for s in kit.build_steps(build["buildid"]) if s["name"] == "make")
    assert f"make: {make['state_string']} (success)" in err
    assert err.rstrip().splitlines()[-1].startswith("build success: ")
    props = kit.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "dirty-not-cached"
    assert props["got_revision"] == git(tree, "rev-parse", "HEAD").strip()


def test_a_patch_that_does_not_apply_fails_with_exit_1(kit: ServiceKit, tmp_path: Path) -> None:
    tree = work_tree(kit, tmp_path / "dev")
    bad = tmp_path / "bad.diff"
    bad.write_text("diff --git a/init/main.c b/init/main.c\n--- a/init/main.c\n"
                   "+++ b/init/main.c\n@@ -1,3 +1,3 @@\n this line is not in the file\n"
                   "-neither is this one\n+replacement\n nor this\n")
    proc, _ = ktstr_try(kit, tree, "--patch", str(bad), "--branch", "main")
    assert proc.returncode == 1, proc.stderr
    assert "try patch does not apply to main" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("build failure: ")


def test_a_wrong_password_is_one_line_and_no_job(kit: ServiceKit, tmp_path: Path) -> None:
    tree = work_tree(kit, tmp_path / "dev")
    (tree / "README").write_text("changed\n")
    before = len(kit.buildrequests())
    proc, took = ktstr_try(kit, tree, password="not-the-password", timeout=120)
    assert proc.returncode == 1
    assert error_lines(proc) == [
        f"ktstr-ci: error: the try port 127.0.0.1:{kit.settings.try_.port} refused the login "
        "of user 'try': wrong user or password"]
    assert took < 60  # refused at once, never a hang
    assert len(kit.buildrequests()) == before


def test_an_unknown_builder_is_one_line(kit: ServiceKit, tmp_path: Path) -> None:
    tree = work_tree(kit, tmp_path / "dev")
    (tree / "README").write_text("changed\n")
    before = len(kit.buildrequests())
    proc, _ = ktstr_try(kit, tree, "--profile", "preempt", timeout=120)
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "the master has no try builder 'try-preempt'" in line and "try-tiny" in line
    assert len(kit.buildrequests()) == before


def test_clean_tree_and_unpushed_branch_are_refused_before_sending(kit: ServiceKit,
                                                                   tmp_path: Path) -> None:
    tree = work_tree(kit, tmp_path / "dev")
    proc, _ = ktstr_try(kit, tree, timeout=120)
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "nothing to try" in line and "against the pushed main" in line
    git(tree, "checkout", "-q", "-b", "never-pushed")
    (tree / "README").write_text("changed\n")
    proc, _ = ktstr_try(kit, tree, timeout=120)
    [line] = error_lines(proc)
    assert f"branch 'never-pushed' is not pushed to {kit.repo_path}" in line
    users = json.loads(kit.settings.try_.users_file.read_text())
    assert users["try"] not in proc.stderr + proc.stdout  # the password is never shown
