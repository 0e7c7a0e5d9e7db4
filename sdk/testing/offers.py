"""How a `FakeMaster` offers: each agent's free resources, whole, to the first subscribed framework that
is not suppressed for one of its roles and has not declined that agent within the refuse time; one
offer per agent at a time; automatically after every change (`auto_offer`) or on `send_offers()`.
Offers leave the book by being used, declined, rescinded or voided with their framework's stream; a
retired offer id is remembered with the reason, so a late call on it is a Conflict, not a NotFound."""

from __future__ import annotations

from collections.abc import Iterable

from tessera.sdk.errors import NotFound
from tessera.sdk.protocol import OffersEvent, RescindEvent
from tessera.sdk.testing.state import _FakeState
from tessera.sdk.types import Offer


class _OfferBook(_FakeState):
    """Offers and the clock that ages decline filters (a layer of `FakeMaster`)."""

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (decline filters expire; expired agents are offered again; a
        standby takes over a framework disconnected for the takeover delay)."""
        with self._cond:
            self._now += seconds
            self._allocate_if_auto()
            self._changed()
    def send_offers(self, agent_ids: Iterable[str] | None = None) -> list[Offer]:
        """Offer every agent's free resources now (what `auto_offer` does after every change), or only
        those of `agent_ids`."""
        with self._cond:
            sent = self._allocate(None if agent_ids is None else set(agent_ids))
            self._changed()
            return sent

    def rescind(self, offer_id: str, reason: str = "rescinded") -> None:
        with self._cond:
            if offer_id not in self._offers:
                raise NotFound(f"offer {offer_id} is not outstanding")
            self._rescind(offer_id, reason)
            self._allocate_if_auto()
            self._changed()

    def _rescind(self, offer_id: str, reason: str) -> None:
        offer = self._retire(offer_id, reason)
        fw = self._frameworks.get(offer.framework_id)
        if fw is not None and fw.stream is not None:
            fw.stream.push(RescindEvent(offer_id))

    def _retire(self, offer_id: str, reason: str) -> Offer:
        offer = self._offers.pop(offer_id)
        self._retired[offer_id] = reason
        return offer

    def _retire_offers_of(self, framework_id: str, reason: str) -> None:
        for offer in [o for o in self._offers.values() if o.framework_id == framework_id]:
            self._retire(offer.offer_id, reason)

    def _allocate_if_auto(self) -> None:
        if self.auto_offer:
            self._allocate()

    def _allocate(self, only: set[str] | None = None) -> list[Offer]:
        sent: dict[str, list[Offer]] = {}
        busy = {o.agent_id for o in self._offers.values()}
        for fw in self._frameworks.values():
            if fw.stream is None or fw.removed is not None:
                continue
            for agent in self._agents.values():
                if agent.removed or agent.agent_id in busy or (only is not None and agent.agent_id not in only):
                    continue
                if fw.refused.get(agent.agent_id, float("-inf")) > self._now:
                    continue
                free = agent.total - agent.used
                for role in fw.info.roles:
                    if role in fw.suppressed:
                        continue
                    resources = free.allocatable_to(role)
                    if not resources:
                        continue
                    offer = Offer(offer_id=self._new_id("offer"), agent_id=agent.agent_id, resources=resources,
                                  hostname=agent.hostname, role=role, framework_id=fw.framework_id,
                                  attributes=agent.attributes)
                    self._offers[offer.offer_id] = offer
                    busy.add(agent.agent_id)
                    sent.setdefault(fw.framework_id, []).append(offer)
                    break
        for fid, offers in sent.items():
            stream = self._frameworks[fid].stream
            assert stream is not None
            stream.push(OffersEvent(tuple(offers)))
        return [o for offers in sent.values() for o in offers]
