"""What a gateway does when it finds it lost its lease: take its names back, then catch up.

A gateway that is paused (SIGSTOP, a VM pause, a long GC stall) or cut off from
Redis for longer than its lease is reaped by the presence service: its names
are freed, and a DM to one of its users is then stored in the inbox but
published nowhere (nobody holds the name).  Its sockets, though, may still be
open when it comes back.  If it simply claimed the names again, the next live
DM would move the client's position (and the server's cursor) past the DMs
stored while it was gone, and those would be lost to every delivery path.

So the gateway treats a lost lease like lost pub/sub subscriptions, and the
same recovery task does both (gateway/recovery.py ``Recovery``):

1. the moment the lease renewal says "gone", every session starts *holding*
   live frames (before any name is claimed again, so nothing published to a
   re-claimed name can overtake the catch-up).  A gateway that resumes from
   a stall (or a cut) longer than the lease gets there before any renewal:
   the router asks before handing on each published message, and if no
   renewal sent within the last lease TTL vouches for the lease, that counts
   as "gone" (what was buffered during the stall must not go out first);
2. :func:`reclaim` registers the lease again (a new lease epoch) and takes every
   name back, each in its user's slot (``Registry.reclaim``).  A name someone else holds meanwhile (the
   user logged in elsewhere) is not taken: that socket is closed with 4003, and
   the client resumes where it left off.  A session still in the middle of its
   login is closed the same way if its name had been freed, because its login
   replay may already have been read;
3. the catch-up replays each session's inbox after the last DM written to it
   (and broadcasts and groups, as after any resubscribe), id-checked, then the
   held frames go out;
4. :func:`settle` records per session that its inbox is written up to its last
   DM.  Re-claimed sessions carry a ``hold`` flag until then, so DMs published
   to them meanwhile do not move the ``delivered`` cursor past the gap.

The recovery is re-runnable: if it is superseded (Redis drops again), the next
one finds the claim still pending and does all of it again.

:func:`run` is the loop that keeps the lease alive (renewing it every third of
its TTL), notices it was lost, retries name releases Redis did not answer, and
tells readiness whether Redis answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common import keys
from common.backoff import Backoff
from common.redis import REDIS_ERRORS
from common.runtime import end_if_cancelled
from protocol.errors import CloseCode
from protocol.names import id_tuple

if TYPE_CHECKING:
    from .group_relay import GroupRelay
    from .groups import Groups
    from .server import Gateway
    from .session import Session
    from .store import Store

log = logging.getLogger("chinwag.lease")
_gateway_log = logging.getLogger("chinwag.gateway")  # the loop's messages are the gateway's readiness


async def run(gateway: Gateway) -> None:
    """Keep this gateway's lease alive; re-claim names if it was lost (through ``Recovery.lease_lost``)."""
    recovery = gateway.recovery
    backoff = Backoff(base=0.1, cap=gateway.settings.lease_ttl / 3)
    registered = False
    while True:
        end_if_cancelled()  # redis-py's wait_for may have swallowed a cancel during the last turn
        try:
            sent = asyncio.get_running_loop().time()
            if not registered:
                await gateway.registry.register_gateway(gateway.node_id)
                registered = True
                recovery.lease_renewed(sent)
            elif not recovery.reclaim_pending:
                if await gateway.registry.renew_lease(gateway.node_id):
                    recovery.lease_renewed(sent)
                else:
                    recovery.lease_lost()
            if recovery.reclaim_pending and not recovery.running:
                recovery.start()  # an earlier recovery gave up before it could re-claim
            await gateway.logins.retry_releases()
            if not gateway.redis_ok:
                _gateway_log.info("Redis is reachable again")
            gateway.redis_ok = True
            backoff.reset()
            end_if_cancelled()  # before sleeping a third of the lease on a swallowed cancel
            await asyncio.sleep(gateway.settings.lease_ttl / 3)
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS as exc:
            if gateway.redis_ok:
                _gateway_log.warning("Redis unreachable (%s); answering sends with 'unavailable'", type(exc).__name__)
            gateway.redis_ok = False
            await asyncio.sleep(backoff.next_delay())
        except Exception:  # a loop that survives: a bug here must not end the lease (and every re-claim) for good
            _gateway_log.exception("lease loop of %s failed unexpectedly; retrying", gateway.node_id)
            await asyncio.sleep(backoff.next_delay())


