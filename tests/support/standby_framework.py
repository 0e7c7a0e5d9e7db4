"""A framework instance for the lease tests, run as its own process (built on the public SDK only):

    python -m tests.support.standby_framework --masters A,B,C --name services --seed 100

It runs a `SchedulerDriver` with `standby=True`: while another instance of the framework (same name and
principal) is active it waits; when it becomes active it records that in the framework's key/value
state — `holder` (unconditionally), `activations` (incremented by compare-and-set) and, on the first
activation only, `--seed` keys `apps/NNN` (put-if-absent, one call each) and then `seeded`. It declines
every offer and runs until it is killed. Each step is one line on stdout, for the test to read:
`STANDBY <framework id> <term>`, `ACTIVE <framework id> <term> <unix time>`, `SEEDED <n>`,
`DEPOSED <term>`, `SUBSCRIBED <framework id>`.
"""

from __future__ import annotations

import argparse
import os
import time

from tessera.sdk import ABSENT, Filters, FrameworkInfo, Offer, Scheduler, SchedulerDriver, VersionConflict


def say(*words: object) -> None:
    print(*words, flush=True)


class Instance(Scheduler):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        say("SUBSCRIBED", framework_id)

    def standing_by(self, driver: SchedulerDriver, framework_id: str, lease_term: int) -> None:
        say("STANDBY", framework_id, lease_term)

    def deposed(self, driver: SchedulerDriver, lease_term: int) -> None:
        say("DEPOSED", lease_term)

    def became_active(self, driver: SchedulerDriver, lease_term: int) -> None:
        at = time.time()
        driver.kv.put("holder", f"{os.getpid()} {lease_term}")
        while True:  # a counter by compare-and-set
            entry = driver.kv.get("activations")
            try:
                if entry is None:
                    driver.kv.put("activations", "1", version=ABSENT)
                else:
                    driver.kv.put("activations", str(int(entry.value) + 1), version=entry.version)
                break
            except VersionConflict:
                continue
        say("ACTIVE", driver.framework_id, lease_term, f"{at:.6f}")
        if driver.kv.get("seeded") is None:
            for n in range(self.seed):
                try:
                    driver.kv.put(f"apps/{n:03d}", f'{{"app": {n}, "by": {os.getpid()}}}', version=ABSENT)
                except VersionConflict:
                    pass  # written by an instance deposed while seeding
            driver.kv.put("seeded", str(self.seed))
        say("SEEDED", len(driver.kv.list("apps/", keys_only=True)))

    def offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        driver.decline(offers, Filters(60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", required=True)
    parser.add_argument("--name", default="services")
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    info = FrameworkInfo(name=args.name, failover_timeout=600.0)
    SchedulerDriver(Instance(args.seed), info, args.masters, standby=True, call_timeout=60.0).run()


if __name__ == "__main__":
    main()
