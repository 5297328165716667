"""The invariant checker: judges a recorded history of one namespace and its stores.

:mod:`ckpt_operator.testing.observer` records every watch event of pods, Checkpoints and
TrainingRuns and every change of the stores' committed entries; they are fed here in the API
server's global order: an object's ``resourceVersion`` is an etcd revision, and a store
observation is placed at the revision read right after it (the change happened before). A
race between two watch streams never decides a verdict. The rules are a second, independent
reading of docs/design.md, not calls into ``policy/``; only pod parsing is shared
(:class:`~ckpt_operator.views.pod.ConsumerView`, Kubernetes label-selector semantics).

How each invariant is judged while records arrive (end-state checks: :mod:`.convergence`):

* **safe deletion** — between the revision a checkpoint's deletion began and the one at which
  our finalizer let go (or its storage was seen gone), there must be a revision at which
  nothing blocked it: no live consumer, silent for less than ``reportTimeoutSeconds`` minus
  ``slack_s``, reported a loaded step <= its step (or none); no attempt pending or running
  resumes from it (a status record, or a live pod of an attempt status has not closed: a lost
  status write); it is not its run's newest verified checkpoint of its kind — unless forced
  (``ckpt.dev/force-delete``) or the run is being deleted. The operator decides at one
  instant of that window on its own (slightly late) view, so any free revision acquits it. A
  committed entry vanishing while its object is not being deleted, or, never registered,
  while its run lives, is unsafe too.
* **verified resume** — an attempt's first worker names in ``CKPT_RESUME_FROM`` a full
  checkpoint that was Ready and not Terminating at its creation or within ``lag_s`` before
  (the operator's watch lags), whose storage was not seen gone (unless a user forced its
  deletion: that overrides the protection on purpose); later workers name the same.
* **newest resume** — no newer full checkpoint was Ready and not Terminating for the whole
  ``lag_s`` before that creation.
* **crash convergence** — each (attempt, rank) pod is created once, attempt numbers never
  skip or go back, never two attempts with live workers; status ``attempts`` are numbered
  0..n with ``attempt`` n, closed records never change, counters never decrease.
* **confined paths** — the canary outside the allowed root never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_operator.api import names
from ckpt_operator.policy.consumers import default_selector, selector_matches
from ckpt_operator.storage import layout
from ckpt_operator.testing.history import (
    CANARY,
    CHECKPOINTS,
    COMMITTED,
    CONFINED_PATHS,
    CRASH_CONVERGENCE,
    DEFAULT_LAG_S,
    NEWEST_RESUME,
    PODS,
    RUNS,
    SAFE_DELETION,
    SILENCE_SLACK_S,
    STORE,
    VERIFIED_RESUME,
    Body,
    Key,
    Record,
    Violation,
    attempt_of,
    ckpt_key,
    live,
    meta,
    phase,
    resume_of,
    terminating,
    usable,
    verified,
)
from ckpt_operator.views.pod import ConsumerView


@dataclass
class _Deletion:
    uid: str
    since: int
    free: bool = False
    judged: bool = False
    reasons: list[str] = field(default_factory=list)
    gap: bool = False
    """Its deletion fell into a watch gap: judged on the state at the gap's end only."""


