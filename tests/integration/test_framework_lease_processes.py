"""The framework lease and key/value state with real processes: three `tessera master` processes and two
instances of one framework (tests/support/standby_framework.py, each its own process on the public SDK).

kill -9 of the active instance: the standby takes over with the next lease term (the time it took is
measured and printed; only a generous deadline is asserted) and finds the state where the other left it;
a write on the deposed instance's stream is refused naming the term. Then the state survives a kill -9 of
the leading master (the active instance keeps its term) and a restart of every master from its data
directory (Raft dump and journal: compaction is set low so a dump exists)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tessera.sdk.errors import Deposed
from tessera.sdk.grpc_transport import GrpcTransport
from tessera.sdk.protocol import CallHeader, WriteValuesCall
from tessera.sdk.types import KvPut
from tessera.v1 import common_pb2, operator_pb2
from tests.support.cluster import LocalCluster, MasterProc, spawn, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MASTER_FLAGS = ["--framework-reconnect-timeout", "5", "--framework-takeover-delay", "1",
                "--raft-compaction-entries", "40"]
SEED = 60
DEADLINE = 60.0  # generous: what is asserted; the takeover time itself is printed


class Instance:
    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.log = cluster.root / f"{name}.log"
        self.proc = spawn([sys.executable, "-m", "tests.support.standby_framework", "--masters",
                           ",".join(cluster.grpc_addresses()), "--name", "services", "--seed", str(SEED)], self.log)

    def lines(self, word: str) -> list[list[str]]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line.split()[1:] for line in text.splitlines() if line.startswith(word + " ")]

    def wait(self, word: str, timeout: float = DEADLINE, count: int = 1) -> list[str]:
        return wait_for(lambda: len(self.lines(word)) >= count and self.lines(word)[count - 1], timeout,
                        what=f"{word} #{count} in {self.log}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)


def framework_state(cluster: LocalCluster, framework_id: str) -> dict[str, tuple[str, int]]:
    client = cluster.client(timeout=30.0)
    try:
        resp = client.call(lambda s: s.GetFrameworkState, operator_pb2.GetFrameworkStateRequest(
            framework_id=framework_id, limit=1000, consistent=True))
    finally:
        client.close()
    assert not resp.more
    return {e.key: (e.value, e.version) for e in resp.entries}


def framework_view(cluster: LocalCluster, framework_id: str) -> operator_pb2.FrameworkView:
    client = cluster.client(timeout=30.0)
    try:
        st = client.call(lambda s: s.GetState, operator_pb2.GetStateRequest(consistent=True))
    finally:
        client.close()
    return next(f for f in st.frameworks if f.framework_id == framework_id)


def stream_of_term(master: MasterProc, framework_id: str, term: int) -> str:
    """The stream the instance holding `term` subscribed on, from the event log."""
    for record in master.list_events():
        if record.type == "FrameworkSubscribed" and record.framework_id == framework_id:
            payload = json.loads(record.payload_json)
            if payload.get("lease_term") == term:
                return str(payload["stream_id"])
    raise AssertionError(f"no FrameworkSubscribed of {framework_id} at lease term {term}")


def test_a_standby_takes_over_after_kill_9_and_the_state_survives_failovers_and_restarts(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, n=3) as cluster:
        cluster.master_flags = MASTER_FLAGS
        cluster.start_all()
        cluster.leader()
        first = Instance(cluster, "first")
        framework_id, term, _ = first.wait("ACTIVE")
        assert term == "1"
        assert first.wait("SEEDED") == [str(SEED)]
        second = Instance(cluster, "second")
        assert second.wait("STANDBY") == [framework_id, "1"]

        old_stream = stream_of_term(cluster.leader(), framework_id, 1)
        first.kill()
        killed_at = time.time()
        took_over = second.wait("ACTIVE")
        print(f"\ntakeover after kill -9 of the active instance: {float(took_over[2]) - killed_at:.2f} s "
              "(standby noticing + takeover delay 1 s + the new subscription)")
        assert took_over[:2] == [framework_id, "2"]
        assert second.wait("SEEDED") == [str(SEED)]

        state = framework_state(cluster, framework_id)
        assert [k for k in state if k.startswith("apps/")] == [f"apps/{n:03d}" for n in range(SEED)]
        assert state["activations"][0] == "2" and state["seeded"][0] == str(SEED)
        assert state["holder"][0].endswith(" 2")

        transport = GrpcTransport()
        try:
            with pytest.raises(Deposed, match="term 2") as refused:
                transport.call(cluster.leader().grpc, CallHeader(framework_id, old_stream, "from-the-deposed"),
                               WriteValuesCall((KvPut("holder", "the deposed instance"),)), 10.0)
            assert refused.value.lease_term == 2
        finally:
            transport.close()
        assert framework_state(cluster, framework_id) == state

        # the leading master dies: the active instance follows the new leader and keeps its term
        leader = cluster.leader()
        cluster.kill(leader)
        cluster.leader(timeout=30.0)
        wait_for(lambda: framework_view(cluster, framework_id).state == common_pb2.FRAMEWORK_CONNECTED
                 and len(second.lines("SUBSCRIBED")) >= 2, DEADLINE, what="the active instance to resubscribe")
        view = framework_view(cluster, framework_id)
        assert view.lease_term == 2 and view.state_keys == len(state)
        assert len(second.lines("ACTIVE")) == 1, "a reconnection at the same term is no new activation"
        assert framework_state(cluster, framework_id) == state
        cluster.start(leader)

        # every master restarts from its data directory (Raft dump and journal)
        cluster.stop_all(signal.SIGKILL)
        dumps = [m.name for m in cluster.masters if (m.data_dir / "raft" / "raft.dump").exists()]
        assert dumps, "no master compacted its Raft log: the dump path was not exercised"
        cluster.start_all()
        cluster.leader(timeout=60.0)
        assert framework_state(cluster, framework_id) == state
        first.kill()
        second.kill()
