"""Both drivers against FakeMaster: the framework's key/value state through `driver.kv`, and several
instances of one framework — one active, the others standbys that take over (with the next lease term
and the state where the active one left it) when it is gone; a deposed instance is told."""

from __future__ import annotations

from typing import Any

import pytest

from tessera.sdk import (
    ABSENT,
    Deposed,
    FrameworkInfo,
    InvalidRequest,
    KvDelete,
    KvEntry,
    KvPut,
    Unavailable,
    VersionConflict,
)
from tessera.sdk.testing import FakeMaster
from tests.unit.sdk.harness import Harness

pytestmark = pytest.mark.timeout(60)

INFO = FrameworkInfo(name="services", failover_timeout=600.0)


def start(make: Any, fake: FakeMaster, info: FrameworkInfo = INFO, **options: Any) -> Harness:
    h: Harness = make(fake, info, **options)
    return h.start()


def test_kv_reads_its_writes_compares_versions_and_lists_by_prefix(make: Any) -> None:
    fake = FakeMaster()
    h = start(make, fake)
    h.subscribed()
    assert h.kv("get", "apps/web") is None
    v1 = h.kv("put", "apps/web", "2 instances", version=ABSENT)
    assert h.kv("get", "apps/web") == KvEntry("apps/web", "2 instances", v1)
    with pytest.raises(VersionConflict) as stale:
        h.kv("put", "apps/web", "3 instances", version=v1 + 1)
    assert stale.value.current_version == v1
    v2, v3 = h.kv("write", [KvPut("apps/web", "3 instances", v1), KvPut("apps/db", "1 instance")])
    assert h.kv("list", "apps/") == [KvEntry("apps/db", "1 instance", v3), KvEntry("apps/web", "3 instances", v2)]
    assert [e.value for e in h.kv("list", "apps/", keys_only=True)] == ["", ""]
    h.kv("delete", "apps/db", version=v3)
    h.kv("write", [KvDelete("apps/web"), KvPut("deploy/1", "done")])
    assert fake.kv() == {"deploy/1": KvEntry("deploy/1", "done", v3 + 3)}  # every write takes a version
    with pytest.raises(InvalidRequest):
        h.kv("put", "apps/web", b"bytes")


def test_list_pages_through_more_keys_than_one_page(make: Any) -> None:
    fake = FakeMaster()
    h = start(make, fake)
    h.subscribed()
    for first in range(0, 1500, 100):
        h.kv("write", [KvPut(f"k{n:05d}", "v") for n in range(first, first + 100)])
    keys = [e.key for e in h.kv("list", "k")]
    assert keys == [f"k{n:05d}" for n in range(1500)]


def test_a_standby_waits_then_takes_over_with_the_state_where_the_active_one_left_it(make: Any) -> None:
    fake = FakeMaster()
    active = start(make, fake, standby=True)
    fid = active.subscribed()
    assert active.rec.wait_for(lambda: active.rec.of("became_active"), "became_active") == [1]
    version = active.kv("put", "apps/web", "v1", version=ABSENT)
    standby = start(make, fake, standby=True)
    assert standby.rec.wait_for(lambda: standby.rec.of("standing_by"), "standing_by") == [(fid, 1)]
    assert standby.driver.is_standby and standby.driver.lease_term is None and active.driver.lease_term == 1
    active.stop()  # the active instance goes away
    fake.wait_for(lambda: not fake.framework(fid).connected, what="the active stream to end")
    assert not standby.rec.of("subscribed"), "the holder may come back within the takeover delay"
    fake.advance(fake.takeover_delay)
    assert standby.subscribed() == fid
    assert standby.rec.wait_for(lambda: standby.rec.of("became_active"), "became_active") == [2]
    assert standby.driver.lease_term == 2 and not standby.driver.is_standby
    assert standby.kv("get", "apps/web") == KvEntry("apps/web", "v1", version)
    standby.kv("put", "apps/web", "v2", version=version)
    assert standby.rec.names().index("subscribed") < standby.rec.names().index("became_active")


def test_a_deposed_standby_driver_is_told_and_waits_as_a_standby_again(make: Any) -> None:
    fake = FakeMaster()
    first = start(make, fake, standby=True)
    fid = first.subscribed()
    other = start(make, fake, FrameworkInfo(name="services", failover_timeout=600.0, framework_id=fid))
    other.subscribed()  # a new instance with the framework id takes it over (Mesos failover): term 2
    assert first.rec.wait_for(lambda: first.rec.of("deposed"), "deposed") == [2]
    assert first.rec.wait_for(lambda: first.rec.of("standing_by"), "standing_by") == [(fid, 2)]
    first.driver.call_timeout = 0.2
    with pytest.raises(Unavailable, match="not subscribed"):  # a standby's calls wait for it to be active
        first.kv("put", "k", "a deposed instance does not write")
    assert fake.kv(fid) == {}
    other.stop()
    fake.wait_for(lambda: not fake.framework(fid).connected, what="the active stream to end")
    fake.advance(fake.takeover_delay)
    first.rec.wait_for(lambda: first.rec.of("became_active")[1:], "the first instance to take over again")
    assert first.rec.of("became_active") == [1, 3]


def test_a_deposed_driver_that_is_no_standby_is_told_then_ends_with_an_error(make: Any) -> None:
    fake = FakeMaster()
    first = start(make, fake)
    fid = first.subscribed()
    other = start(make, fake, FrameworkInfo(name="services", failover_timeout=600.0, framework_id=fid))
    other.subscribed()
    assert first.rec.wait_for(lambda: first.rec.of("error"), "error")
    assert first.rec.of("deposed") == [2]
    assert first.join()


def test_a_reconnection_at_the_same_term_is_no_new_activation(make: Any) -> None:
    fake = FakeMaster()
    h = start(make, fake, standby=True)
    h.subscribed()
    fake.drop_stream()  # the stream breaks; the holder comes back within the takeover delay
    h.rec.wait_for(lambda: len(h.rec.of("subscribed")) == 2, "the re-subscription")
    assert h.rec.of("became_active") == [1]
    assert fake.subscribe_requests[-1][1].framework_id == h.rec.of("subscribed")[0]


def test_a_call_on_a_stream_the_lease_left_is_deposed(make: Any) -> None:
    from tessera.sdk.protocol import CallHeader, WriteValuesCall

    fake = FakeMaster()
    h = start(make, fake, standby=True)
    fid = h.subscribed()
    old_stream = fake.framework(fid).stream_id
    other = start(make, fake, FrameworkInfo(name="services", failover_timeout=600.0, framework_id=fid))
    other.subscribed()
    with pytest.raises(Deposed) as info:
        fake.transport().call(fake.leader, CallHeader(fid, old_stream, "r1"), WriteValuesCall((KvPut("k", "v"),)), 5)
    assert info.value.lease_term == 2
