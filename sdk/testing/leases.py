"""The framework lease as a `FakeMaster` keeps it: the master's one decision of a claim
(`core.leases.settle_claim`: the refusals, then the table `OUTCOMES`) over the fake's records. A standby
subscription waits (`StandbyEvent`) while another instance holds the lease, and takes over once the
framework has been disconnected for `takeover_delay` fake seconds (`advance`); a holder presenting its term resumes; a stale term is refused with `Deposed` (a standby waits instead);
a subscription that moves the lease ends the old stream with an `ErrorEvent` carrying the new term."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tessera.control_plane.core import leases
from tessera.sdk.errors import TesseraError
from tessera.sdk.protocol import (
    BATCHED_ACKNOWLEDGEMENTS,
    ErrorEvent,
    StandbyEvent,
    SubscribedEvent,
    UpdateEvent,
)
from tessera.sdk.testing.state import _Framework
from tessera.sdk.testing.tasks import _TaskBook
from tessera.sdk.testing.transport import FakeStream
from tessera.sdk.types import FrameworkInfo


@dataclass(frozen=True)
class _Grant:
    framework: _Framework | None  # None: a new framework
    lease_term: int
    moved: bool
    by_name: bool = False


@dataclass(frozen=True)
class _Wait:
    framework: _Framework


class _LeaseBook(_TaskBook):
    """Who holds each framework's lease, and the standbys waiting for it (a layer of `FakeMaster`)."""

    def advance(self, seconds: float) -> None:
        with self._cond:
            super().advance(seconds)
            self._promote_standbys()
            self._changed()

    def _claim(self, info: FrameworkInfo, standby: bool, lease_term: int) -> _Grant | _Wait:
        """The master's decision of a claim (`tessera.control_plane.core.leases.settle_claim`: the refusals
        before the lease table, then the table) over the fake's records."""
        settled = leases.settle_claim(
            info.framework_id, info.principal, info.name, standby=standby, lease_term=lease_term, now=self._now,
            takeover_delay=self.takeover_delay, read=self._read, find=self._frameworks.get, find_named=self._named)
        fw, decided, term = settled
        if fw is None:
            return _Grant(None, term, moved=False, by_name=standby)
        if decided is leases.Outcome.WAIT:
            return _Wait(fw)
        return _Grant(fw, term, moved=decided is leases.Outcome.TAKE_OVER)

    def _named(self, principal: str, name: str) -> str | None:
        """The framework a standby created under (principal, name) that is not removed, if any."""
        return next((f.framework_id for f in self._frameworks.values() if f.by_name and f.removed is None
                     and (f.info.principal, f.info.name) == (principal, name)), None)

    @staticmethod
    def _read(fw: _Framework) -> leases.Claimed:
        """What the lease decision reads of one of the fake's frameworks."""
        return leases.Claimed(leases.Holder(fw.framework_id, fw.lease_term, fw.stream is not None, fw.disconnected_at),
                              fw.info.principal, fw.info.name, fw.by_name, fw.removed)

    def _activate(self, granted: _Grant, info: FrameworkInfo, stream: FakeStream, address: str) -> None:
        fw = granted.framework
        if fw is None:
            fw = _Framework(self._new_id("framework"), info, by_name=granted.by_name)
            self._frameworks[fw.framework_id] = fw
        if fw.stream is not None:
            old, fw.stream = fw.stream, None
            if granted.moved:
                old.push(ErrorEvent(f"another instance took over the framework's lease (term {granted.lease_term}); "
                                    "this one was deposed", granted.lease_term))
            old.end(None)  # a newer connection of the same framework takes over
        self._retire_offers_of(fw.framework_id, "framework resubscribed")
        fw.info = replace(info, framework_id=fw.framework_id)
        fw.stream_id = self._new_id("stream")
        fw.stream = stream
        fw.subscriptions += 1
        fw.lease_term = granted.lease_term
        stream.framework_id = fw.framework_id
        stream.push(SubscribedEvent(fw.framework_id, fw.stream_id, self.heartbeat_interval, address,
                                    (BATCHED_ACKNOWLEDGEMENTS,) if self.batched_acknowledgements else (),
                                    fw.lease_term))
        for status in fw.unacked.values():
            stream.push(UpdateEvent(status))
        self._allocate_if_auto()

    def _disconnected(self, fw: _Framework) -> None:
        """`fw`'s active stream is gone (already taken off it): its takeover delay runs from now."""
        fw.disconnected_at = self._now
        self._retire_offers_of(fw.framework_id, "framework disconnected")
        self._promote_standbys()

    def _promote_standbys(self) -> None:
        """Let waiting standbys take over where the lease allows it now (oldest first), tell the others the
        term when it changed, and end those the framework can no longer have (removed)."""
        for waiting in list(self._standbys):
            if waiting not in self._standbys or waiting.stream.closed:
                continue
            try:
                granted = self._claim(waiting.info, True, 0)
            except TesseraError as exc:
                self._standbys.remove(waiting)
                waiting.stream.end(exc)
                continue
            if isinstance(granted, _Wait):
                if granted.framework.lease_term != waiting.told_term:
                    waiting.told_term = granted.framework.lease_term
                    waiting.stream.push(StandbyEvent(granted.framework.framework_id, waiting.told_term,
                                                     self.heartbeat_interval, waiting.address))
                continue
            self._standbys.remove(waiting)
            self._activate(granted, waiting.info, waiting.stream, waiting.address)

