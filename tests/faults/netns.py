"""Masters and agents as separate hosts: each in its own network namespace with its own address on a
bridge this harness creates, with faults injected on the real network between them.

    hosts = NetnsHosts()                       # cleans leftovers of a crashed run first
    hosts.add("m1"); hosts.add("m2")           # namespace tsr-m1, address 10.213.240.11, ...
    argv = hosts.wrap("m1") + [python, ...]    # `ip netns exec tsr-m1 ...`: same PID, in that namespace
    hosts.cut("m1", "m2", BLACKHOLE)           # iptables DROP both ways inside the namespaces
    hosts.block("m1", "m2")                    # one way: m1's packets to m2 are dropped
    hosts.shape("m1", Shape(delay=0.02, jitter=0.01, loss=0.01))  # delay, jitter, loss of m1's egress
    hosts.slow_disk("m3", iops=50)             # a throttled, synchronously mounted disk for m3's data
    hosts.close()                              # everything removed (also by atexit and SIGTERM/SIGINT)

What is created, all named `tsr-*` and removed by `clean_leftovers()` (run at start, so a run killed
with SIGKILL leaves nothing behind for long): the bridge `tsr-br` with 10.213.240.1/24 (the host's side:
the harness and framework processes reach the masters through it), per host a namespace `tsr-NAME`
and a veth pair (`tsr-NAME` on the bridge, `eth0` inside), iptables rules only *inside* those
namespaces (chains TSR-IN and TSR-OUT; gone with the namespace), the delay processes
(`tests/faults/nfq_delay.py`, one per shaped namespace), and for a slow disk a loop device over
/tmp/tsr-disk-NAME.img mounted at /tmp/tsr-disk-NAME with `-o sync` and a blkio cgroup
/sys/fs/cgroup/blkio/tsr-NAME. Traffic stays on 10.213.240.0/24: no namespace has a default route.

Why not `tc netem` and dm-delay: this kernel is built without CONFIG_NET_SCH_NETEM and without
device-mapper (and has no modules to load), so delay/jitter/loss/reordering are done in user space
through NFQUEUE (CONFIG_NETFILTER_XT_TARGET_NFQUEUE) and the slow disk is cgroup v1 blkio throttling
(CONFIG_BLK_DEV_THROTTLING) of a loop device. One run at a time: an flock on /run/tsr-hosts.lock.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from tests.faults.nfq_delay import Shape
from tests.support.cluster import LocalCluster, stop_process

PREFIX = "tsr-"
SUBNET = ipaddress.IPv4Network("10.213.240.0/24")
BRIDGE = f"{PREFIX}br"
HOST_ADDRESS = "10.213.240.1"
LOCK_PATH = Path("/run/tsr-hosts.lock")
DISK_DIR = Path("/tmp")
BLKIO = Path("/sys/fs/cgroup/blkio")
NETNS_DIR = Path("/run/netns")
BLACKHOLE = "blackhole"
RESET = "reset"
TIMEOUT = 15.0
RAFT_PORT = 7100  # every master has its own address: the same ports everywhere
GRPC_PORT = 7101
NAME_RE = re.compile(r"^[a-z0-9]{1,10}$")  # tsr- + name fits IFNAMSIZ (15)


def run(*argv: str, check: bool = True, timeout: float = TIMEOUT) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def missing_requirements() -> list[str]:
    """What this machine lacks to run the harness, each named with what provides it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (network namespaces, bridges, iptables, loop devices and cgroups need it)")
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("losetup", "mount"),
                          ("mount", "mount"), ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} (Debian package {package})")
    if not (BLKIO / "blkio.throttle.write_iops_device").exists():
        problems.append(f"the cgroup v1 blkio controller at {BLKIO} with throttling (CONFIG_BLK_DEV_THROTTLING)")
    if not Path("/proc/net/netfilter/nfnetlink_queue").exists() and not _kernel_has("NETFILTER_NETLINK_QUEUE"):
        problems.append("nfnetlink queue in the kernel (CONFIG_NETFILTER_NETLINK_QUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE)")
    return problems


def _kernel_has(option: str) -> bool:
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return any(line.startswith(f"CONFIG_{option}=") for line in f)
    except OSError:
        return False


def require_hosts() -> None:
    """Fail (never skip) naming what is missing; .ci/run installs the Debian packages."""
    problems = missing_requirements()
    assert not problems, "the netns hosts harness needs: " + "; ".join(problems)


# ---- what exists now with our prefix (for cleanup and for tests that check it) ---------------------
def namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def links() -> list[str]:
    return sorted(str(link["ifname"]) for link in json.loads(run("ip", "-j", "link", "show") or "[]")
                  if str(link.get("ifname", "")).startswith(PREFIX))


def mounts() -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted(p for p in points if p.startswith(str(DISK_DIR / PREFIX)))


def loop_devices() -> list[str]:
    out = []
    for line in run("losetup", "-n", "-O", "NAME,BACK-FILE", check=False).splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(DISK_DIR / PREFIX)):
            out.append(parts[0])
    return sorted(out)


