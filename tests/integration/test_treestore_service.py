"""The whole service: a new branch off a built one starts from its tree and rebuilds one file.

Real master, real worker, real pushes of the fake kernel (tests/support/fakekernel.py):
build ``main``, push ``topic`` = main + one changed ``.c`` file, and read the
topic build's own logs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from ktstr_steps.buildsteps.base import branch_dir
from tests.support.fakekernel import tree_files
from tests.support.servicekit import ServiceKit


def compiled(make_log: str) -> set[str]:
    return set(re.findall(r"^\s*CC\s+(\S+\.o)\s*$", make_log, re.M))


def test_topic_branch_is_seeded_from_main_and_rebuilds_only_the_changed_file(tmp_path):
    with ServiceKit(tmp_path, llc_groups=[[0]], profiles=("tiny",)) as kit:
        src = kit.make_tree(tree_files(), path=kit.root / "src")
        base = kit.push(src, "main").sha
        first = kit.wait_finished(kit.wait_build("main", timeout=30)["buildid"], timeout=300)
        assert first["results"] == kit.SUCCESS, kit.build_steps(first["buildid"])
        assert "init/main.o" in compiled(kit.step_log(first["buildid"], "make"))

        text = (src / "lib/string.c").read_text() + "\n/* topic */\n"
        topic = kit.commit(src, {"lib/string.c": text}, "topic: touch lib/string.c")
        kit.push(src, "topic")
        build = kit.wait_finished(kit.wait_build("topic", timeout=30)["buildid"], timeout=300)
        bid = build["buildid"]
        assert build["results"] == kit.SUCCESS, kit.build_steps(bid)

        steps = {s["name"]: s for s in kit.build_steps(bid)}
        tree_log = kit.step_log(bid, "checkout", "tree")
        builder = "linux-tiny"
        assert f"seeded from trees/{builder}/main ({base[:7]}, ancestor of the new commit" \
            in tree_log, tree_log
        assert steps["checkout"]["state_string"] == f"seeded from main ({base[:7]})"
        props = kit.build_properties(bid)
        main_tree = kit.tree_store / builder / branch_dir("main")
        assert props["tree_seed"] == str(main_tree) and props["tree_action"] == "seeded"
        assert props["got_revision"] == topic

        make_log = kit.step_log(bid, "make")
        assert compiled(make_log) == {"lib/string.o"}, make_log
        assert props["kernel_outcome"] == "cached"

        # Git objects are shared: the topic tree holds none of its own.
        topic_tree = kit.tree_store / builder / branch_dir("topic")
        assert (topic_tree / ".git/objects/info/alternates").is_file()
        counts = dict(line.split(": ") for line in subprocess.run(
            ["git", "count-objects", "-v"], cwd=topic_tree, capture_output=True, text=True,
            check=True).stdout.splitlines())
        assert counts["count"] == "0" and counts["size-pack"] == "0", counts

        # `ktstr-ci trees` sees both, neither locked once the builds are done.
        out = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "trees", "--store", str(kit.tree_store),
             "--json"], capture_output=True, text=True, env=kit.env, check=True)
        listed = json.loads(out.stdout)
        assert {t["branch"] for t in listed["trees"] if t["kind"] == "branch"} == {"main", "topic"}
        assert not any(t["locked"] for t in listed["trees"])
