"""apply of offer events: issued, declined, rescinded, accepted. An accepted offer leaves its resources
in the entry's pool (`Tx.pools`) for the reservations and launches that follow it in the same entry.
"""

from __future__ import annotations

from tessera.control_plane.core.apply_tx import Handler, Tx, check_reason
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound, TesseraError
from tessera.control_plane.core.events import OfferAccepted, OfferDeclined, OfferIssued, OfferRescinded
from tessera.control_plane.core.state import (
    MAX_ID_LENGTH,
    MAX_TIME,
    ClusterState,
    check_id,
    check_labels,
    check_number,
    check_offer_parties,
    check_text,
    scalar_part,
)
from tessera.control_plane.core.values import FrameworkState, Offer


def _gone_offer(state: ClusterState, offer_id: str) -> TesseraError:
    why = state.retired_offers.get(offer_id)
    if why is not None:
        return Conflict(f"offer {offer_id} is no longer valid: {why}")
    return NotFound(f"offer {offer_id} is not known")


def _live_offer(state: ClusterState, offer_id: object, framework_id: object, agent_id: object) -> Offer:
    oid = check_id(offer_id, "offer_id")
    offer = state.offers.get(oid)
    if offer is None:
        raise _gone_offer(state, oid)
    if offer.framework_id != framework_id or offer.agent_id != agent_id:
        raise Conflict(f"offer {oid} is for framework {offer.framework_id} on agent {offer.agent_id}")
    return offer


def _retire_offer(state: ClusterState, offer: Offer, why: str, tx: Tx) -> None:
    agent = state.agents[offer.agent_id]
    fw = state.frameworks[offer.framework_id]
    tx.pop(state.offers, offer.offer_id)
    tx.assign(agent, "offered", agent.offered - offer.resources)
    tx.discard(agent.offer_ids, offer.offer_id)
    tx.assign(fw, "offered", fw.offered - scalar_part(offer.resources))
    tx.discard(fw.offer_ids, offer.offer_id)
    tx.put(state.retired_offers, offer.offer_id, why)


def _offer_issued(state: ClusterState, e: OfferIssued, tx: Tx) -> bool:
    oid = check_id(e.offer_id, "offer_id")
    offer = e.offer
    if not isinstance(offer, Offer):
        raise InvalidRequest("offer: must be an Offer")
    if (offer.offer_id, offer.framework_id, offer.agent_id) != (oid, e.framework_id, e.agent_id):
        raise InvalidRequest(f"offer {oid}: the offer's ids do not match the event's")
    if oid in state.offers or oid in state.retired_offers:
        raise Conflict(f"offer id {oid} is already used")
    fw, agent, role, resources = check_offer_parties(state, offer, e.framework_id, e.agent_id)
    fid, aid = fw.framework_id, agent.agent_id
    check_number(offer.expires_at, "offer.expires_at", maximum=MAX_TIME)
    check_text(offer.hostname, "offer.hostname", MAX_ID_LENGTH)
    check_labels(offer.attributes, "offer.attributes")
    key = (fid, aid)
    until = state.decline_filters.get(key)
    if until is not None:
        if until > tx.time:
            raise Conflict(f"framework {fid} declined agent {aid} until {until}")
        tx.pop(state.decline_filters, key)  # expired: forget it
    if not state.agent_free(aid).contains(resources):
        raise Conflict(f"offer {oid} of {resources} does not fit what is free on agent {aid}")
    tx.put(state.offers, oid, offer)
    tx.assign(agent, "offered", agent.offered + resources)
    tx.add(agent.offer_ids, oid)
    tx.assign(fw, "offered", fw.offered + scalar_part(resources))
    tx.add(fw.offer_ids, oid)
    return True


def _offer_declined(state: ClusterState, e: OfferDeclined, tx: Tx) -> bool:
    oid = check_id(e.offer_id, "offer_id")
    fid = check_id(e.framework_id, "framework_id")
    aid = check_id(e.agent_id, "agent_id")
    until = check_number(e.refuse_until, "refuse_until", maximum=MAX_TIME)
    offer = state.offers.get(oid)
    if offer is not None:
        offer = _live_offer(state, oid, fid, aid)
        _retire_offer(state, offer, "declined", tx)
    elif tx.accepted.get(oid) != (fid, aid):  # not the filter of an Accept earlier in this entry
        raise _gone_offer(state, oid)
    key = (fid, aid)
    if until > tx.time and until > state.decline_filters.get(key, 0.0):
        tx.put(state.decline_filters, key, until)
    return True


def _offer_rescinded(state: ClusterState, e: OfferRescinded, tx: Tx) -> bool:
    oid = check_id(e.offer_id, "offer_id")
    reason = check_reason(e.reason)
    if oid not in state.offers:
        if oid in state.retired_offers:
            return False  # already gone (used, declined, rescinded): nothing to rescind
        raise NotFound(f"offer {oid} is not known")
    offer = _live_offer(state, oid, e.framework_id, e.agent_id)
    _retire_offer(state, offer, f"rescinded: {reason}" if reason else "rescinded", tx)
    return True


def _offer_accepted(state: ClusterState, e: OfferAccepted, tx: Tx) -> bool:
    offer = _live_offer(state, e.offer_id, e.framework_id, e.agent_id)
    fw = state.frameworks[offer.framework_id]
    if fw.state is not FrameworkState.FRAMEWORK_CONNECTED:
        raise Conflict(f"framework {fw.framework_id} is {fw.state.name}")
    key = (offer.framework_id, offer.agent_id)
    pool = tx.pools.get(key)
    if pool is None:
        tx.pools[key] = [offer.role, offer.resources]
    elif pool[0] != offer.role:
        raise InvalidRequest("the offers of one accept must be for one role")
    else:
        pool[1] = pool[1] + offer.resources
    _retire_offer(state, offer, "accepted", tx)
    tx.accepted[offer.offer_id] = key
    return True


HANDLERS: dict[type, Handler] = {
    OfferIssued: _offer_issued,
    OfferDeclined: _offer_declined,
    OfferRescinded: _offer_rescinded,
    OfferAccepted: _offer_accepted,
}
