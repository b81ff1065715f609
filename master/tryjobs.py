"""Try builds of uncommitted changes: Buildbot's ``Try_Userpass`` scheduler on try builders.

A developer sends a patch (or the diff of a working tree) with ``buildbot try``
over PB to ``[try] bind:port``; the scheduler starts a build on ``try-<profile>``.
Such a builder runs the same steps as the push builder ``<repo>-<profile>``
(the same factory function makes both, so a test's stand-in applies to both),
except that the checkout is a try tree
(:class:`ktstr_steps.buildsteps.checkout.TryCheckout`): Buildbot's Git step
applies the patch on top of the named branch (``git apply --index``) and says
clearly when it does not apply. The tree is then dirty, so the pipeline builds
every phase, never stores the kernel under the commit's cache key
(``kernel_outcome = dirty-not-cached``) and records the sha256 of ``git diff
HEAD`` as ``diff_hash``.

Each try builder has its own per-branch trees (``<tree_store>/try-<profile>/``,
see ``ktstr_steps.buildsteps.base.tree_path``): a try never dirties the tree a
push build of the same branch uses.

Users and passwords live in ``[try] users_file`` (JSON ``{"user": "password"}``,
mode 0600, under ``paths.secrets``, never committed). Every name in ``[try]
users`` gets a generated password the first time the config is loaded; more
users can be added to the file by hand (a restart or reconfig picks them up).

Send one with ``ktstr-ci try`` from a kernel work tree (:mod:`launcher.try_cli`:
the tree's diff against the pushed tip, the build followed to its result), or
with Buildbot's own client (see :func:`try_command` for the exact argv)::

    buildbot try --connect=pb --master=127.0.0.1:8031 --username=try \\
        --passwd="$(jq -r .try var/secrets/try-users.json)" --vc=git --branch=main \\
        --builder=try-tiny --diff=my.patch -p 1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from buildbot import config
from buildbot.plugins import schedulers, util
from buildbot.process.factory import BuildFactory
from twisted.internet import defer

from ktstr_steps.buildsteps.factory import Checkout
from ktstr_steps.refnames import RULE, branch_problem, revision_problem, shown
from master.parts import ConfigPart
from settings import Settings, TrySettings, ensure_users
from settings.worker_specs import WorkerSpec

SCHEDULER_NAME = "try"
BUILDER_PREFIX = "try-"


def builder_name(profile: str) -> str:
    return f"{BUILDER_PREFIX}{profile}"


def try_command(cfg: TrySettings, *, user: str, password: str, branch: str, profile: str,
                diff: str | None = None, host: str = "127.0.0.1") -> list[str]:
    """The ``buildbot try`` argv that sends ``diff`` (a file, ``-`` = stdin) or, without
    ``diff``, the current git working tree's changes against ``branch``."""
    argv = [
        "buildbot", "try", "--connect=pb", f"--master={host}:{cfg.port}",
        f"--username={user}", f"--passwd={password}", "--vc=git", f"--branch={branch}",
        f"--builder={builder_name(profile)}",
    ]
    if diff is not None:
        # git diff output carries a/ and b/ prefixes; buildbot try defaults to -p 0.
        argv += [f"--diff={diff}", "-p", "1"]
    return argv


class TryScheduler(schedulers.Try_Userpass):
    """``Try_Userpass`` whose jobs carry the try builders' repository.

    ``buildbot try --diff`` sends no repository unless ``--repository`` is given,
    and Buildbot's database refuses a source stamp without one (the job would
    die on the master with the client waiting forever). The try builders build
    one repository anyway, so every job names it: the UI and the records row
    show where the patch was applied.
    """

    def checkConfig(self, *args: Any, repository: str = "", **kwargs: Any) -> None:  # type: ignore[override]
        super().checkConfig(*args, **kwargs)
        if not repository:
            config.error("TryScheduler needs the repository its builders build")

    @defer.inlineCallbacks
    def reconfigService(self, *args: Any, repository: str = "", **kwargs: Any) -> Any:  # type: ignore[override]
        self.repository = repository
        if self.active and self.registrations:
            # Buildbot 4.3's Try_Userpass.reconfigService empties its registration list
            # before unregistering it, then registers the users again: KeyError "already
            # registered" on every reconfig of a running try scheduler. Unregister first.
            yield self._destroy_pb()
        yield super().reconfigService(*args, **kwargs)

    def addBuildsetForSourceStamps(self, *args: Any, sourcestamps: list | None = None,
                                   **kwargs: Any) -> Any:
        for ss in sourcestamps or []:
            if isinstance(ss, dict):
                problem = try_source_problem(ss.get("branch"), ss.get("revision"))
                if problem is not None:
                    # Raised into the PB call: `buildbot try` prints it; nothing is stored.
                    raise ValueError(f"ktstr-ci refused the try job: {problem}")
        fixed = [{**ss, "repository": self.repository} if isinstance(ss, dict) else ss
                 for ss in sourcestamps or []]
        return super().addBuildsetForSourceStamps(*args, sourcestamps=fixed, **kwargs)


def try_source_problem(branch: Any, revision: Any) -> str | None:
    """Why a try job's branch (the one branch rule) or base revision cannot be built, or None."""
    if branch:
        problem = branch_problem(branch)
        if problem is not None:
            return f"branch {shown(branch)}: {problem}; {RULE}"
    if revision:
        problem = revision_problem(revision)
        if problem is not None:
            return f"revision {shown(revision)}: {problem}"
    return None


def config_part(settings: Settings, specs: list[WorkerSpec],
                factory: Callable[..., BuildFactory]) -> ConfigPart:
    """The try builders and the ``Try_Userpass`` scheduler (``settings.try_``).

    ``factory`` is the one that makes the push builders (a stand-in in tests):
    a try builder is a push build of ``[try] repo`` whose checkout is a try tree.
    """
    cfg = settings.try_
    if not cfg.port:
        return ConfigPart(feature="try")
    users = ensure_users(cfg.users_file, cfg.users)
    builders = [
        util.BuilderConfig(
            name=builder_name(profile),
            description=f"try builds (uncommitted patches) on {cfg.repo.name}, "
            f"profile {profile}",
            tags=["try", cfg.repo.name, profile],
            workernames=[s.name for s in specs],
            factory=factory(checkout=Checkout.TRY_TREE, repourl=cfg.repo.url, profile=profile),
            defaultProperties={"profile": profile, "repo": cfg.repo.name},
            # Each try is its own patch: two queued requests must never merge.
            collapseRequests=False,
        )
        for profile in cfg.profiles
    ]
    schedulers_ = [
        TryScheduler(
            name=SCHEDULER_NAME,
            builderNames=[b.name for b in builders],
            port=cfg.strport,
            userpass=sorted(users.items()),
            repository=cfg.repo.url,
        )
    ] if builders else []
    return ConfigPart(feature="try", where=f"settings file {settings.source}: try",
                      builders=builders, schedulers=schedulers_)
