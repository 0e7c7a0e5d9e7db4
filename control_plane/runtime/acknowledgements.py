"""Many status acknowledgements from one framework in one call (`Acknowledge` with `updates`).

Each acknowledgement is recorded as if sent alone, and all are committed as one entry
(`Master.propose_each_async`). An unknown task or uuid is answered as refused (the framework stops
acknowledging it); any other refusal (a stale stream, a bad id) fails the whole call, which the
framework may send again as it is: acknowledging twice changes nothing. At most `MAX_ACKNOWLEDGEMENTS`
in one call, which keeps its log entry well under 1 MiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tessera.control_plane.core import commands as cmd
from tessera.control_plane.core.errors import InvalidRequest, NotFound, NotLeader, Unavailable

MAX_ACKNOWLEDGEMENTS = 2_000


def acknowledge_many(master: Any, framework_id: str, stream_id: str, items: Sequence[tuple[str, str]],
                     traceparent: str = "") -> list[tuple[str, str]]:
    """Record the (task id, uuid) acknowledgements of `framework_id`; returns those refused as unknown."""
    if len(items) > MAX_ACKNOWLEDGEMENTS:
        raise InvalidRequest(f"updates: at most {MAX_ACKNOWLEDGEMENTS} acknowledgements in one call")
    if not master.is_serving():
        raise NotLeader("acknowledgements go to the leader", master.leader_grpc_hint())
    if not master.read_state(lambda s: framework_id in s.frameworks):
        raise NotFound(f"framework {framework_id} is not known")
    commands: list[cmd.Command] = [cmd.Acknowledge(framework_id=framework_id, task_id=task_id, uuid=uuid,
                                                   stream_id=stream_id) for task_id, uuid in items]
    future = master.propose_each_async(commands, traceparent=traceparent)
    try:
        outcomes = future.result(timeout=master.commit_timeout + 1.0)
    except TimeoutError as exc:
        raise Unavailable("acknowledgements not committed in time; send them again") from exc
    refused = []
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, NotFound):
            refused.append(item)
        elif outcome is not None:
            raise outcome
    return refused
