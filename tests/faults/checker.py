"""The history checker of the fault-injection suite: what every master logged and every client saw,
checked against the properties the design promises.

Inputs (`load_history(root)` reads a run directory; tests build a `History` by hand):
- every master's event log (`m*/events.db`, the `events` table, one `EventRecord` per row);
- every framework's record (`frameworks/*.jsonl`, written by `tests.faults.workload`);
- every agent's checkpoint (`a*/agent.db`, table `updates`: the status updates the agent sent).

Properties (`check(history)` returns every violation found, as sentences; empty means all hold):
1. **Logs agree.** Every master's log is a prefix of the longest one: the same record at every seq
   both hold, and no holes.
2. **At most one leader per term.** The `LeaderElected` barriers of a term all name one master.
3. **Acknowledged means committed.** Every call a framework saw succeed is in the log: a launch as
   `TaskLaunched` of each task with the call's request id; a kill as `TaskKillRequested` with its
   request id, or the task already terminal; an acknowledgement as `TaskStatusAcknowledged` of its
   uuid; a teardown as `FrameworkRemoved`.
4. **Nothing given twice.** The longest log replays through the pure core (`core.apply`) with
   `core.invariants.check_invariants` after every entry (no over-commitment, no overlapping offers or
   tasks, indexes consistent), and no offer id or task id is issued or launched twice.
5. **Frameworks end knowing what agents saw.** Every task a framework launched ends, for the
   framework, in the same terminal state as the last update its agent recorded; a task no agent ever
   saw may only end in a state the master decides (lost, dropped, gone, killed, error). One difference
   is legitimate: the master ended the task itself (its agent was unreachable longer than the agent
   timeout: `TASK_LOST`, recorded with the master as source) and the agent, back, ended it too (killed
   at the master's request); the task must then be terminal on the agent as well.
6. **Updates: recorded exactly once, delivered at least once.** No status uuid is recorded twice in
   the log; the newest update an agent holds for each task is recorded (older ones may have been
   superseded: a re-registration reported the newer state, the master recorded it and the agent
   dropped what it had not sent yet; and after the master ended a task itself, the agent's late
   update is acknowledged, not recorded); every recorded update with a uuid is delivered to its framework
   (by uuid) at least once.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.control_plane.core import events as ev
from tessera.control_plane.core.invariants import check_invariants
from tessera.control_plane.core.state import ClusterState
from tessera.control_plane.core.values import StatusSource, TaskState
from tessera.control_plane.eventlog.decode import event_from_record
from tessera.control_plane.eventlog.errors import ReplayError
from tessera.control_plane.eventlog.records import EVENT_COLUMNS, EventRecord
from tessera.control_plane.eventlog.replay import entries_from_records, replay_entry
from tessera.control_plane.eventlog.snapshots import decode_snapshot

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED", "TASK_GONE"}
# states only an agent (the task's process) can produce; the master decides the others
AGENT_ONLY = {"TASK_FINISHED", "TASK_FAILED"}
MAX_REPORTED = 20  # per property, so one broken run does not print thousands of lines


@dataclass(frozen=True)
class AgentUpdate:
    seq: int
    task_id: str
    uuid: str
    state: str  # TaskState name


@dataclass
class History:
    masters: dict[str, list[EventRecord]] = field(default_factory=dict)
    frameworks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    agents: dict[str, list[AgentUpdate]] = field(default_factory=dict)
    # per agent: its agent id (agent.db's meta) and how many update rows its checkpoint no longer holds
    # (the highest seq minus the rows left): an agent prunes the records of its oldest done tasks beyond
    # the newest 1,000 (`Checkpoint.prune_done`), each with at least one update row, so that many tasks at
    # most may have ended on it with no trace left in its agent.db
    agent_ids: dict[str, str] = field(default_factory=dict)
    agent_rows_gone: dict[str, int] = field(default_factory=dict)
    # per master: the state snapshots stored in its events.db, by seq (the state after that event)
    snapshots: dict[str, dict[int, bytes]] = field(default_factory=dict)


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


# ---- loading ---------------------------------------------------------------------------------------
def read_events(path: Path) -> list[EventRecord]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [EventRecord(*row) for row in rows]


def read_snapshots(path: Path) -> dict[int, bytes]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {int(seq): bytes(blob) for seq, blob in conn.execute("SELECT seq, blob FROM snapshots")}
    finally:
        conn.close()


def read_agent_updates(path: Path) -> list[AgentUpdate]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT seq, task_id, uuid, state FROM updates ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [AgentUpdate(seq, task_id, uuid, TaskState(state).name) for seq, task_id, uuid, state in rows]


def read_agent_pruning(path: Path) -> tuple[str, int]:
    """(agent id, update rows gone from the checkpoint) of an agent.db: see `History.agent_rows_gone`."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'agent_id'").fetchone()
        top, left = conn.execute("SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM updates").fetchone()
    finally:
        conn.close()
    return (row[0] if row else ""), int(top) - int(left)


