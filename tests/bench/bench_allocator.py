"""Allocation round time and memory at 1,000 / 10,000 / 50,000 agents (a benchmark, not a test).

    python tests/bench/bench_allocator.py                     # all sizes, each in its own process
    python tests/bench/bench_allocator.py --sizes 1000 10000  # some sizes
    python tests/bench/bench_allocator.py --one 50000         # one size in this process (used by the above)

The cluster: N agents of cpus:16;mem:65536;disk:102400;ports:[31000-32000] (every tenth also holds a
static reservation of cpus:4;mem:8192 for one role), 200 connected frameworks spread over 10 roles with
weights 1 to 5, and quota guarantees on two roles. It is built through the core's `apply`: one entry of
`RegisterAgent`/`FrameworkSubscribed`/weight/quota events (decide is skipped for speed: it only mints
ids, which the bench chooses itself; apply re-validates every event). Offers are committed the same way.

What is measured, each in the same run:
- `snapshot`: `snapshot_from_state(state, now)` - the baseline every round pays anyway;
- `allocate`: `allocate(snapshot, ...)`, the pure function;
- `Allocator`: `update(snapshot)` + `allocate(...)`, which keeps parsed agents between rounds;
- `naive`: a full-scan weighted DRF without heaps (re-sorts every role and framework, recomputing
  shares from scratch, for every agent), on the same snapshot and without quota (so it does the same
  work as the no-quota part of the real one); only at sizes where it finishes in reasonable time.
Two states: `cold` (every agent free: the round offers all of them, the worst case) and `steady` (90 %
of the agents hold outstanding offers, 10 % are free). Rounds run with the garbage collector as is
(`gc on`), and with it paused during the round (`gc paused`, as a leader loop may choose to do): with
tens of thousands of agents the state is millions of objects and a full collection triggered by the
round's own allocations costs as much as the round. RSS is the process's resident set after building
the state and at its peak, from /proc/self/status.

Two tables: wall time (min/p50/p99 over the runs; with few runs p99 is the maximum) and process CPU time
(p50). On a machine shared with other work the wall clock also counts the time other processes held the
core, so the load average is printed before and after; the CPU time is the reproducible figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere in the repo

from tessera.control_plane.allocation import (  # noqa: E402
    AllocationSnapshot,
    Allocator,
    allocate,
    snapshot_from_state,
)
from tessera.control_plane.allocation.sorter import dominant_share  # noqa: E402
from tessera.control_plane.core import commands as c  # noqa: E402
from tessera.control_plane.core.apply import apply  # noqa: E402
from tessera.control_plane.core.context import Context, sequential_ids  # noqa: E402
from tessera.control_plane.core.decide import decide  # noqa: E402
from tessera.control_plane.core.events import (  # noqa: E402
    AgentRegistered,
    Entry,
    Event,
    FrameworkSubscribed,
    OfferRescinded,
    QuotaSet,
    RoleWeightSet,
)
from tessera.control_plane.core.invariants import check_invariants  # noqa: E402
from tessera.control_plane.core.resources import Resources  # noqa: E402
from tessera.control_plane.core.state import ClusterState  # noqa: E402
from tessera.control_plane.core.values import AgentInfo, FrameworkInfo, Offer  # noqa: E402

NOW = 1_000_000.0
ROLES = [f"role-{r}" for r in range(10)]
FRAMEWORKS = 200
SIZES = (1_000, 10_000, 50_000)
REPEATS = {1_000: 40, 10_000: 15, 50_000: 8}
NAIVE_MAX_AGENTS = 10_000  # the naive scan costs ~ agents x frameworks; at 50k it runs once


# ---- building the state -------------------------------------------------------------------------------
def build_state(agents: int) -> ClusterState:
    state = ClusterState()
    plain = Resources.parse("cpus:16;mem:65536;disk:102400;ports:[31000-32000]")
    events: list[Event] = []
    for i in range(agents):
        resources = plain
        if i % 10 == 0:
            resources = plain + Resources.parse("cpus:4;mem:8192", role=ROLES[i % len(ROLES)])
        agent_id = f"agent-{i:06d}"
        events.append(AgentRegistered(agent_id, AgentInfo(agent_id=agent_id, hostname=f"host-{i}",
                                                          resources=resources, attributes=(("rack", str(i % 40)),))))
    for n, role in enumerate(ROLES):
        events.append(RoleWeightSet(role, 1.0 + n % 5))
    quota = Resources.parse(f"cpus:{agents * 16 // 100};mem:{agents * 65536 // 100}")  # 1 % of the cluster
    events.append(QuotaSet(ROLES[3], quota, Resources()))
    events.append(QuotaSet(ROLES[7], quota, Resources()))
    for f in range(FRAMEWORKS):
        fid = f"framework-{f:03d}"
        info = FrameworkInfo(framework_id=fid, name=f"fw{f}", principal="bench", roles=(ROLES[f % len(ROLES)],))
        events.append(FrameworkSubscribed(fid, info, f"stream-{f:03d}", False))
    result = apply(state, Entry(term=1, leader="bench", time=NOW, events=tuple(events)))
    assert result.outcome == "applied", result.reason
    return state


def commit_offers(state: ClusterState, offers: tuple[Offer, ...]) -> None:
    """decide(IssueOffers) + apply: the core validates every offer of the round."""
    ctx = Context(now=NOW, term=1, leader="bench", new_id=sequential_ids("commit"))
    events = decide(state, c.IssueOffers(offers), ctx)
    result = apply(state, Entry(term=1, leader="bench", time=NOW, events=events))
    assert result.outcome == "applied", result.reason


# ---- the naive baseline ---------------------------------------------------------------------------------
def naive_allocate(snapshot: AllocationSnapshot, new_id: Callable[[str], str]) -> list[Offer]:
    """Weighted DRF by brute force: for every agent, recompute every share and sort everything."""
    totals: dict[str, int] = {}
    for (name, _), milli in snapshot.total.scalars:
        totals[name] = totals.get(name, 0) + milli
    inverse = {k: 1.0 / v for k, v in totals.items() if v}

    def by_name(res: Resources) -> dict[str, int]:
        out: dict[str, int] = {}
        for (name, _), milli in res.scalars:
            out[name] = out.get(name, 0) + milli
        return out

    role_alloc = {r: by_name(info.allocated) for r, info in snapshot.roles.items()}
    members: dict[str, list[str]] = {}
    fw_alloc: dict[tuple[str, str], dict[str, int]] = {}
    for fw in snapshot.frameworks:
        for r in fw.roles:
            if r not in fw.suppressed_roles:
                members.setdefault(r, []).append(fw.framework_id)
                fw_alloc[(r, fw.framework_id)] = by_name(fw.allocated_to(r))
    offers = []
    for agent in snapshot.agents:
        roles = sorted(members, key=lambda r: (dominant_share(role_alloc.get(r, {}), inverse)
                                               / snapshot.role(r).weight, r))
        for role in roles:
            offered = agent.free.allocatable_to(role)
            if not offered:
                continue
            fws = sorted(members[role], key=lambda f: (dominant_share(fw_alloc[(role, f)], inverse), f))
            fid = next((f for f in fws if snapshot.decline_filters.get((f, agent.agent_id), 0.0) <= NOW), None)
            if fid is None:
                continue
            for name, amount in by_name(offered).items():
                role_alloc.setdefault(role, {})[name] = role_alloc.get(role, {}).get(name, 0) + amount
                fw_alloc[(role, fid)][name] = fw_alloc[(role, fid)].get(name, 0) + amount
            offers.append(Offer(new_id("offer"), fid, agent.agent_id, agent.hostname, role, offered,
                                agent.attributes))
            break
    return offers


# ---- measuring ------------------------------------------------------------------------------------------
def rss_mib() -> tuple[float, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


CPU_TIMES: dict[int, list[float]] = {}  # id(wall-time list) -> the CPU times of the same runs


def timed(fn: Callable[[], object], repeats: int, gc_paused: bool) -> tuple[list[float], object]:
    """Wall times of `repeats` runs (their process CPU times are kept in CPU_TIMES: on a shared machine
    the wall clock also counts the time other processes had the core)."""
    times: list[float] = []
    cpu: list[float] = []
    result = None
    for _ in range(repeats):
        if gc_paused:
            gc.disable()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if gc_paused:
            gc.enable()
    CPU_TIMES[id(times)] = cpu
    return times, result


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_one(agents: int) -> dict[str, object]:
    repeats = REPEATS.get(agents, 5)
    started = time.perf_counter()
    state = build_state(agents)
    build_seconds = time.perf_counter() - started
    rss_state, _ = rss_mib()
    out: dict[str, object] = {"agents": agents, "frameworks": FRAMEWORKS, "roles": len(ROLES),
                              "build_state_s": build_seconds, "rss_state_mib": rss_state, "rows": []}
    rows: list[dict[str, object]] = out["rows"]  # type: ignore[assignment]

    def measure(phase: str, snapshot: AllocationSnapshot, gc_paused: bool) -> tuple[Offer, ...]:
        label = "gc paused" if gc_paused else "gc on"
        snap_times, _ = timed(lambda: snapshot_from_state(state, NOW), repeats, gc_paused)
        alloc_times, offers = timed(lambda: allocate(snapshot, new_id=sequential_ids(), now=NOW), repeats, gc_paused)
        allocator = Allocator()
        allocator.update(snapshot)  # warm: the leader keeps its Allocator from round to round

        def incremental() -> tuple[Offer, ...]:
            allocator.update(snapshot_from_state(state, NOW))
            return allocator.allocate(new_id=sequential_ids(), now=NOW)

        inc_times, inc_offers = timed(incremental, repeats, gc_paused)
        assert inc_offers == offers
        row = {"phase": phase, "gc": label, "free_agents": len(snapshot.agents),
               "offers": len(offers),  # type: ignore[arg-type]
               "snapshot_p50": pct(snap_times, 0.5), "snapshot_p99": pct(snap_times, 0.99),
               "snapshot_cpu_p50": pct(CPU_TIMES[id(snap_times)], 0.5),
               "allocate_cpu_p50": pct(CPU_TIMES[id(alloc_times)], 0.5),
               "allocator_round_cpu_p50": pct(CPU_TIMES[id(inc_times)], 0.5),
               "allocate_min": min(alloc_times),
               "allocate_p50": pct(alloc_times, 0.5), "allocate_p99": pct(alloc_times, 0.99),
               "round_p50": pct(snap_times, 0.5) + pct(alloc_times, 0.5),
               "allocator_round_p50": pct(inc_times, 0.5), "allocator_round_p99": pct(inc_times, 0.99)}
        if not gc_paused and (agents <= NAIVE_MAX_AGENTS or phase == "cold"):
            naive_repeats = max(1, repeats // 4) if agents <= NAIVE_MAX_AGENTS else 1
            naive_times, naive_offers = timed(lambda: naive_allocate(snapshot, sequential_ids()), naive_repeats,
                                              False)
            row["naive_p50"] = pct(naive_times, 0.5)
            row["naive_cpu_p50"] = pct(CPU_TIMES[id(naive_times)], 0.5)
            row["naive_offers"] = len(naive_offers)  # type: ignore[arg-type]
        rows.append(row)
        return offers  # type: ignore[return-value]

    cold = snapshot_from_state(state, NOW)
    offers: tuple[Offer, ...] = ()
    for gc_paused in (False, True):
        offers = measure("cold", cold, gc_paused)
    commit_offers(state, offers)
    # steady: 90 % of the agents hold an offer; rescind the others' offers so 10 % are free
    rescinds = [OfferRescinded(o.offer_id, o.framework_id, o.agent_id, "bench")
                for o in sorted(state.offers.values(), key=lambda o: o.agent_id) if int(o.agent_id[-6:]) % 10 == 5]
    assert apply(state, Entry(term=1, leader="bench", time=NOW, events=tuple(rescinds))).outcome == "applied"
    if agents <= 10_000:
        assert check_invariants(state) == []
    steady = snapshot_from_state(state, NOW)
    for gc_paused in (False, True):
        measure("steady", steady, gc_paused)
    _, out["rss_peak_mib"] = rss_mib()
    return out


# ---- reporting ------------------------------------------------------------------------------------------
def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal"))
    except OSError:
        mem_kib = 0
    return (f"{os.cpu_count()} cores ({model}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
            f"Python {platform.python_version()} on {platform.system()} {platform.release()}")


def report(results: list[dict[str, object]]) -> None:
    ms = 1000.0
    print("wall time per run (ms)")
    print(f"{'agents':>7} {'state':>6} {'gc':>9} {'free':>6} {'offers':>6} | {'snapshot p50/p99 ms':>19} | "
          f"{'allocate min/p50/p99 ms':>25} | {'Allocator round p50/p99 ms':>26} | {'naive ms':>9} "
          f"{'naive/alloc':>11}")
    for res in results:
        for row in res["rows"]:  # type: ignore[attr-defined]
            naive = row.get("naive_p50")
            ratio = f"{naive / row['allocate_p50']:.1f}x" if naive else "-"
            naive_text = f"{naive * ms:9.0f}" if naive else f"{'-':>9}"
            print(f"{res['agents']:>7} {row['phase']:>6} {row['gc']:>9} {row['free_agents']:>6} {row['offers']:>6} | "
                  f"{row['snapshot_p50'] * ms:9.1f}/{row['snapshot_p99'] * ms:<9.1f} | "
                  f"{row['allocate_min'] * ms:7.1f}/{row['allocate_p50'] * ms:7.1f}/{row['allocate_p99'] * ms:<9.1f} | "
                  f"{row['allocator_round_p50'] * ms:13.1f}/{row['allocator_round_p99'] * ms:<12.1f} | "
                  f"{naive_text} {ratio:>11}")
    print()
    print("process CPU time per run (p50, ms): what the round costs when it has a core to itself")
    print(f"{'agents':>7} {'state':>6} {'gc':>9} | {'snapshot':>9} {'allocate':>9} {'snapshot+allocate':>18} "
          f"{'Allocator round':>16} {'naive':>9} {'naive/allocate':>15}")
    for res in results:
        for row in res["rows"]:  # type: ignore[attr-defined]
            naive = row.get("naive_cpu_p50")
            ratio = f"{naive / row['allocate_cpu_p50']:.1f}x" if naive else "-"
            naive_text = f"{naive * ms:9.0f}" if naive else f"{'-':>9}"
            print(f"{res['agents']:>7} {row['phase']:>6} {row['gc']:>9} | {row['snapshot_cpu_p50'] * ms:9.1f} "
                  f"{row['allocate_cpu_p50'] * ms:9.1f} "
                  f"{(row['snapshot_cpu_p50'] + row['allocate_cpu_p50']) * ms:18.1f} "
                  f"{row['allocator_round_cpu_p50'] * ms:16.1f} {naive_text} {ratio:>15}")
    print()
    for res in results:
        cold = next(r for r in res["rows"] if r["phase"] == "cold" and r["gc"] == "gc on")  # type: ignore[attr-defined]
        cold_cpu = cold["snapshot_cpu_p50"] + cold["allocate_cpu_p50"]
        print(f"{res['agents']:>7} agents: state built in {res['build_state_s']:.1f} s; RSS {res['rss_state_mib']:.0f} MiB "
              f"after building the state, peak {res['rss_peak_mib']:.0f} MiB; cold round (snapshot + allocate) "
              f"CPU p50 {cold_cpu * ms:.0f} ms, allocate = {cold['allocate_cpu_p50'] / cold['snapshot_cpu_p50']:.1f}x "
              "the snapshot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--one", type=int, help="measure one size in this process and print JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine())
    print(f"cluster: {len(ROLES)} roles (weights 1-5, two with a 1 % guarantee), {FRAMEWORKS} frameworks, "
          "agents cpus:16;mem:65536;disk:102400;ports:[31000-32000], 1 in 10 with a reservation")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load} (other work on the machine inflates p50/p99; min is the least "
          "disturbed run)")
    print()
    results = []
    for size in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True,
                              check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    report(results)
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
