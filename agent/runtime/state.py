"""The agent's state, owned by its loop: every field the agent keeps, in one place, and the one way out.

The agent (`Agent` in `agent.py`) is one thread that owns every piece of agent state and reacts to
events. Its behaviour is split by what it does, each part a layer over the one below it, all working on
the state declared here:

    AgentState   (state.py)         the fields; `send`: nothing leaves before the checkpoint holds it
    UpdatePump   (updates.py)       status updates: recorded, sent, re-sent, acknowledged
    TaskRunner   (launches.py)      RunTask, KillTask, watching supervisors, sandbox GC, usage
    Recovery     (recovery.py)      rebuilding the tasks and updates from the checkpoint at start
    Agent        (agent.py)         the loop, the registration protocol on the master link, timers

What the agent announces about itself is `registration.py`; the link to the masters is `link.py`.
Every method runs on the loop's thread (only `Agent.post`/`stop` are called from others), so nothing
here needs a lock, and the checkpoint, the launcher and the pure core (`TaskTable`,
`StatusUpdateManager`) have exactly one user.
"""

from __future__ import annotations

import queue
import time
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message
from opentelemetry import trace

from tessera.agent.checkpoint import Checkpoint
from tessera.agent.config import ResolvedConfig
from tessera.agent.core.status_updates import RetryPolicy, StatusUpdateManager
from tessera.agent.core.tasks import AgentTask, TaskTable
from tessera.agent.executor.images import Image, Images
from tessera.agent.executor.launcher import LaunchError, LaunchHandle, Observation, Usage
from tessera.agent.files.catalog import SandboxCatalog
from tessera.agent.runtime.link import LinkEvent, LinkStream, MasterLink
from tessera.agent.runtime.registration import NO_CONTAINERS, advertise
from tessera.control_plane.core.values import ContainerSupport, TaskInfo, TaskKey
from tessera.control_plane.tracing import get_tracer
from tessera.v1 import agent_pb2


class Launcher(Protocol):
    """What the agent needs from a launcher (`ProcessLauncher`, or a scripted twin in tests)."""

    agent_id: str

    def prepare(self, info: TaskInfo, image: Image | None = None) -> LaunchHandle: ...
    def start(self, info: TaskInfo, handle: LaunchHandle) -> LaunchHandle: ...
    def start_many(self, launches: list[tuple[TaskInfo, LaunchHandle]]) -> list[LaunchHandle | LaunchError]: ...
    def observe(self, handle: LaunchHandle) -> Observation: ...
    def kill(self, handle: LaunchHandle, grace_period: float, shutdown_delay: float = 0.0) -> None: ...
    def release(self, handle: LaunchHandle) -> None: ...
    def usage(self, handle: LaunchHandle) -> Usage | None: ...
    def handle_from_checkpoint(self, task_id: str, framework_id: str, sandbox: str, supervisor_pid: int,
                               supervisor_start: float, isolation: dict[str, Any],
                               kill_requested: bool) -> LaunchHandle: ...
    def watch_exits(self, listener: Callable[[int], None] | None) -> None: ...
    def cleanup_containers(self, live: list[LaunchHandle]) -> list[str]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Stop:
    """Posted to stop the loop (signals, tests)."""

    reason: str = ""


@dataclass(frozen=True)
class ImagePulled:
    """Posted by a pull (from its own thread) when a container task's image is in the store, or not."""

    key: TaskKey
    image: Image | None
    error: str = ""


@dataclass(frozen=True)
class SupervisorExited:
    """Posted by the launcher (from its own thread) when a task's supervisor exited: look at it now."""

    pid: int


class AgentState:
    """The fields of the agent, all owned by its loop's thread (see the module docstring)."""

    def __init__(self, config: ResolvedConfig, checkpoint: Checkpoint, launcher: Launcher, *,
                 isolator_name: str = "", images: Images | None = None,
                 containers: ContainerSupport = NO_CONTAINERS, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 new_uuid: Callable[[], str] = lambda: str(uuidlib.uuid4()),
                 tracer_provider: trace.TracerProvider | None = None, catalog: SandboxCatalog | None = None,
                 files_address: str = "") -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.launcher = launcher
        self.isolator_name = isolator_name
        # what every Register announces
        self.advertisement = advertise(config, isolator_name, containers, files_address)
        # what the file service may serve (docs/files.md): kept in step with the tasks by this loop only
        self.catalog = catalog if catalog is not None else SandboxCatalog()
        # Container tasks: the image store (None: this agent runs none; `containers.unavailable` says why),
        # the pulls under way (off the loop, in `pulls`), the image each prepared task uses (for the GC).
        self.images = images if containers.runtime else None
        self.containers = containers
        self.pulls: ThreadPoolExecutor | None = None
        self.pulling: dict[TaskKey, str] = {}
        self.image_digests: dict[TaskKey, str] = {}
        self.monotonic = monotonic
        self.wall = wall
        self.new_uuid = new_uuid
        # SimpleQueue: `put` is reentrant, so `stop()` may be called from a signal handler that
        # interrupted this very thread inside `get`.
        self.inbox: queue.SimpleQueue[LinkEvent | Stop | SupervisorExited | ImagePulled] = queue.SimpleQueue()
        # Every per-task table is keyed by TaskKey(framework_id, task_id): task ids are scoped per
        # framework, so two frameworks may each run a `web-1` here.
        self.tasks = TaskTable()
        self.handles: dict[TaskKey, LaunchHandle] = {}
        self.to_start: list[tuple[AgentTask, TaskInfo, LaunchHandle]] = []  # prepared in this turn
        self.traceparents: dict[TaskKey, str] = {}
        # the global provider when None; the scope keeps the name it had before the agent was split
        self.tracer = get_tracer("tessera.agent.runtime.agent", tracer_provider)
        self.run_spans: dict[TaskKey, trace.Span] = {}  # task -> its `task.run` span, ended at the terminal status
        cfg = config.config
        self.updates = StatusUpdateManager(RetryPolicy(initial=cfg.status_retry_initial, maximum=cfg.status_retry_max))
        self.agent_id = checkpoint.agent_id
        self.highest_term = checkpoint.highest_term
        launcher.agent_id = self.agent_id
        self.stream: LinkStream | None = None
        self.registered = False
        self.ordered_streams = False  # the master's Registered: send a task's whole pending stream at once
        self.reported: dict[TaskKey, str] = {}  # task -> uuid of the status reported at re-registration
        self.reregistering = False
        self.heartbeat_interval = config.heartbeat_interval
        self.last_received = 0.0  # monotonic: the last message from the master on `stream` (or its opening)
        self.last_alive = 0.0  # monotonic: when the master last heard we live on `stream` (Register, heartbeat)
        self.next_heartbeat = 0.0
        self.next_observe = 0.0
        self.next_usage = 0.0
        self.next_prune = 0.0
        self.next_gc = 0.0
        self.shutdown_deadline: float | None = None
        self.exit_code: int | None = None
        self.link: MasterLink | None = None
        self.registrations = 0  # Registered answers received (tests and logs)
        # Tasks of a previous incarnation the master forgot (NOT_FOUND): killed, never reported again.
        self.orphaned: set[TaskKey] = set()

    def send(self, message: Message) -> bool:
        stream = self.stream
        if stream is None:
            return False
        assert isinstance(message, agent_pb2.AgentMessage)
        self.checkpoint.sync()  # nothing leaves before what was decided is on disk
        return stream.send(message)
