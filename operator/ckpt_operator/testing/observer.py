"""Records a test's history for the invariant checker: watches, store polls, a canary.

Three watch threads (pods, Checkpoints, TrainingRuns of one namespace, raw JSON, resumed from
the last ``resourceVersion``; a 410 or an API server restart makes them relist, and the
differences become records) and one thread polling the stores' committed entries (a directory
with its manifest, or a tar) and the canary's contents. A store change is stamped with the
etcd revision read right after the poll that saw it.

:meth:`Observer.check` judges, while the test runs, what arrived at least ``settle_s`` ago (by
then the other streams have delivered the lower revisions); :meth:`Observer.verdict` judges
the whole history again, sorted, from scratch: that second pass is the authoritative one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from kubernetes.watch.watch import iter_resp_lines

from ckpt_operator.api import names
from ckpt_operator.storage import layout
from ckpt_operator.storage.manifest import verify
from ckpt_operator.storage.store import Store
from ckpt_operator.testing.controlplane import api_client
from ckpt_operator.testing.history import (
    ATOMIC_COMMIT,
    CANARY,
    CHECKPOINTS,
    COMMITTED,
    DEFAULT_LAG_S,
    GONE,
    PODS,
    RUNS,
    STORE,
    Body,
    Record,
    Violation,
)
from ckpt_operator.testing.invariants import InvariantChecker
from ckpt_operator.testing.lifecycle import Started
from ckpt_operator.testing.waiting import wait_for

KINDS = (RUNS, CHECKPOINTS, PODS)
JSON = {"Accept": "application/json"}


def committed_entries(root: Path) -> set[str]:
    """Committed checkpoints directly under a local store root."""
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return set()
    found = set()
    for entry in entries:
        name = layout.parse_committed(entry)
        path = root / entry
        if name is None or path.is_symlink():
            continue
        if path.is_file() if name.format == "tar" else (path / layout.MANIFEST_NAME).exists():
            found.add(entry)
    return found


def tree_digest(root: Path) -> str:
    """Names, sizes, modification times and contents of everything under ``root``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            stat = path.lstat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def torn(run: str, root: Path, revision: int) -> list[Violation]:
    """Atomic commit in one local store: a committed entry that does not verify in full."""
    store = Store.from_uri(f"file://{root}")
    found = []
    for entry in sorted(committed_entries(root)):
        result = verify(store, entry, "full")
        if not result.ok:
            message = f"committed {entry} does not verify: {result.reason}"
            found.append(Violation(ATOMIC_COMMIT, revision, message, (run,)))
    return found


