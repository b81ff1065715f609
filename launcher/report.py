"""What the launcher shows: the ``make run`` banner and the ``make status`` report."""

from __future__ import annotations

from typing import Any

from ktstr_steps.cpulist import format_cpulist
from launcher.service import Service


def status(svc: Service) -> dict[str, Any]:
    """What runs: master, supervisord, every worker (the data of ``make status``)."""
    m = svc.master_state()
    out: dict[str, Any] = {
        "web_url": svc.settings.web_url,
        "master": {"running": m.running, "pid": m.pid, "basedir": str(svc.master_dir)},
        "workers": [],
    }
    connected: dict[str, bool] = {}
    if m.running:
        try:
            for w in svc.api("workers")["workers"]:
                connected[w["name"]] = bool(w.get("connected_to"))
        except (OSError, ValueError):
            out["master"]["answering"] = False
        else:
            out["master"]["answering"] = True
    sv = svc.supervisor
    sv_pid = sv.pid()
    out["supervisor"] = {"running": sv_pid is not None, "pid": sv_pid,
                         "config": str(sv.conf), "log": str(sv.log)}
    for spec in svc.specs:
        st = svc.worker_state(spec) if spec.local else None
        out["workers"].append({
            "name": spec.name,
            "llc_index": spec.llc_index,
            "cpus": format_cpulist(spec.cpus),
            "pinned_to": format_cpulist(st.affinity) if st and st.affinity else None,
            "running": st.running if st else None,
            "pid": st.pid if st else None,
            "connected": connected.get(spec.name, False),
            # supervisord's view: RUNNING, BACKOFF (restarting), FATAL (gave up), ...
            "state": st.state if st else None,
            "supervised": st.supervised if st else None,
            # starts since the supervisor started, minus the first
            "restarts": st.restarts if st else None,
        })
    return out


def banner(svc: Service) -> str:
    """What ``make run`` prints once everything is up: where to look, push and log in."""
    s = svc.settings
    login = svc.admin_login()
    repo = next((r for r in s.repos if r.hosted), s.repos[0])
    lines = [
        "ktstr-ci is running.",
        f"  web UI:      {s.web_url}  (waterfall, grid, console; anyone can read)",
    ]
    if login:
        lines.append(f"  admin login: {login[0]} / {login[1]}  (force, stop, rebuild; "
                     f"users in {s.web.users_file})")
    lines += [
        f"  push:        git push {repo.url} HEAD:refs/heads/my-branch",
        f"               (or: git remote add ci {repo.url}; git push ci my-branch)",
        f"  builds:      {', '.join(f'{repo.name}-{p}' for p in repo.profiles)} on every push;"
        " more profiles with the force form",
        "  workers:     " + ", ".join(
            f"{w.name} (CPUs {format_cpulist(w.pin_cpus or w.cpus)})" for w in svc.local_specs
        ),
        "               (supervised: a worker that dies is restarted; make status shows"
        " restarts)",
        f"  kernel cache: {s.paths.kernel_cache}",
        f"  logs:        {svc.master_dir / 'twistd.log'}",
        f"               {s.paths.workers}/<worker>/twistd.log",
        f"               {svc.supervisor.log}",
        "  stop:        make stop",
    ]
    return "\n".join(lines)


def worker_line(w: dict[str, Any]) -> str:
    """One worker of ``status()`` as a line of ``make status``."""
    if w["running"] is None:
        state = "remote"
    elif w["running"]:
        state = f"running, pid {w['pid']}, pinned to {w['pinned_to']}"
    else:
        state = "stopped"
    if w["state"] and w["state"] not in ("RUNNING", "STOPPED"):
        state += f" ({w['state']} in supervisord)"
    elif w["running"] and not w["supervised"]:
        state += " (not supervised: `make run` puts it under supervisord)"
    conn = "connected" if w["connected"] else "not connected"
    restarts = f", restarts {w['restarts']}" if w["restarts"] is not None else ""
    return f"worker {w['name']} (LLC {w['llc_index']}, CPUs {w['cpus']}): {state}, {conn}{restarts}"


def status_lines(st: dict[str, Any]) -> list[str]:
    """``status()`` as the lines of ``make status``."""
    m = st["master"]
    sv = st["supervisor"]
    return [
        f"master: {'running, pid ' + str(m['pid']) if m['running'] else 'stopped'}"
        f"  {st['web_url']}",
        f"supervisor: {'running, pid ' + str(sv['pid']) if sv['running'] else 'stopped'}"
        f"  {sv['config']}",
        *(worker_line(w) for w in st["workers"]),
    ]
