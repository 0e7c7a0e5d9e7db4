"""Span reports (`Operator.ReportSpans`): who may report which spans, and how many, as pure functions.

Stored spans are shown by `GetTrace` / `tessera trace TASK_ID` next to the task's events, so reporting a
span is writing into somebody's trace. The edge (`api.operator`) establishes the facts — the caller, the
agents it is, which tasks each span concerns, whose those tasks are, the time — and these functions
decide.

Who (`check_span_report`):

- A span *concerns* the task it names (`task_id`) and every task its trace already belongs to (the
  events and stored spans carrying that trace id name them). A span that names no task, in a trace that
  names none yet, concerns no task.
- A master may report any span.
- An agent may name only tasks that run on it, and report only into traces that name no task or at
  least one of its tasks (one framework call may launch tasks on several agents in one trace; every
  agent of those tasks takes part in it). Which agents the caller is comes from the edge: today the agents with a live session from the caller's network host (the agent certificate names
  only the kind); once certificates name the agent, the agent its certificate names.
- A principal (a framework or operator certificate with its token) may report spans only when the task
  the span names and every task of its trace belong to frameworks recorded under its own principal. `read_all` or `teardown` do not widen this: reporting is
  writing.
- Without an ACL there are no tenants: a certificate kind other than `agent`, or no TLS at all (insecure
  development mode), may report any span.
- A task the state does not know (never launched, or forgotten since) belongs to nobody the caller could
  be: a span concerning it is refused (to everyone but masters and the development mode).

How much (`SpanLimits`): per call, at most `max_spans_per_call` spans and `max_call_bytes` serialized
bytes, and per span bounded texts and attributes — over any of them the call is `InvalidRequest` and
nothing is stored; per reporter, a token bucket of spans and one of bytes (`take_budget`) — over them
`ResourceExhausted`, nothing stored, retry later. The bucket is a frozen value with the time it was
taken at; the edge keeps one per reporter and hands the clock in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera.control_plane.core.acl import Caller
from tessera.control_plane.core.errors import InvalidRequest, PermissionDenied, ResourceExhausted
from tessera.control_plane.core.state import ClusterState


@dataclass(frozen=True, slots=True)
class TaskPlacement:
    """Whose a task is (its framework's recorded principal) and where it runs."""

    principal: str
    agent_id: str


def checks_span_owners(caller: Caller) -> bool:
    """Whether `check_span_report` can refuse this caller at all (so the edge gathers its facts)."""
    return caller.kind == "agent" or (caller.kind != "master" and caller.grant is not None)


def placements(state: ClusterState, task_ids: Iterable[str]) -> dict[str, tuple[TaskPlacement, ...]]:
    """Where the tasks of each of `task_ids` the state knows run and whose they are (their framework's
    principal). Task ids are scoped per framework and spans name a bare task id, so one id may place
    several tasks of different frameworks."""
    out: dict[str, tuple[TaskPlacement, ...]] = {}
    for task_id in task_ids:
        found = tuple(
            TaskPlacement(framework.info.principal if framework is not None else "", task.agent_id)
            for task in state.tasks_named(task_id)
            for framework in (state.frameworks.get(task.framework_id),))
        if found:
            out[task_id] = found
    return out


def check_span_report(caller: Caller, caller_agents: frozenset[str], span_task: str, trace_tasks: Iterable[str],
                      tasks: Mapping[str, tuple[TaskPlacement, ...]]) -> None:
    """The caller may report a span naming task `span_task` ("" for none) in a trace whose stored events
    and spans name `trace_tasks` (see the module docstring).

    `caller_agents` are the agent ids the caller is (only read for an agent certificate); `tasks` places
    every task the state knows among them (a missing id is unknown). A task id several frameworks use
    counts as the caller's only when every task of that id is: spans name bare ids, and a tenant must not
    reach another's trace through an id they share (its own spans for such an id are refused instead)."""
    if caller.kind == "master" or (caller.kind is None and caller.grant is None):
        return
    in_trace = sorted(set(trace_tasks) - {""})
    if caller.kind == "agent":
        def on_caller(task_id: str) -> bool:
            placed = tasks.get(task_id, ())
            return bool(placed) and all(p.agent_id in caller_agents for p in placed)

        # One framework call may launch tasks on several agents in one trace: an agent joins a trace
        # when one of its tasks is in it, and names only its own tasks.
        if span_task and not on_caller(span_task):
            raise PermissionDenied(f"an agent may report spans only for tasks running on it; task {span_task} "
                                   "does not run on the calling agent")
        if in_trace and not any(on_caller(t) for t in in_trace):
            raise PermissionDenied("an agent may report spans only in traces of tasks running on it")
        return
    grant = caller.grant
    if grant is None:
        return  # a framework or operator certificate without an ACL: no tenants to keep apart
    for task_id in sorted({span_task, *in_trace} - {""}):
        placed = tasks.get(task_id, ())
        if not placed or any(p.principal != grant.principal for p in placed):
            raise PermissionDenied(f"principal {grant.principal} may report spans only for its own frameworks' "
                                   f"tasks; task {task_id} is not one")


@dataclass(frozen=True, slots=True)
class SpanLimits:
    """Bounds on span reports. Defaults: 1,000 spans or 1 MiB per call; a name, service, kind or status of
    at most 256 characters, attributes of at most 16 KiB (JSON text) per span, times no later than an
    hour past the master's clock (spans are pruned by their end time: a span dated in the future would
    outlive retention); per reporter 1,000 spans and 1 MiB a second sustained, bursts of 10,000 spans and
    8 MiB."""

    max_spans_per_call: int = 1_000
    max_call_bytes: int = 1 << 20
    max_text: int = 256
    max_attributes_bytes: int = 16 << 10
    spans_per_second: float = 1_000.0
    span_burst: int = 10_000
    bytes_per_second: float = float(1 << 20)
    byte_burst: int = 8 << 20
    max_future_seconds: float = 3600.0  # how far past the master's clock a span may end (clock skew)


def check_span_call(limits: SpanLimits, spans: int, call_bytes: int) -> None:
    """A call's size: InvalidRequest when it carries too many spans or too many bytes."""
    if spans > limits.max_spans_per_call:
        raise InvalidRequest(f"spans: at most {limits.max_spans_per_call} per call, got {spans}")
    if call_bytes > limits.max_call_bytes:
        raise InvalidRequest(f"spans: at most {limits.max_call_bytes} bytes per call, got {call_bytes}")


def check_span_fields(limits: SpanLimits, texts: Mapping[str, str], attributes: str, start: float, end: float,
                      now: float) -> None:
    """One span's texts (name, service, kind, status), attributes (JSON text) and times within bounds."""
    if not (0.0 <= start <= end <= now + limits.max_future_seconds):
        raise InvalidRequest(f"span: expected 0 <= start_time <= end_time <= now + {limits.max_future_seconds:g} s,"
                             f" got {start!r} .. {end!r}")
    for name, text in texts.items():
        if len(text) > limits.max_text:
            raise InvalidRequest(f"span.{name}: at most {limits.max_text} characters, got {len(text)}")
    size = len(attributes.encode())
    if size > limits.max_attributes_bytes:
        raise InvalidRequest(f"span.attributes_json: at most {limits.max_attributes_bytes} bytes, got {size}")


@dataclass(frozen=True, slots=True)
class SpanBudget:
    """What a reporter may still send (spans, bytes), as of `at` (the edge's monotonic seconds)."""

    spans: float
    bytes: float
    at: float


def take_budget(budget: SpanBudget | None, limits: SpanLimits, now: float, spans: int, nbytes: int) -> SpanBudget:
    """The reporter's budget after a call of `spans` spans and `nbytes` bytes at `now`; a first call starts
    from full buckets. ResourceExhausted (the budget unchanged) when either bucket cannot pay."""
    if budget is None:
        budget = SpanBudget(float(limits.span_burst), float(limits.byte_burst), now)
    elapsed = max(0.0, now - budget.at)
    have_spans = min(float(limits.span_burst), budget.spans + elapsed * limits.spans_per_second)
    have_bytes = min(float(limits.byte_burst), budget.bytes + elapsed * limits.bytes_per_second)
    if spans > have_spans or nbytes > have_bytes:
        raise ResourceExhausted(
            f"span reports over this reporter's rate ({limits.spans_per_second:g} spans and "
            f"{limits.bytes_per_second:g} bytes a second, bursts of {limits.span_burst} spans and "
            f"{limits.byte_burst} bytes); retry later")
    return SpanBudget(have_spans - spans, have_bytes - nbytes, now)