class Observer(Started):
    """Watches namespace ``namespace`` and the stores given to :meth:`watch_store`."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        *,
        lag_s: float = DEFAULT_LAG_S,
        poll_s: float = 0.1,
        settle_s: float = 2.0,
    ) -> None:
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.lag_s, self.poll_s, self.settle_s = lag_s, poll_s, settle_s
        self.records: list[Record] = []
        self.current: dict[str, dict[str, Body]] = {kind: {} for kind in KINDS}
        self.stores: dict[str, Path] = {}
        self.canaries: dict[Path, str] = {}
        self.checker = InvariantChecker(lag_s)
        self.relists: list[str] = []
        self.unjudged: list[str] = []
        """What the last :meth:`verdict` could judge only in part (watch gaps)."""
        self.late = 0
        self._pending: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = itertools.count()
        self._down: dict[str, float] = {}
        self._up_since = 0.0
        self._frontier: tuple[int, int, int] = (0, 0, 0)
        self._api_cm: Any = None
        self._api: Any = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._api_cm = api_client(self.kubeconfig)
        self._api = self._api_cm.__enter__()
        for kind in KINDS:
            version = self._relist(kind, first=True)
            self._spawn(self._watch, kind, version)
        self._spawn(self._poll)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        if self._api_cm is not None:
            self._api_cm.__exit__(None, None, None)
            self._api_cm = None

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def watch_store(self, run: str, root: Path) -> None:
        """Poll ``root`` (a local store) for committed checkpoints of ``run``."""
        self.stores[run] = root

    def watch_canary(self, root: Path) -> None:
        """Any later change under ``root`` is a confined-paths violation."""
        self.canaries[root] = tree_digest(root)

    # --- judging ------------------------------------------------------------------------------

    def check(self, *, flush: bool = False) -> list[Violation]:
        """Feed the live checker what has settled (everything with ``flush``, once streams are
        connected); the violations it has found."""
        now = time.time()
        with self._lock:
            if self._down or (now - self._up_since < self.settle_s and not flush):
                return list(self.checker.violations)
            cutoff = now if flush else now - self.settle_s
            ready = sorted((r for r in self._pending if r.at <= cutoff), key=lambda r: r.order)
            self._pending = [r for r in self._pending if r.at > cutoff]
        for record in ready:
            if record.order < self._frontier:
                self.late += 1
            self._frontier = max(self._frontier, record.order)
            self.checker.feed(record)
        self.checker.now = max(self.checker.now, now)
        return list(self.checker.violations)

    def in_sync(self) -> bool:
        """Every watch is connected and has been for ``settle_s``: the mirror is current."""
        with self._lock:
            return not self._down and time.time() - self._up_since >= self.settle_s

    def wait_in_sync(self, timeout: float = 60.0) -> None:
        """Block until :meth:`in_sync`: a test acting now is seen acting (after a fault that
        dropped the watches, a restarted API server may hold them back for seconds)."""
        wait_for(self.in_sync, timeout, "the observer's watches to catch up", every=0.1)

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until in sync, then judge everything recorded until then (after the faults)."""
        self.wait_in_sync(timeout)
        time.sleep(self.settle_s)
        self.check(flush=True)

    def verdict(self) -> list[Violation]:
        """The whole history judged again, from scratch, in revision order."""
        with self._lock:
            history = sorted(self.records, key=lambda r: r.order)
        final = InvariantChecker(self.lag_s)
        for record in history:
            final.feed(record)
        self.unjudged = final.unjudged
        return final.violations

    def snapshot(self, kind: str) -> dict[str, Body]:
        """The latest body of every object of ``kind`` (a copy, safe to iterate)."""
        with self._lock:
            return dict(self.current[kind])

    def verify_stores(self) -> list[Violation]:
        """Atomic commit: every committed entry left in a store verifies in full."""
        revision = self.revision()
        return [v for run, root in sorted(self.stores.items()) for v in torn(run, root, revision)]

    # --- the API ------------------------------------------------------------------------------

    def _url(self, kind: str, **query: str) -> str:
        if kind == PODS:
            path = f"/api/v1/namespaces/{self.namespace}/pods"
        else:
            path = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{self.namespace}/{kind}"
        return f"{self._api.configuration.host}{path}?{urlencode(query)}"

    def _get(self, url: str) -> dict[str, Any]:
        response = self._api.call_api("GET", url, JSON, None, None, 30)
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {response.data[:200]!r}")
        body: dict[str, Any] = json.loads(response.data)
        return body

    def revision(self) -> int:
        """The current etcd revision (a consistent read)."""
        return int(self._get(self._url(PODS, limit="1"))["metadata"]["resourceVersion"])

    def _revision_after(self) -> int | None:
        """The revision now, retried while the API server is down; None once stopped."""
        while not self._stop.is_set():
            try:
                return self.revision()
            except Exception:
                self._stop.wait(0.2)
        return None

    def _record(
        self,
        kind: str,
        type_: str,
        body: Body,
        revision: int | None = None,
        relisted: bool = False,
    ) -> None:
        rev = int(body["metadata"]["resourceVersion"]) if revision is None else revision
        record = Record(rev, kind, type_, body, time.time(), next(self._seq), relisted)
        with self._lock:
            self.records.append(record)
            self._pending.append(record)
            if kind in self.current:
                name = str(body["metadata"]["name"])
                if type_ == "DELETED":
                    self.current[kind].pop(name, None)
                else:
                    self.current[kind][name] = body

    def _relist(self, kind: str, first: bool = False) -> str:
        """List ``kind``; record what changed since the stream's last event; the list's RV."""
        listing = self._get(self._url(kind))
        version = str(listing["metadata"]["resourceVersion"])
        if not first:
            self.relists.append(f"{kind} at {version}")
        items = {str(i["metadata"]["name"]): i for i in listing.get("items") or []}
        known = dict(self.current[kind])
        for name, item in items.items():
            old = known.get(name)
            version_now = item["metadata"]["resourceVersion"]
            if old is None or old["metadata"]["resourceVersion"] != version_now:
                self._record(kind, "ADDED" if old is None else "MODIFIED", item, None, not first)
        for name in known.keys() - items.keys():
            self._record(kind, "DELETED", known[name], int(version), True)
        return version

    def _watch(self, kind: str, version: str) -> None:
        """Resume from the last revision seen; the stream counts as down from an error until
        the API server answers again (a restarted one may hold a watch back for a while)."""
        while not self._stop.is_set():
            query = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
            url = self._url(kind, timeoutSeconds="5", **query)
            try:
                response = self._api.call_api("GET", url, JSON, None, None, (5, 10))
                try:
                    version = self._stream(kind, version, response)
                finally:
                    response.response.release_conn()
            except Exception:  # a dropped connection, an API server restarting
                self._connected(kind, False)
                self._stop.wait(0.2)

    def _stream(self, kind: str, version: str, response: Any) -> str:
        """Record one watch response's events; the revision to resume from."""
        if response.status == 410:
            return self._relist(kind)
        if response.status != 200:
            raise RuntimeError(f"watch {kind}: HTTP {response.status}")
        self._connected(kind, True)
        for line in iter_resp_lines(response.response):
            event = json.loads(line)
            if event["type"] == "ERROR":
                return self._relist(kind)
            version = str(event["object"]["metadata"]["resourceVersion"])
            if event["type"] != "BOOKMARK":
                self._record(kind, event["type"], event["object"])
        return version

    def _connected(self, kind: str, up: bool) -> None:
        with self._lock:
            if up and kind in self._down:
                del self._down[kind]
                self._up_since = time.time()
            elif not up:
                self._down.setdefault(kind, time.time())

    # --- stores and canaries ------------------------------------------------------------------

    def _poll(self) -> None:
        seen: dict[str, set[str]] = {}
        changed_canaries: set[Path] = set()
        while not self._stop.wait(self.poll_s):
            changes = []
            for run, root in list(self.stores.items()):
                now = committed_entries(root)
                before = seen.get(run, set())
                changes += [(COMMITTED, run, e) for e in sorted(now - before)]
                changes += [(GONE, run, e) for e in sorted(before - now)]
                seen[run] = now
            for root, digest in self.canaries.items():
                if root not in changed_canaries and tree_digest(root) != digest:
                    changed_canaries.add(root)
                    changes.append((CANARY, str(root), ""))
            if not changes:
                continue
            with self._lock:
                gap = bool(self._down)  # the objects' side of this change may be unseen yet
            revision = self._revision_after()
            if revision is None:
                return
            for type_, run, entry in changes:
                kind = CANARY if type_ == CANARY else STORE
                body = {"run": run, "entry": entry, "metadata": {"name": f"{run}/{entry}"}}
                self._record(kind, type_, body, revision, gap)
