"""`tessera run` end to end over gRPC against FakeMaster (FakeGrpcServer on 127.0.0.1): what it launches,
what it prints, and its exit codes; bad input is one line naming the flag and exit 2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from tessera.control_plane.cli.run import run_command
from tessera.sdk.protocol import AcceptCall
from tessera.sdk.run import RunOptions, run_task
from tessera.sdk.testing import FakeGrpcServer, FakeMaster, StatusStep, runs_and_finishes
from tessera.sdk.types import Launch, TaskInfo, TaskState

pytestmark = pytest.mark.timeout(60)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(run_command, list(args))


@pytest.fixture
def serve() -> Iterator[Callable[[FakeMaster], str]]:
    servers: list[FakeGrpcServer] = []

    def start(fake: FakeMaster) -> str:
        server = FakeGrpcServer(fake).start()
        servers.append(server)
        return server.address

    yield start
    for s in servers:
        s.stop()


def launched(fake: FakeMaster) -> TaskInfo:
    (accept,) = fake.calls_of(AcceptCall)
    (op,) = accept.operations
    assert isinstance(op, Launch)
    return op.tasks[0]


def test_a_finished_task_exits_0_and_prints_its_output_when_the_sandbox_is_readable(
        serve: Callable[[FakeMaster], str], tmp_path: Path) -> None:
    (tmp_path / "stdout").write_text("hello from the task\n")
    fake = FakeMaster(behaviour=lambda t: [TaskState.TASK_RUNNING, StatusStep(
        TaskState.TASK_FINISHED, exit_code=0, message=f"command exited with status 0; sandbox={tmp_path}")])
    fake.add_agent("cpus:1;mem:256", hostname="node-1")
    result = invoke("--masters", serve(fake), "--cpus", "0.5", "--mem", "64", "--env", "A=1", "--",
                    "echo", "hello")
    assert result.exit_code == 0, result.output
    assert "hello from the task" in result.output
    assert "TASK_RUNNING" in result.output and "TASK_FINISHED" in result.output
    task = launched(fake)
    assert task.command == ("echo", "hello") and dict(task.env) == {"A": "1"}
    assert task.resources.scalar("cpus") == 0.5 and task.resources.scalar("mem") == 64
    assert fake.framework().removed  # nothing left behind


def test_uris_take_their_options_from_the_end_of_the_flag(serve: Callable[[FakeMaster], str]) -> None:
    from tessera.sdk.types import CommandURI

    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    result = invoke("--masters", serve(fake), "--uri", "http://127.0.0.1:8000/app.tgz,extract,no-cache",
                    "--uri", "http://127.0.0.1:8000/get?a=1,2,executable,output=tool", "--uri", "file:///srv/x",
                    "--", "./tool")
    assert result.exit_code == 0, result.output
    assert launched(fake).uris == (
        CommandURI("http://127.0.0.1:8000/app.tgz", extract=True, no_cache=True),
        CommandURI("http://127.0.0.1:8000/get?a=1,2", executable=True, output_file="tool"),
        CommandURI("file:///srv/x"))


def test_one_argument_is_a_shell_command_and_missing_output_names_the_agent(
        serve: Callable[[FakeMaster], str]) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256", hostname="node-7")
    result = invoke("--masters", serve(fake), "--", "echo hi && exit 0")
    assert result.exit_code == 0, result.output
    assert launched(fake).command == "echo hi && exit 0"
    assert "sandbox on agent" in result.output and "node-7" in result.output


@pytest.mark.parametrize(("step", "code", "words"), [
    (StatusStep(TaskState.TASK_FAILED, exit_code=3, message="command exited with status 3"), 3, "TASK_FAILED"),
    (StatusStep(TaskState.TASK_FAILED, message="cannot start the command"), 1, "cannot start"),
    (StatusStep(TaskState.TASK_KILLED, exit_code=143, message="task killed (signal SIGTERM)"), 143, "TASK_KILLED"),
    (StatusStep(TaskState.TASK_LOST, reason="REASON_AGENT_REMOVED", message="agent gone"), 1, "TASK_LOST"),
    (StatusStep(TaskState.TASK_ERROR, message="invalid task"), 1, "TASK_ERROR"),
])
def test_an_unsuccessful_task_exits_non_zero_with_one_line_saying_why(
        serve: Callable[[FakeMaster], str], step: StatusStep, code: int, words: str) -> None:
    fake = FakeMaster(behaviour=lambda t: [step])
    fake.add_agent("cpus:1;mem:256")
    result = invoke("--masters", serve(fake), "--", "false")
    assert result.exit_code == code, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("tessera run: task ") and words in last and f"exit {code}" in last


def test_no_master_answering_exits_1_with_one_line() -> None:
    result = invoke("--masters", "127.0.0.1:1", "--connect-timeout", "0.5", "--", "true")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == \
        "tessera run: no master answered at 127.0.0.1:1 within 0.5 s (masters from --masters)"


def test_no_fitting_offer_gives_up_after_the_offer_timeout(serve: Callable[[FakeMaster], str]) -> None:
    fake = FakeMaster()
    fake.add_agent("cpus:0.2;mem:256")
    result = invoke("--masters", serve(fake), "--cpus", "1", "--offer-timeout", "0.5", "--", "true")
    assert result.exit_code == 1
    assert "no offer fitting cpus:1;mem:32 within 0.5 s" in result.output
    assert fake.calls_of(AcceptCall) == []


def test_the_leader_is_found_from_a_follower(serve: Callable[[FakeMaster], str]) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    follower = serve(fake)
    leader = serve(fake)  # the last one started leads
    result = invoke("--masters", follower, "--", "true")
    assert result.exit_code == 0, result.output
    asked = [a for a, _ in fake.subscribe_requests]
    # the follower first, then the leader it names; a loaded machine may see the stream re-subscribe
    # (at the leader, never back at the follower)
    assert asked[:2] == [follower, leader] and set(asked[2:]) <= {leader}, asked


@pytest.mark.parametrize(("args", "message"), [
    (["--cpus", "0", "--", "true"], "tessera run: --cpus: must be a positive number, got 0"),
    (["--cpus", "-1", "--", "true"], "tessera run: --cpus: must be a positive number, got -1"),
    (["--cpus", "lots", "--", "true"], "tessera run: --cpus: expected a number, got 'lots'"),
    (["--mem", "nan", "--", "true"], "tessera run: --mem: must be a positive number, got nan"),
    (["--cpus", "1"], "tessera run: nothing to run: give a command after --, e.g. tessera run -- echo hello"),
    (["--", "  "], "tessera run: nothing to run: give a command after --, e.g. tessera run -- echo hello"),
    (["--env", "NOVALUE", "--", "true"], "tessera run: --env: expected KEY=VALUE, got 'NOVALUE'"),
    (["--masters", "nohost", "--", "true"], "tessera run: --masters: expected HOST:PORT, got 'nohost'"),
    (["--publish", "8080", "--", "true"], "tessera run: --publish: only a container task (--image) has one"),
    (["--image", "busybox", "--network", "overlay"],
     "tessera run: Invalid value for '--network': 'overlay' is not one of 'bridge', 'host', 'none'. "
     "(see run --help)"),
    (["--image", "busybox", "--publish", "http"],
     "tessera run: --publish: expected a container port (1-65535), optionally /tcp or /udp, got 'http'"),
    (["--image", "busybox", "--network", "host", "--publish", "80"],
     "tessera run: --publish: only the bridge network publishes ports (--network is host)"),
    (["--image", "busybox", "--volume", "/only-one-part"],
     "tessera run: --volume: expected HOST_PATH:CONTAINER_PATH[:ro|rw], got '/only-one-part'"),
    (["--uri", "ftp://127.0.0.1/tool", "--", "true"],
     "tessera run: --uri: uris[0].value: the scheme 'ftp' is not supported (only http, https, file)"),
    (["--uri", "http://127.0.0.1/data.bin,extract", "--", "true"],
     "tessera run: --uri: uris[0].extract: cannot tell the archive type of 'data.bin' from its name (.tar.gz, "
     ".tgz, .tar.bz2, .tbz2, .tar.xz, .txz, .tar, .zip); name it with output_file"),
])
def test_bad_input_is_one_line_naming_the_flag_and_exit_2(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.output.strip() == message


def test_run_task_works_over_the_in_memory_transport_too() -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    code = run_task(RunOptions(command=("true",), masters=tuple(fake.addresses)), transport=fake.transport(),
                    out=Sink(), err=Sink())  # type: ignore[arg-type]
    assert code == 0
    assert any("TASK_FINISHED" in line for line in lines)


def test_run_command_is_a_click_command_named_run() -> None:
    assert isinstance(run_command, click.Command) and run_command.name == "run"


def test_registered_in_a_group_it_takes_the_groups_masters(serve: Callable[[FakeMaster], str]) -> None:
    fake = FakeMaster(behaviour=runs_and_finishes)
    fake.add_agent("cpus:1;mem:256")
    address = serve(fake)

    @click.group(context_settings={"auto_envvar_prefix": "TESSERA"})
    @click.option("--masters", default="127.0.0.1:5050")
    def tessera(masters: str) -> None:
        """Like tessera.control_plane.cli.main's group."""

    tessera.add_command(run_command)
    result = CliRunner().invoke(tessera, ["--masters", address, "run", "--", "true"])
    assert result.exit_code == 0, result.output
    assert [a for a, _ in fake.subscribe_requests] == [address]


def test_a_container_task_takes_its_host_ports_from_the_offer() -> None:
    from tessera.control_plane.core.resources import Resources
    from tessera.sdk.run import _with_host_ports
    from tessera.sdk.types import ContainerInfo, Offer, PortMapping, TaskInfo

    task = TaskInfo(task_id="web", resources=Resources.of(cpus=0.1, mem=32),
                    container=ContainerInfo(image="busybox", port_mappings=[PortMapping(8080, 0),
                                                                            PortMapping(53, 0, "udp")]))
    offer = Offer(offer_id="o1", agent_id="a1", resources=Resources.of(cpus=1, mem=256,
                                                                       ports=[(31000, 31000), (31007, 31009)]))
    placed = _with_host_ports(task, offer)
    assert placed.container is not None
    assert [(m.container_port, m.host_port, m.protocol) for m in placed.container.port_mappings] == [
        (8080, 31000, "tcp"), (53, 31007, "udp")]
    assert offer.fits(placed.resources) and placed.resources.range_count("ports") == 2
    too_few = Offer(offer_id="o2", agent_id="a1", resources=Resources.of(cpus=1, mem=256, ports=[(31000, 31000)]))
    assert _with_host_ports(task, too_few) is task  # no fitting ports: the task is not placed there
