"""Benchmark: what mTLS and the token/ACL checks cost per call (not part of the test run).

    python tests/bench/bench_security.py [--calls 300] [--connects 30] [--rounds 3]

In one run, two single-master clusters on 127.0.0.1 side by side: one plaintext (`--insecure-dev`), one
with mTLS, an ACL and a bearer token. Calls alternate between them in small blocks so machine noise hits
both alike. Measured per mode: a read (GetState, no Raft), a write (SetWeight, through Raft and the event
log), and a new connection (channel + TLS handshake + first GetState). Prints p50/p99 in ms and the ratio
secure/plaintext of the medians, with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tessera.control_plane.certs import init_dev_pki  # noqa: E402
from tessera.control_plane.tls import ClientSecurity, read_token_file  # noqa: E402
from tessera.v1 import operator_pb2, operator_pb2_grpc  # noqa: E402
from tests.support.cluster import free_port, wait_for  # noqa: E402


def machine() -> str:
    return (f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}")


def start_master(root: Path, name: str, flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    grpc_address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(TESSERA_RAFT_PASSWORD="bench-secret", PYTHONUNBUFFERED="1")
    log = open(root / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tessera.control_plane.cli.main", "master", "--name", name,
                             "--raft", f"127.0.0.1:{free_port()}", "--grpc", grpc_address,
                             "--data-dir", str(root / name), *flags],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    log.close()
    return proc, grpc_address


def timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000.0


def connect_and_read(address: str, security: ClientSecurity) -> None:
    with security.channel(address) as ch:
        operator_pb2_grpc.OperatorStub(ch).GetState(operator_pb2.GetStateRequest(), timeout=10,
                                                    metadata=security.metadata)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="reads and writes per mode and round")
    parser.add_argument("--connects", type=int, default=30, help="new connections per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"command: python tests/bench/bench_security.py --calls {args.calls} --connects {args.connects} "
          f"--rounds {args.rounds}")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = root / "pki"
        init_dev_pki(pki)
        plain_proc, plain_addr = start_master(root, "plain", ["--insecure-dev"])
        secure_proc, secure_addr = start_master(root, "secure", ["--tls-dir", str(pki / "master"),
                                                                 "--acl", str(pki / "acl.toml")])
        modes = {
            "plaintext": (plain_addr, ClientSecurity.insecure()),
            "mTLS+token": (secure_addr, ClientSecurity.from_options(
                pki / "operator", read_token_file(pki / "tokens" / "operator.token"))),
        }
        try:
            stubs = {}
            for mode, (address, security) in modes.items():
                stub = operator_pb2_grpc.OperatorStub(security.channel(address))
                md = security.metadata

                def leads(stub: operator_pb2_grpc.OperatorStub = stub, md: tuple[tuple[str, str], ...] = md) -> bool:
                    try:
                        return bool(stub.GetQuorum(operator_pb2.GetQuorumRequest(), timeout=2, metadata=md).leader)
                    except Exception:  # noqa: BLE001 - not up yet
                        return False

                wait_for(leads, timeout=60, what=f"the {mode} master to lead")
                stubs[mode] = (stub, md)
            results: dict[str, dict[str, list[float]]] = {m: {"read": [], "write": [], "connect": []} for m in modes}
            weight = 1.0
            for _ in range(args.rounds):
                for _block in range(args.calls // 10):
                    for mode, (stub, md) in stubs.items():
                        for _i in range(10):
                            results[mode]["read"].append(timed(
                                stub.GetState, operator_pb2.GetStateRequest(), timeout=10, metadata=md))
                            weight += 0.001
                            results[mode]["write"].append(timed(
                                stub.SetWeight, operator_pb2.SetWeightRequest(role="bench", weight=weight),
                                timeout=10, metadata=md))
                for _c in range(args.connects):
                    for mode, (address, security) in modes.items():
                        results[mode]["connect"].append(timed(connect_and_read, address, security))
        finally:
            for proc in (plain_proc, secure_proc):
                proc.kill()
                proc.wait(timeout=10)
    print(f"{'call':8} {'mode':11} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for kind in ("read", "write", "connect"):
        for mode in modes:
            v = results[mode][kind]
            print(f"{kind:8} {mode:11} {len(v):5d} {statistics.median(v):8.2f} {pct(v, 0.99):8.2f}")
        ratio = statistics.median(results["mTLS+token"][kind]) / statistics.median(results["plaintext"][kind])
        print(f"{kind:8} ratio mTLS+token/plaintext of the medians: {ratio:.2f}")


if __name__ == "__main__":
    main()