async def reclaim(gateway: Gateway) -> set[Session]:
    """Register the lease again and take back every name this gateway's sockets hold.

    Returns the sessions that must not be caught up: their sockets are being
    closed with 4003 (``session lost``) and their clients will resume.
    Raises Redis errors (the caller retries).
    """
    sent = asyncio.get_running_loop().time()
    await gateway.registry.register_gateway(gateway.node_id)
    gateway.recovery.lease_renewed(sent)
    sessions = list(gateway.sessions.values())
    statuses = await gateway.registry.reclaim(
        gateway.node_id, [(s.key, s.name, s.token_hash) for s in sessions]
    )
    lost: set[Session] = set()
    for session, status in zip(sessions, statuses, strict=True):
        if status == 0 or (status == 1 and session in gateway.joining):
            lost.add(session)
            why = "someone else holds it now" if status == 0 else "it was freed during the login"
            log.warning("lost the name %s while the lease was gone (%s); closing", session.name, why)
            gateway.close_session(session, CloseCode.SESSION_LOST, "session lost")
    log.info("re-claimed %d names after the lease was lost; closing %d", len(sessions) - len(lost), len(lost))
    # A session that ended while the script ran (its logout's release reached Redis first, while the
    # name was still free) was just given its name back: nobody would ever release it, and the user
    # could not log in again until this gateway's lease lapsed (meanwhile its DMs published to a
    # session that is gone).  Release those now (a release checks the token: a newer session's claim
    # of the same name is left alone).
    for session, status in zip(sessions, statuses, strict=True):
        if status != 0 and gateway.sessions.get(session.key) is not session:
            log.info("%s logged out during the re-claim; releasing its name", session.name)
            await gateway.logins.release(session)  # retried by the lease loop if Redis cannot answer
    return lost


async def settle(gateway: Gateway, sessions: list[Session]) -> None:
    """Record, per session, that its inbox is written up to its last DM (and lift a re-claim's hold)."""
    owned = [s for s in sessions if gateway.sessions.get(s.key) is s]
    # Concurrent, so the auto-pipeline writes them to Redis together.
    await asyncio.gather(*(gateway.store.settle(s.key, s.token_hash, s.last_dm_id) for s in owned))


async def deliver_before_leaving(
    store: Store, groups: Groups, relay: GroupRelay, session: Session, gkey: str
) -> None:
    """Before a session stops receiving a group it is leaving, write what the group stored while the
    user is a member and the session has not had yet: live delivery may have been cut off (pub/sub
    down, catch-up still to come, or an earlier attempt at this leave that detached the session but
    got no answer from Redis), and after the leave no catch-up or resume covers it.  Membership and
    the newest id are read from Redis in one step, so nothing from outside the membership is sent."""
    now, since = await groups.membership(session.key, [gkey])
    if gkey not in since:
        # Not a member (any more): an earlier attempt at this leave did leave (its answer was lost).
        # What was stored up to that leave is still owed, if this session was a member here.
        parted = await groups.parted(session.key, [gkey])
        if gkey in parted and gkey in session.last_group:
            relay.backlog.deliver(session, gkey, *parted[gkey])
        return
    last = max(session.last_group.get(gkey, (0, 0)), id_tuple(since[gkey]))
    bound = id_tuple(now)
    if bound <= last:
        return
    for mid, frame in (await store.replay(keys.group_stream(gkey), f"{last[0]}-{last[1]}")).frames:
        if id_tuple(mid) > bound:
            break
        await session.replay_group(gkey, frame, member=True)
