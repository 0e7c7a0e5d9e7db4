"""Invariants of the master state, checked from first principles.

`check_invariants(state)` recomputes every cached sum and index of `ClusterState` from the records
themselves and compares, and checks the safety properties the whole design rests on:

- no agent is over-committed: used + offered <= total, per resource name and reservation role;
- nothing is given twice: offers do not overlap each other nor the tasks on their agent (range resources
  such as ports are compared interval by interval, since a sum would merge an overlap away);
- every task and offer names a known agent and a known framework, and is indexed by both;
- offers exist only for connected frameworks on active agents;
- an agent's `offered` is the sum of its offers and its `used` the sum of its non-terminal tasks (the
  same per framework, in scalar quantities); its `total` is what it reported with its dynamic
  reservations applied;
- tasks on an unreachable agent are unreachable or ended, tasks on a removed agent have ended, and no task
  is left unreachable on a reachable agent;
- `seq` equals the number of events recorded (recounted from `event_counts`);
- the bounded memories respect their bounds;
- frameworks' key/value state: only frameworks that are not removed have one, none is empty, its size is
  the sum of its entries' (each its key and value in UTF-8), within the limits; versions are seqs already
  recorded, never shared by two keys; and no two frameworks a standby created share (principal, name).

It returns a list of human-readable problems (empty: all good) and never raises, so simulations and
tests can call it after every step and print everything that is wrong at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from tessera.control_plane.core.limits import MAX_STATE_BYTES, MAX_STATE_KEYS, utf8_length
from tessera.control_plane.core.resources import EMPTY, Resources
from tessera.control_plane.core.state import ClusterState, scalar_part, total_with_reservations
from tessera.control_plane.core.values import AgentState, FrameworkState, TaskKey, TaskState

__all__ = ["check_invariants"]


def check_invariants(state: ClusterState) -> list[str]:
    problems: list[str] = []
    try:
        _check(state, problems)
    except Exception as exc:  # noqa: BLE001 - a broken state must be reported, not crash the checker
        problems.append(f"invariant checker failed on a malformed state: {exc!r}")
    return problems


def _sum(bags: Iterable[Resources]) -> Resources:
    total = EMPTY
    for bag in bags:
        total = total + bag
    return total


def _overlaps(labelled: list[tuple[str, Resources]]) -> list[str]:
    """Pairs of bags that share a range value (e.g. the same port)."""
    with_ranges = [(label, bag) for label, bag in labelled if bag.ranges]
    found = []
    for i, (a_label, a) in enumerate(with_ranges):
        for b_label, b in with_ranges[i + 1:]:
            if a.intersects(b):
                found.append(f"{a_label} and {b_label}")
    return found


def _check(state: ClusterState, problems: list[str]) -> None:
    add = problems.append

    # ---- numbering and bounded memories ------------------------------------------------------------
    counted = sum(state.event_counts.values())
    if state.seq != counted:
        add(f"seq is {state.seq} but {counted} events were recorded")
    for name, memory, limit in (
        ("requests", state.requests, state.request_limit),
        ("completed_tasks", state.completed_tasks, state.completed_tasks_limit),
        ("retired_offers", state.retired_offers, state.retired_offers_limit),
    ):
        if len(memory) > limit:
            add(f"{name} holds {len(memory)} entries, over its bound {limit}")

    # ---- offers ------------------------------------------------------------------------------------
    for offer_id, offer in sorted(state.offers.items()):
        if offer.offer_id != offer_id:
            add(f"offer {offer_id} is stored under the wrong id {offer.offer_id}")
        if offer_id in state.retired_offers:
            add(f"offer {offer_id} is both live and retired")
        agent = state.agents.get(offer.agent_id)
        fw = state.frameworks.get(offer.framework_id)
        if agent is None:
            add(f"offer {offer_id} is on unknown agent {offer.agent_id}")
        else:
            if agent.state is not AgentState.AGENT_ACTIVE:
                add(f"offer {offer_id} is on agent {agent.agent_id}, which is {agent.state.name}")
            if offer_id not in agent.offer_ids:
                add(f"offer {offer_id} is missing from agent {agent.agent_id}'s offers")
        if fw is None:
            add(f"offer {offer_id} is for unknown framework {offer.framework_id}")
        else:
            if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
                add(f"offer {offer_id} is for framework {fw.framework_id}, which is {fw.state.name}")
            if offer_id not in fw.offer_ids:
                add(f"offer {offer_id} is missing from framework {fw.framework_id}'s offers")
            if offer.role not in fw.info.roles:
                add(f"offer {offer_id} is for role {offer.role}, not one of framework {fw.framework_id}'s")
        if not offer.resources:
            add(f"offer {offer_id} offers nothing")
        if offer.resources.allocatable_to(offer.role) != offer.resources:
            add(f"offer {offer_id} holds resources reserved to a role other than {offer.role}")

    # ---- tasks -------------------------------------------------------------------------------------
    for key, task in sorted(state.tasks.items()):
        task_id = str(key)  # framework/task: task ids are scoped per framework
        if not isinstance(key, TaskKey) or task.key != key:
            add(f"task {task_id} is stored under the wrong key {task.key}")
        if key in state.completed_tasks:
            add(f"task {task_id} is both live and completed")
        if task.state is TaskState.TASK_STATE_UNKNOWN:
            add(f"task {task_id} is in TASK_STATE_UNKNOWN")
        if task.terminal and not task.unacknowledged:
            add(f"task {task_id} ended and is acknowledged but was not moved to completed tasks")
        if len(task.applied_uuids) != len(set(task.applied_uuids)):
            add(f"task {task_id} recorded a status uuid twice")
        for status in task.unacknowledged:
            if not status.uuid:
                add(f"task {task_id} waits for an ack of a status without uuid")
            elif status.uuid not in task.applied_uuids:
                add(f"task {task_id} waits for an ack of {status.uuid}, which it never applied")
        if task.last_status is not None and task.last_status.state != task.state:
            add(f"task {task_id} is {task.state.name} but its last status says {task.last_status.state.name}")
        agent = state.agents.get(task.agent_id)
        fw = state.frameworks.get(task.framework_id)
        if agent is None:
            add(f"task {task_id} is on unknown agent {task.agent_id}")
        else:
            if key not in agent.task_keys:
                add(f"task {task_id} is missing from agent {agent.agent_id}'s tasks")
            if agent.state is AgentState.AGENT_UNREACHABLE and not task.terminal and (
                task.state is not TaskState.TASK_UNREACHABLE
            ):
                add(f"task {task_id} is {task.state.name} on unreachable agent {agent.agent_id}")
            if agent.state is AgentState.AGENT_REMOVED and not task.terminal:
                add(f"task {task_id} is {task.state.name} on removed agent {agent.agent_id}")
            if agent.reachable and task.state is TaskState.TASK_UNREACHABLE:
                add(f"task {task_id} is unreachable on reachable agent {agent.agent_id}")
        if fw is None:
            add(f"task {task_id} belongs to unknown framework {task.framework_id}")
        else:
            if task.task_id not in fw.task_ids:
                add(f"task {task_id} is missing from framework {fw.framework_id}'s tasks")
            if fw.state is FrameworkState.FRAMEWORK_REMOVED and task.unacknowledged:
                add(f"task {task_id} waits for acks from removed framework {fw.framework_id}")
    for key, task in state.completed_tasks.items():
        task_id = str(key)
        if not isinstance(key, TaskKey) or task.key != key:
            add(f"completed task {task_id} is stored under the wrong key {task.key}")
        if not task.terminal:
            add(f"completed task {task_id} is {task.state.name}, not terminal")
        if task.unacknowledged:
            add(f"completed task {task_id} still waits for acks")

    # ---- agents --------------------------------------------------------------------------------------
    for agent_id, agent in sorted(state.agents.items()):
        label = f"agent {agent_id}"
        if agent.info.agent_id != agent_id:
            add(f"{label} is stored under the wrong id {agent.info.agent_id}")
        tasks = []
        for key in sorted(agent.task_keys):
            listed = state.tasks.get(key)
            if listed is None:
                add(f"{label} lists task {key}, which is not live")
            elif listed.agent_id != agent_id:
                add(f"{label} lists task {key} of agent {listed.agent_id}")
            else:
                tasks.append(listed)
        offers = []
        for offer_id in sorted(agent.offer_ids):
            held = state.offers.get(offer_id)
            if held is None:
                add(f"{label} lists offer {offer_id}, which is not live")
            elif held.agent_id != agent_id:
                add(f"{label} lists offer {offer_id} of agent {held.agent_id}")
            else:
                offers.append(held)
        running = [t for t in tasks if not t.terminal]
        used = _sum(t.resources for t in running)
        offered = _sum(o.resources for o in offers)
        if agent.used != used:
            add(f"{label}: used is {agent.used} but its non-terminal tasks use {used}")
        if agent.offered != offered:
            add(f"{label}: offered is {agent.offered} but its offers sum to {offered}")
        try:
            expected_total = total_with_reservations(agent.info.resources, agent.reserved)
        except Exception:  # noqa: BLE001 - reported as a problem
            add(f"{label}: its reservations {agent.reserved} do not fit what it reported")
        else:
            if agent.total != expected_total:
                add(f"{label}: total is {agent.total}, expected {expected_total} from info and reservations")
        if not agent.total.contains(used + offered):
            add(f"{label} is over-committed: used {used} + offered {offered} > total {agent.total}")
        for pair in _overlaps([(f"task {t.task_id}", t.resources) for t in running]
                              + [(f"offer {o.offer_id}", o.resources) for o in offers]):
            add(f"{label}: {pair} share range resources")
        if agent.state is AgentState.AGENT_REMOVED and running:
            add(f"{label} is removed but still has running tasks")
        if agent.reachable and agent.draining != (agent.state is AgentState.AGENT_DRAINING):
            add(f"{label} is {agent.state.name} but its draining flag is {agent.draining}")
        if agent.state is AgentState.AGENT_STATE_UNKNOWN:
            add(f"{label} is in AGENT_STATE_UNKNOWN")

    # ---- frameworks ----------------------------------------------------------------------------------
    streams: dict[str, str] = {}
    for framework_id, fw in sorted(state.frameworks.items()):
        label = f"framework {framework_id}"
        if fw.info.framework_id != framework_id:
            add(f"{label} is stored under the wrong id {fw.info.framework_id}")
        tasks = [state.tasks[k] for k in sorted(TaskKey(framework_id, t) for t in fw.task_ids) if k in state.tasks]
        if len(tasks) != len(fw.task_ids):
            add(f"{label} lists tasks that are not live")
        offers = [state.offers[o] for o in sorted(fw.offer_ids) if o in state.offers]
        if len(offers) != len(fw.offer_ids):
            add(f"{label} lists offers that are not live")
        if any(t.framework_id != framework_id for t in tasks) or any(o.framework_id != framework_id for o in offers):
            add(f"{label} lists tasks or offers of another framework")
        used = _sum(scalar_part(t.resources) for t in tasks if not t.terminal)
        offered = _sum(scalar_part(o.resources) for o in offers)
        if fw.used != used:
            add(f"{label}: used is {fw.used} but its non-terminal tasks use {used}")
        if fw.offered != offered:
            add(f"{label}: offered is {fw.offered} but its offers sum to {offered}")
        if not fw.suppressed_roles <= set(fw.info.roles):
            add(f"{label} suppresses roles it is not subscribed to")
        connected = fw.state is FrameworkState.FRAMEWORK_CONNECTED
        if connected != bool(fw.stream_id):
            add(f"{label} is {fw.state.name} with stream id {fw.stream_id!r}")
        if fw.stream_id:
            if fw.stream_id in streams:
                add(f"{label} shares stream {fw.stream_id} with framework {streams[fw.stream_id]}")
            streams[fw.stream_id] = framework_id
        if fw.state is FrameworkState.FRAMEWORK_STATE_UNKNOWN:
            add(f"{label} is in FRAMEWORK_STATE_UNKNOWN")

    # ---- leases and key/value state ------------------------------------------------------------------
    named: dict[tuple[str, str], str] = {}
    for framework_id, fw in sorted(state.frameworks.items()):
        if fw.by_name and fw.state is not FrameworkState.FRAMEWORK_REMOVED:
            owner_name = (fw.info.principal, fw.info.name)
            if owner_name in named:
                add(f"frameworks {named[owner_name]} and {framework_id} share the name {owner_name[1]!r} of "
                    f"principal {owner_name[0]!r}")
            named[owner_name] = framework_id
        if fw.lease_term < 0:
            add(f"framework {framework_id} has lease term {fw.lease_term}")
    versions: dict[int, str] = {}
    for framework_id, table in sorted(state.framework_state.items()):
        label = f"framework {framework_id}'s state"
        fw = state.frameworks.get(framework_id)
        if fw is None or fw.state is FrameworkState.FRAMEWORK_REMOVED:
            add(f"{label} is kept, but the framework is unknown or removed")
        if not table.entries:
            add(f"{label} is kept empty")
        size = 0
        for state_key, entry in sorted(table.entries.items()):
            if entry.size != utf8_length(state_key) + utf8_length(entry.value):
                add(f"{label}: key {state_key!r} has size {entry.size}, not that of its key and value")
            if not 0 < entry.version <= state.seq:
                add(f"{label}: key {state_key!r} has version {entry.version}, not a recorded seq (1..{state.seq})")
            elif entry.version in versions:
                add(f"{label}: key {state_key!r} shares version {entry.version} with {versions[entry.version]}")
            versions[entry.version] = f"{framework_id}/{state_key}"
            size += entry.size
        if table.size != size:
            add(f"{label}: size is {table.size} but its entries sum to {size}")
        if len(table.entries) > MAX_STATE_KEYS or size > MAX_STATE_BYTES:
            add(f"{label}: {len(table.entries)} keys of {size} bytes, over the limits")

    # ---- policy and filters --------------------------------------------------------------------------
    for (framework_id, agent_id), _until in sorted(state.decline_filters.items()):
        fw = state.frameworks.get(framework_id)
        agent = state.agents.get(agent_id)
        if fw is None or fw.state is FrameworkState.FRAMEWORK_REMOVED:
            add(f"decline filter for framework {framework_id}, which is unknown or removed")
        if agent is None or agent.state is AgentState.AGENT_REMOVED:
            add(f"decline filter for agent {agent_id}, which is unknown or removed")
    for role, info in sorted(state.roles.items()):
        if info.role != role:
            add(f"role {role} is stored under the wrong name {info.role}")
        if not info.weight > 0:
            add(f"role {role} has weight {info.weight}")
        if info.quota_limit and not info.quota_limit.contains(info.quota_guarantee):
            add(f"role {role}: quota limit {info.quota_limit} is below its guarantee {info.quota_guarantee}")