class InvariantChecker:
    """Feed records in :attr:`Record.order`; read :attr:`violations`."""

    def __init__(self, lag_s: float = DEFAULT_LAG_S, slack_s: float = SILENCE_SLACK_S) -> None:
        self.lag_s, self.slack_s = lag_s, slack_s
        self.objects: dict[str, dict[str, Body]] = {PODS: {}, CHECKPOINTS: {}, RUNS: {}}
        self.committed: dict[tuple[str, str], int] = {}
        """(run, store entry) -> revision it was seen committed at."""
        self.violations: list[Violation] = []
        self.unjudged: list[str] = []
        self._suspects: dict[str, str] = {}
        """Checkpoint -> its store entry, seen gone while the watches were down."""
        """What fell into watch gaps and could only be judged in part, or not at all."""
        self.revision, self.now, self.fed = 0, 0.0, 0
        self._deletions: dict[str, _Deletion] = {}
        self._pod_uids: dict[tuple[str, int, int], str] = {}
        self._top: dict[str, int] = {}
        self._resumes: dict[tuple[str, int], str | None] = {}
        self._usable_since: dict[str, tuple[str, Key, float]] = {}
        self._usable_until: dict[str, float] = {}
        self._gone: dict[str, int] = {}
        self._forced: set[str] = set()
        """Checkpoints a user forced the deletion of (until new files of that name are
        committed): their storage going is a user's choice, not ours. Remembered from the
        object, which may be gone before the store poll sees its files go."""
        self._live_workers: dict[str, dict[str, int]] = {}
        self._others: dict[str, Body] = {}
        """Pods that are not attempt pods: the possible consumers."""
        self._run_ckpts: dict[str, set[str]] = {}
        self._overlaps: set[tuple[str, tuple[int, ...]]] = set()

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, rec: Record) -> None:
        self.revision, self.now = rec.revision, max(self.now, rec.at)
        self.fed += 1
        if rec.relisted and rec.kind == CHECKPOINTS and rec.type == "DELETED":
            self._unseen_deletion(rec)
        if rec.kind == CHECKPOINTS:
            self._settle_suspect(rec)
        self._evaluate_deletions()  # the previous state, as of now
        if rec.kind == STORE:
            self._store(rec)
        elif rec.kind == CANARY:
            self.violate(CONFINED_PATHS, f"canary outside the allowed root changed: {rec.body}")
        else:
            name = str(meta(rec.body).get("name", ""))
            store = self.objects[rec.kind]
            before = store.get(name)
            if before is not None and meta(before).get("uid") != meta(rec.body).get("uid"):
                before = None  # a new object of the same name
            if rec.type == "DELETED":
                store.pop(name, None)
            else:
                store[name] = rec.body
            after = None if rec.type == "DELETED" else rec.body
            if rec.kind == PODS:
                self._pod(rec.body, before, after, rec.relisted)
            elif rec.kind == CHECKPOINTS:
                self._checkpoint(name, rec, before, after)
            else:
                self._run(name, before, after)
        self._evaluate_deletions()

    def violate(self, invariant: str, message: str, *objects: str) -> None:
        self.violations.append(Violation(invariant, self.revision, message, objects))

    # --- safe deletion ------------------------------------------------------------------------

    def blockers(self, name: str) -> list[str]:
        """Why checkpoint ``name`` must keep its storage now; empty: it may go."""
        body = self.objects[CHECKPOINTS][name]
        if _forced(body):
            return []
        run = str(body["spec"]["run"])
        run_body = self.objects[RUNS].get(run)
        step = ckpt_key(body)[0]
        held = [
            f"consumer {c.name} loaded {c.loaded_step}"
            for c in self._consumers(run, run_body)
            if c.loaded_step is None or c.loaded_step <= step
        ]
        if run_body is not None and not terminating(run_body):
            if name in self.resume_targets(run):
                held.append(f"resume target of a pending or running attempt of {run}")
            if self._newest(name, body):
                held.append(f"newest verified checkpoint of {run}")
        return held

    def _consumers(self, run: str, run_body: Body | None) -> list[ConsumerView]:
        """Live consumers of ``run`` that have not been silent for long."""
        spec = (run_body or {}).get("spec") or {}
        consumers = spec.get("consumers") or {}
        selector = consumers.get("selector") or default_selector(run)
        timeout = float(consumers.get("reportTimeoutSeconds", 600))
        found = []
        for pod in self._others.values():
            if selector_matches(selector, meta(pod).get("labels") or {}):
                view = ConsumerView.from_body(pod)
                quiet = self.now - view.last_report.timestamp()
                if view.live and quiet < timeout - self.slack_s:
                    found.append(view)
        return found

    def resume_targets(self, run: str) -> set[str]:
        """Checkpoints a pending or running attempt resumes from, by status or by its pods."""
        status = self.objects[RUNS][run].get("status") or {}
        records = status.get("attempts") or []
        targets = {
            str(a["resumedFrom"]["name"])
            for a in records
            if a.get("phase") in ("Pending", "Running") and (a.get("resumedFrom") or {}).get("name")
        }
        closed = {a.get("attempt") for a in records if a.get("phase") in ("Failed", "Succeeded")}
        for pod_name, attempt in self._live_workers.get(run, {}).items():
            pod = self.objects[PODS][pod_name]
            target = resume_of(pod, run)
            if attempt not in closed and not terminating(pod) and target is not None:
                targets.add(target[0])
        return targets

    def _newest(self, name: str, body: Body) -> bool:
        if not verified(body):
            return False
        full = body["spec"].get("kind", "full") == "full"
        key = ckpt_key(body)
        for other in self._run_ckpts.get(str(body["spec"]["run"]), set()) - {name}:
            o = self.objects[CHECKPOINTS][other]
            kind_ok = not full or o["spec"].get("kind", "full") == "full"
            if kind_ok and verified(o) and ckpt_key(o) > key:
                return False
        return True

    def _evaluate_deletions(self) -> None:
        for name, d in self._deletions.items():
            if d.free or d.judged or name not in self.objects[CHECKPOINTS]:
                continue
            reasons = self.blockers(name)
            d.free, d.reasons = not reasons, reasons or d.reasons

    def _unseen_deletion(self, rec: Record) -> None:
        """An object that vanished in a watch gap: its deletion is judged on the last state
        known, at the gap's end (a consumer's reports only move forward, so blocked then
        nearly always means blocked throughout)."""
        name = str(meta(rec.body).get("name", ""))
        body = self.objects[CHECKPOINTS].get(name)
        d = self._deletions.get(name)
        if body is not None and (d is None or d.uid != meta(body).get("uid")):
            self._deletions[name] = _Deletion(str(meta(body).get("uid")), rec.revision, gap=True)
            self.unjudged.append(f"deletion of {name} fell into a watch gap")

    def _judge(self, name: str, d: _Deletion, how: str) -> None:
        if d.judged:
            return
        d.judged = True
        if not d.free:
            why = "; ".join(d.reasons)
            since = "at the end of a watch gap" if d.gap else f"at every revision since {d.since}"
            self.violate(SAFE_DELETION, f"{how}, blocked {since}: {why}", name)

    def _store(self, rec: Record) -> None:
        run, entry = str(rec.body["run"]), str(rec.body["entry"])
        parsed = layout.parse_committed(entry)
        if parsed is None:
            return
        name = parsed.object_name(run)
        if rec.type == COMMITTED:
            self.committed[(run, entry)] = rec.revision
            self._gone.pop(name, None)
            self._forced.discard(name)
            return
        self.committed.pop((run, entry), None)
        self._gone[name] = rec.revision
        body = self.objects[CHECKPOINTS].get(name)
        d = self._deletions.get(name)
        if d is not None and (body is None or meta(body).get("uid") == d.uid):
            self._judge(name, d, f"storage of {entry} seen gone")
        elif body is not None and rec.relisted:
            self._suspects[name] = entry
        elif body is not None:
            self.violate(SAFE_DELETION, f"storage of {entry} gone, not being deleted", name)
        elif (rb := self.objects[RUNS].get(run)) is not None and not terminating(rb):
            self.violate(SAFE_DELETION, f"unregistered {entry} of a live run removed", run)

    def _settle_suspect(self, rec: Record) -> None:
        """Storage seen gone during a watch gap, its object not (yet) seen deleted: the relist
        that closes the gap shows the deletion (acquitted, judged in part) or, once the watch
        streams again, its absence (a violation)."""
        name = str(meta(rec.body).get("name", ""))
        entry = self._suspects.get(name)
        if entry is None:
            return
        if rec.type == "DELETED" or terminating(rec.body):
            del self._suspects[name]
            self.unjudged.append(f"deletion of {name} seen only after its storage went")
        elif not rec.relisted:
            del self._suspects[name]
            self.violate(SAFE_DELETION, f"storage of {entry} gone, not being deleted", name)

    # --- objects ------------------------------------------------------------------------------

    def _checkpoint(self, name: str, rec: Record, before: Body | None, after: Body | None) -> None:
        body = after or before or rec.body
        run = str(body["spec"]["run"])
        if _forced(rec.body):
            self._forced.add(name)
        if after is not None:
            self._run_ckpts.setdefault(run, set()).add(name)
        else:
            self._run_ckpts.get(run, set()).discard(name)
        was, now = before is not None and usable(before), after is not None and usable(after)
        if now and not was:
            self._usable_since[name] = (run, ckpt_key(body), self.now)
        elif was and not now:
            self._usable_since.pop(name, None)
            self._usable_until[name] = self.now
        uid = str(meta(body).get("uid", ""))
        d = self._deletions.get(name)
        if after is not None and terminating(after) and (d is None or d.uid != uid):
            d = self._deletions[name] = _Deletion(uid, rec.revision)
            self._evaluate_deletions()
        had = names.FINALIZER in (meta(before or {}).get("finalizers") or [])
        has = after is not None and names.FINALIZER in (meta(after).get("finalizers") or [])
        if d is not None and d.uid == uid and had and not has:
            self._judge(name, d, "finalizer let go")

    def _pod(self, body: Body, before: Body | None, after: Body | None, relisted: bool) -> None:
        name = str(meta(body)["name"])
        ident = attempt_of(body)
        if ident is None:
            if after is None:
                self._others.pop(name, None)
            else:
                self._others[name] = after
            return
        run, attempt, rank = ident
        workers = self._live_workers.setdefault(run, {})
        if after is not None and live(after):
            workers[name] = attempt
        else:
            workers.pop(name, None)
        if after is not None and before is None:
            self._created(run, attempt, rank, after, relisted)
        alive = tuple(sorted(set(workers.values())))
        if len(alive) > 1 and (run, alive) not in self._overlaps:
            self._overlaps.add((run, alive))
            self.violate(CRASH_CONVERGENCE, f"workers of attempts {alive} alive at once", run)

    def _created(self, run: str, attempt: int, rank: int, pod: Body, relisted: bool) -> None:
        uid, slot = str(meta(pod).get("uid")), (run, attempt, rank)
        prior = self._pod_uids.get(slot)
        if prior == uid:
            return  # seen again after a relist
        pod_name = str(meta(pod)["name"])
        if prior is not None:
            self.violate(
                CRASH_CONVERGENCE, f"attempt {attempt} rank {rank} created twice", pod_name
            )
        self._pod_uids[slot] = uid
        top = self._top.get(run, -1)
        if attempt > top + 1 or attempt < top:
            self.violate(CRASH_CONVERGENCE, f"attempt {attempt} created after {top}", pod_name)
        self._top[run] = max(top, attempt)
        if relisted:  # created in a watch gap: when exactly, and on what view, is unknown
            self.unjudged.append(f"resume point of {pod_name}, created in a watch gap")
            self._resumes.setdefault((run, attempt), (resume_of(pod, run) or (None,))[0])
            return
        self._judge_resume(run, attempt, pod, pod_name)

    def _judge_resume(self, run: str, attempt: int, pod: Body, pod_name: str) -> None:
        target = resume_of(pod, run)
        target_name = target[0] if target else None
        if (run, attempt) in self._resumes:
            if self._resumes[(run, attempt)] != target_name:
                first = self._resumes[(run, attempt)]
                self.violate(
                    CRASH_CONVERGENCE, f"resumes from {target_name}, not {first}", pod_name
                )
            return
        self._resumes[(run, attempt)] = target_name
        horizon = self.now - self.lag_s
        if target is not None:
            body = self.objects[CHECKPOINTS].get(target[0])
            was = self._usable_until.get(target[0], float("-inf")) >= horizon
            if not (body is not None and usable(body)) and not was:
                state = "unknown" if body is None else f"{phase(body) or 'new'}"
                state += ", Terminating" if body is not None and terminating(body) else ""
                self.violate(VERIFIED_RESUME, f"resumes from {target[0]} ({state})", pod_name)
            if target[0] in self._gone and target[0] not in self._forced:
                gone = self._gone[target[0]]
                self.violate(VERIFIED_RESUME, f"{target[0]} storage gone at {gone}", pod_name)
        newer = sorted(
            (key, n, since)
            for n, (r, key, since) in self._usable_since.items()
            if r == run and since <= horizon and (target is None or key > target[1])
        )
        if newer:
            _, best, since = newer[-1]
            self.violate(
                NEWEST_RESUME,
                f"attempt {attempt} resumes from {target_name or 'scratch'} though {best} was "
                f"Ready for {self.now - since:.1f} s",
                pod_name,
                best,
            )

    def _run(self, name: str, before: Body | None, after: Body | None) -> None:
        if after is None:
            return
        status = after.get("status") or {}
        records = status.get("attempts") or []
        numbers = [a.get("attempt") for a in records]
        if numbers != list(range(len(numbers))) or (
            records and status.get("attempt") != numbers[-1]
        ):
            self.violate(CRASH_CONVERGENCE, f"attempts {numbers}, attempt {status.get('attempt')}")
        if before is None:
            return
        old = before.get("status") or {}
        old_records = old.get("attempts") or []
        if len(records) < len(old_records):
            self.violate(CRASH_CONVERGENCE, f"status.attempts shrank to {len(records)}", name)
        for was, now in zip(old_records, records, strict=False):
            if was.get("phase") in ("Failed", "Succeeded") and _closed(was) != _closed(now):
                self.violate(
                    CRASH_CONVERGENCE, f"closed attempt {was.get('attempt')} changed", name
                )
        for counter in ("restarts", "preemptions"):
            if int(status.get(counter) or 0) < int(old.get(counter) or 0):
                self.violate(CRASH_CONVERGENCE, f"status.{counter} decreased", name)


def _closed(record: Body) -> tuple[object, ...]:
    fields = ("phase", "exitCode", "reason", "action", "resumedFrom", "pod")
    return tuple(record.get(f) for f in fields)


def _forced(checkpoint: Body) -> bool:
    annotations = meta(checkpoint).get("annotations") or {}
    return annotations.get(names.ANNOTATION_FORCE_DELETE) == "true"
