"""A stand-in ktstr-ci for whole builds on an in-process master.

It answers each worker command from a scenario file and logs the calls.
"""

from __future__ import annotations

FAKE_KTSTR_CI = r'''
import json, os, sys, time
argv = sys.argv[1:]
result = None
if argv[:1] == ["--result-file"]:
    result, argv = argv[1], argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.log"), "a") as f:
    f.write(" ".join(argv) + "\n")
scenario = open(os.path.join(here, "scenario")).read().strip()
cmd = tuple(argv[:2])
key = "local-1a2b3c4-x86_64-kc0123abcd"
def event(obj):
    if result is None:
        print(json.dumps(obj), flush=True)
    else:
        with open(result, "a") as f:
            f.write(json.dumps(obj) + "\n")
def out(obj, rc=0):
    event(obj); sys.exit(rc)
if result is not None and os.path.exists(result):
    os.unlink(result)
if cmd == ("holder", "acquire"):
    out({"name": argv[3], "pid": os.getpid(), "bypass": False,
         "plan": {"llcs": [0], "cpus": [0, 1], "mems": [0], "make_jobs": 2, "cross_node": False},
         "sandbox": {"kind": "none", "path": None}})
def opt(name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default
if cmd == ("trees", "prepare"):
    # No seed: a fresh tree, as on a builder's first build; with --checkout real
    # git fills it (else the Git step does).
    tree, checkout = opt("--tree"), None
    if "--checkout" in argv:
        import subprocess
        git = ["git", "-C", tree]
        if not os.path.isdir(os.path.join(tree, ".git")):
            subprocess.run(["git", "init", "-q", tree], check=True)
        subprocess.run([*git, "fetch", "-q", opt("--repourl"), opt("--branch", "HEAD")], check=True)
        subprocess.run([*git, "checkout", "-q", "-f", opt("--revision", "FETCH_HEAD")], check=True)
        head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
        checkout = {"commit": head, "branch": opt("--branch"), "cleaned_patch": False,
                    "seconds": 0.01}
    out({"tree": tree, "action": "fresh", "seed": None, "skipped": [], "removed": [],
         "checkout": checkout})
if cmd == ("holder", "lock-source"):
    out({"name": argv[3], "lockfile": "/tmp/x.lock", "waited_seconds": 0, "holders_seen": []})
if cmd == ("phase", "lookup") and "--revision" in argv:
    hit = scenario == "revision-hit"
    out({"cache_key": key, "hit": hit, "entry_dir": "/cache/" + key if hit else None,
         "dirty": False, "is_git": True, "git_hash": "1a2b3c4",
         "outcome": "cache-hit" if hit else None})
if cmd == ("phase", "lookup"):
    src = argv[argv.index("--source") + 1]
    assert os.path.isfile(os.path.join(src, "Makefile")), "checkout did not run first"
    out({"cache_key": key, "hit": scenario == "hit", "entry_dir": "/cache/" + key,
         "dirty": False, "is_git": True, "git_hash": "1a2b3c4",
         "outcome": "cache-hit" if scenario == "hit" else None})
if cmd == ("phase", "configure"):
    out({"configured": True, "overrides": [], "dropped": []})
if cmd == ("phase", "make"):
    if scenario == "stop":
        event({"progress": {"phase": "make", "text": "CC kernel/fork.o"}})
        open(os.path.join(here, "make-started"), "w").close()
        time.sleep(60)
    out({"jobs": 2, "warnings": 0, "errors": 0, "failed_target": None, "seconds": 0.1})
if cmd == ("phase", "validate"):
    out({"missing": []})
if cmd == ("phase", "compile-commands"):
    out({"path": "compile_commands.json", "entries": 3})
if cmd == ("phase", "store"):
    out({"outcome": "cached", "cache_key": key, "entry_dir": "/cache/" + key,
         "image_path": "/cache/" + key + "/bzImage", "config_hash": "deadbeef"})
if cmd == ("phase", "install"):
    # The remote lookup transferred the master's files here before asking to install them.
    staged = sorted(os.listdir(argv[argv.index("--dir") + 1]))
    with open(os.path.join(here, "staged.log"), "w") as f:
        f.write(" ".join(staged))
    ok = scenario == "remote-hit"
    out({"installed": ok, "cache_key": key, "outcome": "remote-hit" if ok else None,
         "entry_dir": "/cache/" + key if ok else None,
         "refused": None if ok else "remote cache entry " + key + " refused: bzImage has sha256 "
         + "e" * 64 + " (3 bytes), the master recorded " + "a" * 64 + " (3 bytes) at publish",
         "file": "bzImage", "expected": "a" * 64, "got": "e" * 64})
if cmd == ("phase", "publish"):
    out({"publish": False, "reason": "nothing in this stand-in"})
if cmd == ("phase", "summary"):
    outcome = {"hit": "cache-hit", "revision-hit": "cache-hit", "remote-hit": "remote-hit",
               "build": "cached", "remote-refused": "cached"}.get(scenario, "failed")
    out({"ok": outcome != "failed", "outcome": outcome, "cache_key": key,
         "image_path": "/cache/" + key + "/bzImage", "phases": {}},
        0 if outcome != "failed" else 1)
if cmd == ("holder", "release"):
    out({"name": argv[3], "released": ["source-lock", "sandbox", "llc-locks"]})
out({"ok": False, "errors": [{"kind": "usage", "message": "unknown " + " ".join(argv)}]}, 2)
'''
