"""decide of offer commands: issuing the allocator's offers, declines, rescinds, expiry. (Accepting
offers is `core/decide_launch.py`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from tessera.control_plane.core import commands as c
from tessera.control_plane.core.context import Context
from tessera.control_plane.core.decide_shared import (
    Decider,
    calling_framework,
    check_offer_ids,
    context_time,
    live_offer,
    new_id,
    refuse_until,
)
from tessera.control_plane.core.errors import Conflict, InvalidRequest, NotFound
from tessera.control_plane.core.events import Event, OfferDeclined, OfferIssued, OfferRescinded
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import (
    DEFAULT_REFUSE_SECONDS,
    MAX_ID_LENGTH,
    MAX_TIME,
    ClusterState,
    check_id,
    check_labels,
    check_number,
    check_offer_parties,
    check_text,
)
from tessera.control_plane.core.values import AgentState, Offer


def _issue_offers(state: ClusterState, cmd: c.IssueOffers, ctx: Context) -> tuple[Event, ...]:
    return issue_offers_after(state, cmd, ctx, {})


def issue_offers_after(state: ClusterState, cmd: c.IssueOffers, ctx: Context,
                       freed: Mapping[str, Resources]) -> tuple[Event, ...]:
    """`IssueOffers` decided after, in the same entry, updates that end tasks: `freed` is what they free
    per agent (`apply` frees it before it records these offers)."""
    if not isinstance(cmd.offers, tuple):
        raise InvalidRequest("offers: must be a tuple of offers")
    now = context_time(ctx)
    free: dict[str, Resources] = {}
    new_ids: set[str] = set()
    events: list[Event] = []
    for offer in cmd.offers:
        if not isinstance(offer, Offer):
            raise InvalidRequest("offers: must be a tuple of offers")
        if offer.offer_id:
            offer_id = check_id(offer.offer_id, "offer_id")
            if offer_id in state.offers or offer_id in state.retired_offers or offer_id in new_ids:
                raise Conflict(f"offer id {offer_id} is already used")
        else:
            offer_id = new_id(ctx, "offer", new_ids)
            if offer_id in state.offers or offer_id in state.retired_offers:
                raise Conflict(f"the id source returned {offer_id!r}, which is already in use")
        new_ids.add(offer_id)
        fw, agent, role, resources = check_offer_parties(state, offer, offer.framework_id, offer.agent_id)
        fid, aid = fw.framework_id, agent.agent_id
        expires_at = check_number(offer.expires_at, "offer.expires_at", maximum=MAX_TIME)
        if expires_at and expires_at <= now:
            raise InvalidRequest(f"offer.expires_at: {expires_at} is not in the future")
        if state.is_filtered(fid, aid, now):
            raise Conflict(f"framework {fid} declined agent {aid} until {state.refused_until(fid, aid)}")
        if aid in free:
            available = free[aid]
        else:
            available = state.agent_free(aid)
            if aid in freed and agent.state is AgentState.AGENT_ACTIVE:
                available = available + freed[aid]
        if not available.contains(resources):
            raise Conflict(f"offer of {resources} does not fit what is free on agent {aid} ({available})")
        free[aid] = available - resources
        hostname = check_text(offer.hostname, "offer.hostname", MAX_ID_LENGTH) or agent.info.hostname
        attributes = check_labels(offer.attributes, "offer.attributes") or agent.info.attributes
        issued = replace(offer, offer_id=offer_id, framework_id=fid, agent_id=aid, hostname=hostname,
                         role=role, attributes=attributes, expires_at=expires_at)
        events.append(OfferIssued(offer_id, fid, aid, issued))
    return tuple(events)


def _decline(state: ClusterState, cmd: c.Decline, ctx: Context) -> tuple[Event, ...]:
    fw = calling_framework(state, cmd.framework_id, cmd.stream_id)
    offers = [live_offer(state, oid, fw.framework_id) for oid in check_offer_ids(cmd.offer_ids)]
    until = refuse_until(ctx, cmd.refuse_seconds, default=DEFAULT_REFUSE_SECONDS)
    return tuple(OfferDeclined(o.offer_id, o.framework_id, o.agent_id, until) for o in offers)


def _rescind_offer(state: ClusterState, cmd: c.RescindOffer, ctx: Context) -> tuple[Event, ...]:
    offer_id = check_id(cmd.offer_id, "offer_id")
    reason = check_text(cmd.reason, "reason")
    offer = state.offers.get(offer_id)
    if offer is None:
        if offer_id in state.retired_offers:
            return ()
        raise NotFound(f"offer {offer_id} is not known")
    return (OfferRescinded(offer_id, offer.framework_id, offer.agent_id, reason or "rescinded"),)


def _expire_offers(state: ClusterState, cmd: c.ExpireOffers, ctx: Context) -> tuple[Event, ...]:
    now = context_time(ctx)
    return tuple(
        OfferRescinded(o.offer_id, o.framework_id, o.agent_id, "offer expired")
        for _, o in sorted(state.offers.items())
        if o.expires_at and o.expires_at <= now
    )


DECIDERS: dict[type, Decider] = {
    c.IssueOffers: _issue_offers,
    c.Decline: _decline,
    c.RescindOffer: _rescind_offer,
    c.ExpireOffers: _expire_offers,
}