def read_framework_record(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash of the framework
    return out


def load_history(root: Path) -> History:
    h = History()
    for db in sorted(root.glob("m*/events.db")):
        h.masters[db.parent.name] = read_events(db)
        h.snapshots[db.parent.name] = read_snapshots(db)
    for rec in sorted((root / "frameworks").glob("*.jsonl")):
        h.frameworks[rec.stem] = read_framework_record(rec)
    for db in sorted(root.glob("a*/agent.db")):
        h.agents[db.parent.name] = read_agent_updates(db)
        h.agent_ids[db.parent.name], h.agent_rows_gone[db.parent.name] = read_agent_pruning(db)
    return h


# ---- the checks ------------------------------------------------------------------------------------
def check(history: History) -> Report:
    report = Report()
    report.stats["masters"] = len(history.masters)
    longest, installed = _check_prefixes(history, report)
    report.stats["events"] = len(longest)
    _check_leaders(history, report)
    decoded = _decode(longest, report)
    _check_acknowledged_calls(history, longest, decoded, report)
    replayed = _check_replay(longest, decoded, report, {seq for _, seq in installed})
    _check_installed_snapshots(history, installed, replayed, report)
    _check_tasks_and_updates(history, decoded, report)
    return report


def _add(report: Report, key: str, message: str) -> None:
    n = report.stats.get(f"violations.{key}", 0) + 1
    report.stats[f"violations.{key}"] = n
    if n <= MAX_REPORTED:
        report.violations.append(f"[{key}] {message}")
    elif n == MAX_REPORTED + 1:
        report.violations.append(f"[{key}] ... more violations of this kind not shown")


def _holes(seqs: list[int]) -> list[tuple[int, int]]:
    """Missing ranges (first, last) in `seqs`, counting from seq 1."""
    out, expected = [], 1
    for seq in seqs:
        if seq > expected:
            out.append((expected, seq - 1))
        expected = seq + 1
    return out


def _check_prefixes(history: History, report: Report) -> tuple[list[EventRecord], list[tuple[str, int]]]:
    """Property 1: the masters' logs agree wherever two of them hold the same seq, and a hole in a
    master's log ends at a state snapshot it installed (a master behind a compacted leader log has no
    events before it, by design, and stores that state instead; those states are checked against the
    replay). A master may end before another: it was stopped before the last commits reached it.

    Returns the committed log as the masters hold it together (every seq from the master that holds
    most events, else from the next that holds it) and the holes that end at installed states, as
    (master, seq of the snapshot)."""
    installed: list[tuple[str, int]] = []
    names = sorted(history.masters, key=lambda n: -len(history.masters[n]))
    if not names:
        _add(report, "logs", "no master event log found")
        return [], installed
    reference: dict[int, tuple[str, EventRecord]] = {}
    for name in names:
        records = history.masters[name]
        for first, last in _holes([r.seq for r in records]):
            if last in history.snapshots.get(name, {}):
                installed.append((name, last))
            else:
                _add(report, "logs", f"{name}'s log has a hole: seq {first}..{last} missing, and no "
                                     f"installed state at {last}")
        for r in records:
            seen = reference.get(r.seq)
            if seen is None:
                reference[r.seq] = (name, r)
            elif seen[1] != r:
                _add(report, "logs", f"{name} and {seen[0]} differ at seq {r.seq}: "
                                     f"{_brief(r)} vs {_brief(seen[1])}")
                break  # a divergence explains everything after it
    seqs = sorted(reference)  # a seq no master holds is a hole of each, judged above
    report.stats["holes_covered_by_installed_snapshots"] = len(installed)
    return [reference[seq][1] for seq in seqs], installed


def _brief(r: EventRecord) -> str:
    return f"{r.type}(term {r.term}, request {r.request_id or '-'}, raft {r.raft_index}, {r.payload[:80]})"


def _check_leaders(history: History, report: Report) -> None:
    leaders: dict[int, set[str]] = defaultdict(set)
    for records in history.masters.values():
        for r in records:
            if r.type == "LeaderElected":
                payload = json.loads(r.payload)
                leaders[int(payload["term"])].add(str(payload["master"]))
    report.stats["terms_with_leader"] = len(leaders)
    for term, masters in sorted(leaders.items()):
        if len(masters) > 1:
            _add(report, "leaders", f"term {term} has {len(masters)} leaders: {sorted(masters)}")


def _decode(records: list[EventRecord], report: Report) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for r in records:
        try:
            out[r.seq] = event_from_record(r)
        except ReplayError as exc:
            _add(report, "replay", str(exc))
    return out


def _acked_calls(history: History) -> Iterable[tuple[str, dict[str, Any]]]:
    for fw, records in history.frameworks.items():
        for rec in records:
            if rec.get("kind") == "call" and rec.get("ok"):
                yield fw, rec


def _framework_ids(records: list[dict[str, Any]]) -> set[str]:
    return {r["framework_id"] for r in records if r.get("kind") == "subscribed"}


def _check_acknowledged_calls(history: History, longest: list[EventRecord], decoded: dict[int, Any],
                              report: Report) -> None:
    launched: dict[str, set[str]] = defaultdict(set)  # task id -> request ids of its TaskLaunched
    kills: dict[str, set[str]] = defaultdict(set)
    terminal_tasks: set[str] = set()
    acked_uuids: set[str] = set()
    removed: set[str] = set()
    for r in longest:
        e = decoded.get(r.seq)
        if isinstance(e, ev.TaskLaunched):
            launched[e.task_id].add(r.request_id)
        elif isinstance(e, ev.TaskKillRequested):
            kills[e.task_id].add(r.request_id)
        elif isinstance(e, ev.TaskStatusUpdated) and e.status.state.name in TERMINAL:
            terminal_tasks.add(e.task_id)
        elif isinstance(e, ev.TaskStatusAcknowledged):
            acked_uuids.add(e.uuid)
        elif isinstance(e, ev.FrameworkRemoved):
            removed.add(e.framework_id)
    n = 0
    for fw, call in _acked_calls(history):
        n += 1
        rid, kind = call.get("request_id", ""), call.get("call")
        where = f"{fw}: acknowledged {kind} (request {rid}"
        if kind == "launch":
            for task_id in call.get("task_ids", []):
                if rid not in launched.get(task_id, set()):
                    _add(report, "acknowledged", f"{where}, task {task_id}) is not in the log")
        elif kind == "kill":
            for task_id in call.get("task_ids", []):
                if rid not in kills.get(task_id, set()) and task_id not in terminal_tasks:
                    _add(report, "acknowledged", f"{where}, task {task_id}) is not in the log and the "
                                                 "task never ended")
        elif kind == "acknowledge":
            if call.get("uuid") not in acked_uuids:
                _add(report, "acknowledged", f"{where}, uuid {call.get('uuid')}) is not in the log")
        elif kind == "teardown":
            if not (_framework_ids(history.frameworks[fw]) & removed):
                _add(report, "acknowledged", f"{where}) is not in the log (no FrameworkRemoved)")
    report.stats["acknowledged_calls"] = n


def _comparable(state: ClusterState) -> str:
    """The state's fingerprint without what the event log cannot give back (see eventlog.replay): the
    request ids of entries that recorded nothing and the time of an entry without events."""
    return dataclasses.replace(state, requests=OrderedDict(), time=0.0).fingerprint()


def _check_replay(longest: list[EventRecord], decoded: dict[int, Any], report: Report,
                  keep: set[int]) -> dict[int, str]:
    """Property 4; returns the comparable fingerprints of the replayed states at the seqs in `keep`."""
    state = ClusterState()
    entries = 0
    prints: dict[int, str] = {}
    try:
        for entry in entries_from_records(longest):
            replay_entry(state, entry)
            entries += 1
            for problem in check_invariants(state):
                _add(report, "invariants", f"after events {entry.first_seq}..{entry.last_seq}: {problem}")
            if entry.last_seq in keep:
                prints[entry.last_seq] = _comparable(state)
    except ReplayError as exc:
        _add(report, "replay", f"the longest log does not replay: {exc}")
    report.stats["entries_replayed"] = entries
    offers = Counter(e.offer_id for e in decoded.values() if isinstance(e, ev.OfferIssued))
    tasks = Counter(e.task_id for e in decoded.values() if isinstance(e, ev.TaskLaunched))
    accepted = Counter(e.offer_id for e in decoded.values() if isinstance(e, ev.OfferAccepted))
    for what, counts in (("offer issued", offers), ("task launched", tasks), ("offer accepted", accepted)):
        for key, count in sorted(counts.items()):
            if count > 1:
                _add(report, "twice", f"{what} {count} times: {key}")
    report.stats["offers_issued"] = len(offers)
    report.stats["tasks_launched"] = len(tasks)
    return prints


def _check_installed_snapshots(history: History, installed: list[tuple[str, int]], replayed: dict[int, str],
                               report: Report) -> None:
    for name, seq in installed:
        state = decode_snapshot(history.snapshots[name][seq])
        if state is None:
            _add(report, "logs", f"{name}'s installed state at seq {seq} does not load")
        elif seq not in replayed:
            _add(report, "logs", f"{name}'s installed state at seq {seq} is not at an entry boundary of the log")
        elif _comparable(state) != replayed[seq]:
            _add(report, "logs", f"{name}'s installed state at seq {seq} differs from the log replayed to {seq}")


def _check_tasks_and_updates(history: History, decoded: dict[int, Any], report: Report) -> None:
    recorded: Counter[str] = Counter()  # uuid -> times recorded
    recorded_by_framework: dict[str, set[str]] = defaultdict(set)
    task_framework: dict[str, str] = {}
    master_ended: dict[str, str] = {}  # task -> terminal state the master decided (agent unreachable...)
    launched_on: dict[str, str] = {}  # task -> the agent id it was launched to
    for _, e in sorted(decoded.items()):
        if isinstance(e, ev.TaskStatusUpdated):
            if e.status.uuid:
                recorded[e.status.uuid] += 1
                recorded_by_framework[e.framework_id].add(e.status.uuid)
            if (e.status.state.name in TERMINAL and e.status.source is StatusSource.SOURCE_MASTER
                    and e.task_id not in master_ended):
                master_ended[e.task_id] = e.status.state.name
        elif isinstance(e, ev.TaskLaunched):
            task_framework[e.task_id] = e.framework_id
            launched_on[e.task_id] = e.agent_id
    for uuid, count in sorted(recorded.items()):
        if count > 1:
            _add(report, "updates", f"status update {uuid} recorded {count} times")
    report.stats["updates_recorded"] = len(recorded)

    agent_last: dict[str, AgentUpdate] = {}
    agent_of: dict[str, str] = {}
    superseded = 0
    for agent, updates in history.agents.items():
        for u in updates:
            agent_last[u.task_id] = u  # seq order within an agent; a task lives on one agent
            agent_of[u.task_id] = agent
            superseded += u.uuid not in recorded
    for task_id, u in sorted(agent_last.items()):
        # Older updates may be superseded (a re-registration reported a newer state, which the master
        # recorded, and the agent dropped the older ones); the newest one must be recorded, unless the
        # master had already ended the task itself (then its decision stands and the update is only acked).
        if u.uuid not in recorded and task_id not in master_ended:
            _add(report, "updates", f"{agent_of[task_id]}: the last update of task {task_id} ({u.uuid}, "
                                    f"{u.state}) was never recorded")
    report.stats["agent_updates_superseded"] = superseded - sum(u.uuid not in recorded for u in agent_last.values())

    ended_by_master = 0
    # an agent's pruned records: tasks launched to it that ended with no trace left on it, at most as many as
    # update rows its checkpoint no longer holds (`History.agent_rows_gone`)
    prunable = {history.agent_ids[name]: gone for name, gone in history.agent_rows_gone.items()
                if history.agent_ids.get(name)}
    pruned = 0
    for fw, records in history.frameworks.items():
        fids = _framework_ids(records)
        delivered = {r["uuid"] for r in records if r.get("kind") == "update" and r.get("uuid")}
        for fid in sorted(fids):
            for uuid in sorted(recorded_by_framework.get(fid, set()) - delivered):
                _add(report, "updates", f"{fw}: recorded update {uuid} was never delivered")
        final: dict[str, str] = {}
        for r in records:
            if r.get("kind") == "update" and r.get("state") in TERMINAL:
                final.setdefault(r["task_id"], r["state"])  # the first terminal state is the final one
        ours = sorted(t for t, f in task_framework.items() if f in fids)
        for task_id in ours:
            seen = final.get(task_id)
            agent = agent_last.get(task_id)
            if seen is None:
                _add(report, "tasks", f"{fw}: task {task_id} never ended for its framework")
            elif agent is None:
                on = launched_on.get(task_id, "")
                if seen in AGENT_ONLY and prunable.get(on, 0) > 0:
                    prunable[on] -= 1  # its record went with its agent's oldest done tasks
                    pruned += 1
                elif seen in AGENT_ONLY:
                    _add(report, "tasks", f"{fw}: task {task_id} ended {seen} but no agent ever ran it")
            elif agent.state in TERMINAL and agent.state != seen:
                # The one legitimate difference: the master ended the task itself (its agent was
                # unreachable for longer than the agent timeout: TASK_LOST), told the framework, and
                # had the agent kill it when it came back. The task must not run on.
                if master_ended.get(task_id) == seen:
                    ended_by_master += 1
                else:
                    _add(report, "tasks", f"{fw}: task {task_id} ended {seen} for its framework but "
                                          f"{agent.state} on its agent")
            elif agent.state not in TERMINAL:
                _add(report, "tasks", f"{fw}: task {task_id} ended {seen} for its framework but its agent "
                                      f"last saw it {agent.state}")
        report.stats[f"tasks.{fw}"] = len(ours)
    report.stats["tasks_ended_by_master_then_on_agent"] = ended_by_master
    report.stats["tasks_pruned_by_their_agent"] = pruned
