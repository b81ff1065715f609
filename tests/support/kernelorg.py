"""A kernel.org stand-in on loopback: releases.json and tarballs served over real HTTP.

The fixture is registered for every test by tests/conftest.py::

    def test_something(kernel_org):
        kernel_org.add_tarball("6.12.8")          # tiny linux-6.12.8/ tree
        kernel_org.add_fake_kernel("6.14.9")      # tests/support/fakekernel.py tree, buildable
        ...  # ktstr_steps.kernelorg / `ktstr-ci kernel build 6.12.8` now hit this server

The fixture starts a threaded ``http.server`` on 127.0.0.1 with a random port
and points the code at it through the environment (``monkeypatch``, undone
after the test), so subprocesses (``ktstr-ci ...``) see it too:

* ``KTSTR_CI_RELEASES_URL`` = ``{base}/releases.json``
* ``KTSTR_CI_KERNEL_MIRROR`` = ``{base}/pub/linux/kernel`` (stable ``.tar.xz`` at
  ``/pub/linux/kernel/v{major}.x/linux-{V}.tar.xz``, like cdn.kernel.org)
* ``KTSTR_CI_RC_MIRROR`` = ``{base}/torvalds/t`` (``-rc`` ``.tar.gz``, like git.kernel.org)
* ``127.0.0.1`` is added to ``NO_PROXY``/``no_proxy`` so a proxy in the
  developer's environment is never used for it.

The in-process releases.json memo is cleared before and after the test.

API (all on the object the fixture yields, a :class:`KernelOrg`):

* ``base``, ``releases_url``, ``mirror``, ``rc_mirror`` — URLs.
* ``set_releases(rows)`` — rows are ``(moniker, version)`` tuples or full dicts,
  newest first as on kernel.org. :data:`DEFAULT_RELEASES` is served until then.
* ``add_tarball(version, tree_dir=None, *, files=None) -> sha256`` — serve a
  ``linux-{V}/`` tarball (xz for stable, gzip for ``-rc``) made from
  ``tree_dir`` (``.git`` skipped), or from ``files`` (``{relpath: text|bytes}``),
  or by default a minimal tree with ``Makefile``, ``Kconfig`` and ``README``.
  Also listed in ``/pub/linux/kernel/v{major}.x/sha256sums.asc`` (plain
  ``HASH  linux-V.tar.xz`` lines; unsigned, unlike kernel.org's).
* ``add_fake_kernel(version) -> sha256`` — the buildable tree of
  ``tests/support/fakekernel.py`` as that version's tarball.
* ``add_tarball_bytes(version, data) -> sha256`` — serve prepared bytes at the
  version's tarball path (corrupt or hostile archives).
* ``set_route(path, body, *, status=200, content_type=..., declared_length=None)``
  — anything else, e.g. an HTML page with status 200 where a tarball should
  be; ``declared_length`` announces more bytes than are sent (cut download).
* ``make_tarball(files, compression="xz")`` (module function) — archive bytes.
* ``tarball_path(version)`` / ``tarball_url(version)`` — where a version lives.
* ``requests`` — ``[(method, path), ...]`` in arrival order; ``count(path)``.

Unknown paths get a 404 with an HTML body, as the real CDN does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ktstr_steps.kernelorg import releases as releases_mod

# Newest first, as kernel.org lists them. The stable/longterm rows have
# patch >= 8 except 6.16.3, so "latest" skips it for 6.15.11 like ktstr does.
DEFAULT_RELEASES: list[tuple[str, str]] = [
    ("mainline", "6.17-rc4"),
    ("stable", "6.16.3"),
    ("stable", "6.15.11"),
    ("longterm", "6.12.44"),
    ("longterm", "6.6.103"),
    ("longterm", "6.1.149"),
    ("longterm", "5.15.190"),
    ("linux-next", "next-20250905"),
]

MINIMAL_TREE: dict[str, str] = {
    "Makefile": "# minimal stand-in for a kernel Makefile\nall:\n\t@true\n",
    "Kconfig": 'mainmenu "Linux stand-in"\n',
    "README": "Linux kernel stand-in served by tests/support/kernelorg.py\n",
}


class _Server(ThreadingHTTPServer):
    # The CDN probe opens 16+ connections at once; the default backlog of 5
    # drops SYNs and costs a 1 s retransmit each time.
    request_queue_size = 128
    daemon_threads = True


@dataclass
class _Route:
    status: int
    content_type: str
    body: bytes
    declared_length: int | None = None


def _row(entry: tuple[str, str] | Mapping[str, object]) -> dict[str, object]:
    if isinstance(entry, Mapping):
        return dict(entry)
    moniker, version = entry
    return {
        "iseol": False,
        "version": version,
        "moniker": moniker,
        "source": None,
        "pgp": None,
        "released": {"timestamp": 1735689600, "isodate": "2025-01-01"},
        "gitweb": None,
        "changelog": None,
        "diffview": None,
        "patch": {"full": None, "incremental": None},
    }


def make_tarball(
    files: Mapping[str, str | bytes], compression: str = "xz", *, preset: int | None = None
) -> bytes:
    """A tar archive of ``files`` (archive path → content), ``xz`` or ``gz`` compressed.

    ``preset`` is the xz preset (its dictionary size is what the decoder allocates)."""
    buf = io.BytesIO()
    kwargs = {"preset": preset} if preset is not None and compression == "xz" else {}
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", **kwargs) as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1735689600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class KernelOrg:
    """The server and its content; see the module docstring for the API."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._sums: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.releases_url = f"{self.base}/releases.json"
        self.mirror = f"{self.base}/pub/linux/kernel"
        self.rc_mirror = f"{self.base}/torvalds/t"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.set_releases(DEFAULT_RELEASES)

    # ------------------------------------------------------------ content

    def set_route(
        self,
        path: str,
        body: bytes | str,
        *,
        status: int = 200,
        content_type: str = "application/octet-stream",
        declared_length: int | None = None,
    ) -> None:
        """Serve ``body`` at ``path``. ``declared_length`` sends that Content-Length
        instead of the real one and closes the connection: a download cut short."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._routes[path] = _Route(status, content_type, data, declared_length)

    def set_releases(self, rows: list[tuple[str, str] | Mapping[str, object]]) -> None:
        full = [_row(r) for r in rows]
        stable = next((r for r in full if r.get("moniker") == "stable" and "version" in r), None)
        doc = {
            "latest_stable": {"version": stable["version"]} if stable else None,
            "releases": full,
        }
        self.set_route("/releases.json", json.dumps(doc, indent=1), content_type="application/json")

    def tarball_path(self, version: str) -> str:
        if "-rc" in version:
            return f"/torvalds/t/linux-{version}.tar.gz"
        return f"/pub/linux/kernel/v{version.split('.')[0]}.x/linux-{version}.tar.xz"

    def tarball_url(self, version: str) -> str:
        return self.base + self.tarball_path(version)

    def add_tarball_bytes(self, version: str, data: bytes) -> str:
        path = self.tarball_path(version)
        ctype = "application/x-gzip" if path.endswith(".gz") else "application/x-xz"
        self.set_route(path, data, content_type=ctype)
        digest = hashlib.sha256(data).hexdigest()
        if "-rc" not in version:
            folder, name = path.rsplit("/", 1)
            sums = self._sums.setdefault(folder, {})
            sums[name] = digest
            text = "".join(f"{h}  {n}\n" for n, h in sorted(sums.items()))
            self.set_route(f"{folder}/sha256sums.asc", text, content_type="text/plain")
        return digest

    def add_tarball(
        self,
        version: str,
        tree_dir: str | os.PathLike[str] | None = None,
        *,
        files: Mapping[str, str | bytes] | None = None,
    ) -> str:
        top = f"linux-{version}"
        members: dict[str, str | bytes] = {}
        if tree_dir is not None:
            root = Path(tree_dir)
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root)
                if rel.parts[0] == ".git" or not p.is_file() or p.is_symlink():
                    continue
                members[f"{top}/{rel.as_posix()}"] = p.read_bytes()
        else:
            for rel, content in (files if files is not None else MINIMAL_TREE).items():
                members[f"{top}/{rel}"] = content
        data = make_tarball(members, "gz" if "-rc" in version else "xz")
        return self.add_tarball_bytes(version, data)

    def add_fake_kernel(self, version: str, work_dir: str | os.PathLike[str] | None = None) -> str:
        """Serve tests/support/fakekernel.py's buildable tree as ``linux-{version}``."""
        import tempfile

        from tests.support.fakekernel import make_fake_kernel

        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            tree = make_fake_kernel(Path(tmp) / "tree", git=False)
            return self.add_tarball(version, tree)

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.requests if p == path)

    # ------------------------------------------------------------ server

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, head: bool) -> None:
                path = urlsplit(self.path).path
                with owner._lock:
                    owner.requests.append((self.command, path))
                    route = owner._routes.get(path)
                if route is None:
                    route = _Route(
                        404, "text/html; charset=utf-8", b"<html><body>404 Not Found</body></html>"
                    )
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                if route.declared_length is not None:
                    self.send_header("Content-Length", str(route.declared_length))
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if not head:
                    self.wfile.write(route.body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(head=True)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def kernel_org(monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelOrg]:
    """A loopback kernel.org; the environment points ktstr-ci at it for this test."""
    server = KernelOrg()
    monkeypatch.setenv("KTSTR_CI_RELEASES_URL", server.releases_url)
    monkeypatch.setenv("KTSTR_CI_KERNEL_MIRROR", server.mirror)
    monkeypatch.setenv("KTSTR_CI_RC_MIRROR", server.rc_mirror)
    for var in ("NO_PROXY", "no_proxy"):
        old = os.environ.get(var)
        monkeypatch.setenv(var, f"{old},127.0.0.1" if old else "127.0.0.1,localhost")
    releases_mod.clear_cache()
    try:
        yield server
    finally:
        releases_mod.clear_cache()
        server.close()
