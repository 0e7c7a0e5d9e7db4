"""What the service controller does next for one app (pure): scale, replace, roll a new version.

`plan(app, instances, failures)` looks at the app's instances (each with its version and whether it is
ready: running and, with a health check, healthy) and returns a `Step`: how many instances of the app's
current version to launch and which instances to kill, and whether the deployment is done or failed.

Rolling deployments keep Marathon's two bounds: at least `minimumHealthCapacity × instances` ready
instances at every moment (`min_ready`), and at most `instances + maximumOverCapacity × instances` in all
(`max_total`), counting the instances asked to stop until they end (they hold their resources and ports
while they drain and stop, and a kill sent to a reconnecting agent can be lost and sent again). Old-version instances that are not ready are killed at once (they serve nobody); ready
old ones only while the ready count stays at or above `min_ready`; new ones are launched while the total
stays within `max_total`. Where the two bounds leave no move at all (`min_ready` = `max_total`, e.g. one
instance with 0.25/0), one old instance is stopped anyway, as Marathon does. A scale down kills the
instances that are not ready first, then the newest. A deployment is done when every instance is of the
current version and ready, and the ones asked to stop have ended.

A deployment fails — it stops launching the new version, keeps what runs and says why — when instances of
the new version failed `failure_limit(app)` times in a row since it started (a version that cannot start or
never becomes healthy must not replace a working one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.sdk.services.app import App

__all__ = ["Instance", "Step", "failure_limit", "plan"]


@dataclass(frozen=True)
class Instance:
    task_id: str
    version: str
    ready: bool  # running and, with a health check, healthy
    launched_at: float = 0.0  # for choosing the newest
    killing: bool = False  # a kill was asked for: not ready, but alive (and counted in `max_total`) until it ends


@dataclass(frozen=True)
class Step:
    launch: int = 0
    kill: tuple[str, ...] = ()
    done: bool = False
    failed: str = ""  # why the deployment stopped ("" while it goes on or is done)


def failure_limit(app: App) -> int:
    """Consecutive failures of the new version that fail a deployment."""
    return max(3, app.instances)


def plan(app: App, instances: Sequence[Instance], failures: int = 0) -> Step:
    live = [i for i in instances if not i.killing]
    stopping = len(instances) - len(live)  # asked to stop, not ended yet: they hold resources and ports
    new = [i for i in live if i.version == app.version]
    old = [i for i in live if i.version != app.version]
    wanted = app.instances
    if failures >= failure_limit(app) and old:
        return Step(failed=f"{failures} instances of version {app.version} failed in a row; the deployment "
                           f"stopped with {len(old)} instance(s) of the previous version running")
    min_ready = math.ceil(wanted * app.upgrade.minimum_health_capacity)
    max_total = wanted + math.floor(wanted * app.upgrade.maximum_over_capacity)
    kill: list[str] = []
    if not old:
        if len(new) > wanted:  # scale down: not ready first, then the newest
            order = sorted(new, key=lambda i: (i.ready, -i.launched_at))
            kill = [i.task_id for i in order[: len(new) - wanted]]
        launch = max(0, min(wanted - len(new), max_total - len(new) - stopping))
        done = len(new) == wanted and all(i.ready for i in new) and not kill and not stopping
        return Step(launch=launch, kill=tuple(kill), done=done)
    ready = sum(1 for i in live if i.ready)
    for i in sorted(old, key=lambda i: (i.ready, i.launched_at)):  # not ready first, then the oldest
        if not i.ready:
            kill.append(i.task_id)
        elif ready - 1 >= min_ready:
            kill.append(i.task_id)
            ready -= 1
    total = len(live) + stopping  # a kill decided now still holds its instance: it counts until it ends
    launch = max(0, min(wanted - len(new), max_total - total))
    if not kill and not launch and not stopping and len(new) < wanted and all(i.ready for i in new):
        # the bounds leave no move (minimum ready = maximum total, e.g. 1 instance at 0.25/0): as Marathon
        # does, stop one old instance anyway, the oldest, and dip below the minimum for one round
        kill.append(min((i for i in old if i.ready), key=lambda i: i.launched_at).task_id)
    return Step(launch=launch, kill=tuple(kill), done=False)