def cgroups() -> list[str]:
    try:
        return sorted(str(BLKIO / d) for d in os.listdir(BLKIO) if d.startswith(PREFIX))
    except FileNotFoundError:
        return []


def host_rules() -> list[str]:
    """Rules of the host's own tables that mention our prefix or subnet (the harness adds none)."""
    text = run("iptables-save", check=False) if shutil.which("iptables-save") else ""
    return [line for line in text.splitlines() if line.startswith("-A ") and (PREFIX in line or "10.213.240." in line)]


def leftovers() -> list[str]:
    return [*namespaces(), *links(), *mounts(), *loop_devices(), *cgroups(), *host_rules()]


def clean_leftovers() -> None:
    """Remove everything named with the prefix: processes in our namespaces (SIGKILL by PID), the
    namespaces, links, mounts, loop devices, cgroups and image files."""
    for ns in namespaces():
        for pid in run("ip", "netns", "pids", ns, check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        run("ip", "netns", "delete", ns, check=False)
    for name in links():
        run("ip", "link", "delete", name, check=False)
    for group in cgroups():
        for pid in Path(group, "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for point in mounts():
        run("umount", "-l", point, check=False)
    for device in loop_devices():
        run("losetup", "-d", device, check=False)
    for group in cgroups():
        for _ in range(50):  # rmdir succeeds once the killed processes are gone
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)
    for path in DISK_DIR.glob(f"{PREFIX}disk-*"):
        if path.is_dir() and not os.path.ismount(path):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)


# ---- partition rules (pure) -----------------------------------------------------------------------
def cut_rules(peer_ip: str, mode: str, inbound: bool = True, outbound: bool = True) -> list[list[str]]:
    """iptables argv (after `iptables`) run inside one namespace: drop (or reject with a TCP reset) what
    it sends to `peer_ip` and/or what it receives from it."""
    if mode not in (BLACKHOLE, RESET):
        raise ValueError(f"unknown cut mode {mode!r}")
    rules = []
    for wanted, chain, flag in ((outbound, "TSR-OUT", "-d"), (inbound, "TSR-IN", "-s")):
        if not wanted:
            continue
        if mode == RESET:
            rules.append(["-A", chain, flag, peer_ip, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
        rules.append(["-A", chain, flag, peer_ip, "-j", "DROP"])
    return rules


@dataclass
class Host:
    name: str
    ip: str
    shaper: subprocess.Popen[bytes] | None = None
    disk: Path | None = None  # mount point of its slow disk
    cgroup: Path | None = None

    @property
    def netns(self) -> str:
        return PREFIX + self.name


@dataclass
class NetnsHosts:
    """The hosts of one run (see the module docstring). Not thread-safe: one nemesis drives it."""

    work_dir: Path = field(default_factory=lambda: Path("/tmp"))
    hosts: dict[str, Host] = field(default_factory=dict)
    lock_timeout: float = 300.0

    def __post_init__(self) -> None:
        require_hosts()
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK_PATH, "w")  # noqa: SIM115 - held for the run's life
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another netns hosts run holds {LOCK_PATH} for over {self.lock_timeout} s") from None
                time.sleep(0.5)
        self._closed = False
        clean_leftovers()
        atexit.register(self.close)
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{HOST_ADDRESS}/{SUBNET.prefixlen}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        self._next = 11

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    # ---- hosts -------------------------------------------------------------------------------------
    def add(self, name: str) -> Host:
        if not NAME_RE.match(name) or name == "br":
            raise ValueError(f"host name {name!r}: 1-10 lower-case letters and digits, not 'br'")
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        ip = str(SUBNET.network_address + self._next)
        self._next += 1
        host = Host(name, ip)
        ns = host.netns
        run("ip", "netns", "add", ns)
        self.hosts[name] = host
        run("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", ns, "master", BRIDGE, "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/{SUBNET.prefixlen}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        for chain, hook in (("TSR-IN", "INPUT"), ("TSR-OUT", "OUTPUT")):
            self.iptables(name, "-N", chain)
            self.iptables(name, "-A", hook, "-j", chain)
        return host

    def ip(self, name: str) -> str:
        return self.hosts[name].ip

    def wrap(self, name: str) -> list[str]:
        """argv prefix that runs a command in `name`'s namespace (and its slow disk's cgroup), same PID."""
        host = self.hosts[name]
        argv = ["ip", "netns", "exec", host.netns]
        if host.cgroup is not None:
            argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(host.cgroup), *argv]
        return argv

    def iptables(self, name: str, *args: str) -> None:
        run("ip", "netns", "exec", self.hosts[name].netns, "iptables", "-w", "5", *args)

    def place(self, cluster: LocalCluster, slow_disk: Sequence[str] = (), iops: int = 50) -> None:
        """Give every master of `cluster` its own host (its Raft and gRPC ports on that host's address; a
        data directory on a slow disk for the names in `slow_disk`) and run every process the cluster
        starts, masters and agents, in its own namespace (agents get theirs when first started)."""
        for m in cluster.masters:
            host = self.hosts.get(m.name) or self.add(m.name)
            m.raft, m.grpc = f"{host.ip}:{RAFT_PORT}", f"{host.ip}:{GRPC_PORT}"
            if m.name in slow_disk:
                m.data_dir = self.slow_disk(m.name, iops) / "data"
                m.data_dir.mkdir(parents=True, exist_ok=True)
        for m in cluster.masters:
            m.peers = [o.raft for o in cluster.masters if o is not m]
        cluster.wrap = lambda name: self.wrap(name if name in self.hosts else self.add(name).name)

    # ---- partitions --------------------------------------------------------------------------------
    def cut(self, a: str, b: str, mode: str = BLACKHOLE) -> None:
        """Symmetric: nothing passes between a and b (in either namespace's rules, both directions)."""
        for here, there in ((a, b), (b, a)):
            for rule in cut_rules(self.ip(there), mode):
                self.iptables(here, *rule)

    def block(self, src: str, dst: str, mode: str = BLACKHOLE) -> None:
        """One way: what `src` sends to `dst` is lost; what `dst` sends to `src` arrives."""
        for rule in cut_rules(self.ip(dst), mode, inbound=False):
            self.iptables(src, *rule)

    def isolate(self, name: str, others: list[str], mode: str = BLACKHOLE, one_way: bool = False) -> None:
        """Cut `name` from every one of `others` (one_way: only what `name` sends is lost)."""
        for other in others:
            if other != name:
                (self.block if one_way else self.cut)(name, other, mode)

    def heal(self) -> None:
        for name in self.hosts:
            self.iptables(name, "-F", "TSR-IN")
            self.iptables(name, "-F", "TSR-OUT")

    # ---- delay, jitter, loss, reordering ----------------------------------------------------------
    def shape(self, name: str, shape: Shape, seed: int = 0) -> None:
        """Every packet `name` sends on eth0 goes through a delay process (tests/faults/nfq_delay.py)."""
        host = self.hosts[name]
        self.unshape(name)
        ready = self.work_dir / f"{host.netns}-shaper.ready"
        ready.unlink(missing_ok=True)
        log = open(self.work_dir / f"{host.netns}-shaper.log", "ab")  # noqa: SIM115 - the child keeps it
        cmd = [*self.wrap(name), sys.executable, "-m", "tests.faults.nfq_delay", "--queue", "0",
               "--delay-ms", str(shape.delay * 1000), "--jitter-ms", str(shape.jitter * 1000),
               "--loss", str(shape.loss), "--reorder", str(shape.reorder), "--seed", str(seed),
               "--stats", str(self.stats_path(name)), "--ready", str(ready)]
        host.shaper = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
        log.close()
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists():
            if host.shaper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the delay process of {name} did not start: see {self.work_dir / (host.netns + '-shaper.log')}")
            time.sleep(0.05)
        self.iptables(name, "-A", "OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")

    def unshape(self, name: str) -> None:
        host = self.hosts[name]
        if host.shaper is None:
            return
        self.iptables(name, "-D", "OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")
        stop_process(host.shaper, grace=5)
        host.shaper = None

    def stats_path(self, name: str) -> Path:
        return self.work_dir / f"{PREFIX}{name}-shaper.json"

    def shaped(self) -> dict[str, int]:
        """Packets seen and dropped by every delay process so far (summed)."""
        total = {"packets": 0, "dropped": 0, "overruns": 0}
        for name in self.hosts:
            try:
                counts = json.loads(self.stats_path(name).read_text())
            except (OSError, ValueError):
                continue
            for key in total:
                total[key] += int(counts.get(key, 0))
        return total

    # ---- a slow disk -------------------------------------------------------------------------------
    def slow_disk(self, name: str, iops: int = 50, size_mib: int = 512) -> Path:
        """A loop-device ext4 mounted with `-o sync` (every write reaches the device at once) whose writes
        are throttled to `iops` for the processes `wrap(name)` starts (blkio cgroup). Returns the mount
        point: put that host's data directory under it."""
        host = self.hosts[name]
        image = DISK_DIR / f"{PREFIX}disk-{name}.img"
        point = DISK_DIR / f"{PREFIX}disk-{name}"
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        device = run("losetup", "--find", "--show", str(image)).strip()
        run("mkfs.ext4", "-q", "-F", device, timeout=60)
        point.mkdir(exist_ok=True)
        run("mount", "-o", "sync", device, str(point))
        major_minor = Path(f"/sys/class/block/{Path(device).name}/dev").read_text().strip()
        group = BLKIO / host.netns
        group.mkdir(exist_ok=True)
        (group / "blkio.throttle.write_iops_device").write_text(f"{major_minor} {iops}\n")
        host.disk, host.cgroup = point, group
        return point

    # ---- the end -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            if host.shaper is not None and host.shaper.poll() is None:
                host.shaper.kill()
                host.shaper.wait(timeout=5)
        clean_leftovers()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> NetnsHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
