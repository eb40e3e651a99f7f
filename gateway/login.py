"""Login and logout: authenticate, claim the name, replay, welcome; and give the name back.

A connection's first frames are read here until one is a good ``login``.  The
password (or a session token) is checked by :mod:`gateway.accounts`, the name
is claimed cluster-wide (:mod:`presence.registry`: decided in the user's slot,
taking over an older session of the same user when the client presents its
token; the online index follows in later steps), and only then does anything
local change.  A claim that fails after its first step is released (every
release step is token-checked and idempotent), so nothing is left half-claimed.

A login answered ``unavailable`` never gets its own retry refused
``username_taken`` (issue 15): its release may be queued (Redis did not answer
it), so a claim first finishes the queued releases of its name on this
gateway; on another gateway the dead attempt is still on ``hold``, which a
claim answers ``unavailable`` (NamePending) and takes over once it is older
than the login timeout (presence/registry.py, "A login that failed midway").
A live session whose settle failed is settled by the lease loop, so that it
does not look like such an unfinished login.

Order matters for "no gap, no duplicate" at login: the session holds live
frames from before the claim, subscribes to its channel, reads the streams
after the client's resume points, writes the welcome and the replay, and only
then goes live, dropping whatever the replay already carried.  A pub/sub loss
while a login runs (``Recovery.losses`` moved) closes it instead, so that the
client resumes from what it got.

On logout the session's group positions are saved, it leaves the local maps,
unsubscribes, and its name is released; a release Redis did not answer is
retried by the lease loop (``retry_releases``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection

from common import keys
from common.redis import REDIS_ERRORS
from presence.registry import Claim, NamePending, NoLease, token_hash
from protocol import frames as f
from protocol.errors import (
    ChatError,
    CloseCode,
    LoginError,
    NotLoggedIn,
    RateLimited,
    Unavailable,
    UnsupportedVersion,
    UsernameTaken,
)
from protocol.names import group_name, id_tuple, login_name

from .client_ip import client_ip, peer
from .dispatch import redis_failure, reply_error
from .group_cursors import cursors_of
from .group_relay import join_groups_at_login
from .recovery import id_str
from .session import Session

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("chinwag.gateway")


class Logins:
    """The sessions' way in and out of a gateway.

    Interface: ``login(ws)`` (a logged-in session, or None), ``logout(session)``,
    ``by_token`` (for a takeover notice from another gateway), ``forget`` and
    ``retry_releases`` (the lease loop).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.by_token: dict[str, Session] = {}  # token hash -> session, for takeover kicks
        self._to_release: dict[str, set[str]] = {}  # key -> tokens whose release Redis did not answer
        self._to_settle: dict[str, Session] = {}  # key -> a live session whose settle Redis did not answer

    async def login(self, ws: ServerConnection) -> Session | None:
        """Wait for a good login frame; None if the socket closed or was refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gw.settings.login_timeout
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await ws.close(CloseCode.LOGIN_TIMEOUT, "login timeout")
                return None
            frame: f.ClientFrame | None = None
            try:
                frame = self.gw.parser.parse(raw)
                if not isinstance(frame, f.Login):
                    raise NotLoggedIn()
                if wait := await self.gw.ip_logins.take(client_ip(ws)):
                    raise RateLimited("too many logins from your address", retry_after=round(wait, 3))
                return await self._authenticate(ws, frame)
            except ChatError as exc:
                if exc.ref is None and frame is not None:
                    exc.ref = frame.ref
                if not await self._refuse(ws, exc):
                    return None

    async def _refuse(self, ws: ServerConnection, exc: ChatError) -> bool:
        """Answer a failed pre-login frame; False once the socket is closed for it.

        A refused login (bad name or password, name taken, wrong version) closes
        with 4001 and a login while Redis is away with 1013; anything else before
        login is answered and the client may still log in.
        """
        self._reply_error(ws, exc)
        if isinstance(exc, LoginError | UnsupportedVersion | Unavailable | RateLimited):
            self.gw.m_logins.inc(exc.code.value)
        if isinstance(exc, LoginError | UnsupportedVersion):
            await ws.close(CloseCode.LOGIN_FAILED, exc.code.value)
            return False
        if isinstance(exc, Unavailable):
            await ws.close(CloseCode.TRY_AGAIN_LATER, exc.code.value)
            return False
        return True

    async def _authenticate(self, ws: ServerConnection, frame: f.Login) -> Session:
        """Check the password, claim (or take over) the name, then replay and go live.

        Order matters for "no gap, no duplicate": the session holds live frames
        from before the claim, subscribes, reads the streams after the resume
        points, writes the replay, and only then releases what it held,
        dropping anything the replay already carried.
        """
        gw = self.gw
        user = login_name(frame.user)
        key = user.key
        resume = frame.resume or {}
        try:
            token = secrets.token_urlsafe(24)
            name = await gw.accounts.authenticate(
                user, frame.password, issued=token_hash(token),
                presented=token_hash(frame.session) if frame.session else None, ip=client_ip(ws),
            )
            session = Session(
                ws, key, name, token, token_hash(token), gw.settings.max_write_buffer, gw.on_slow, gw.m_out,
                presence=frame.presence,
            )
            session.last_broadcast = gw.recovery.last_broadcast  # later fan-outs are held for this session
            losses = gw.recovery.losses
            gw.joining.add(session)
            try:
                claim, lease_epoch = await self._claim(session, frame.session)
                if claim is None:
                    raise UsernameTaken()
                gw.sessions[key] = session
                self.by_token[session.token_hash] = session
                try:
                    await gw.router.subscribe(keys.user_channel(key), session.deliver_dm)
                    dm_from = resume.get(f.STREAM_DM, claim.delivered)
                    dms = await gw.store.replay(keys.inbox_stream(key), dm_from)
                    bc_from = resume.get(f.STREAM_BROADCAST)
                    broadcasts = await gw.store.replay(keys.BROADCAST_STREAM, bc_from) if bc_from else None
                    group_replays = await join_groups_at_login(gw.relay, gw.groups, gw.store, session, resume)
                    owed = await gw.relay.backlog.at_login(  # groups resumed but left by removal meanwhile
                        key, {group_name(s)[1]: p for s, p in resume.items() if s.startswith("#")},
                        {g for g, *_ in group_replays.values()})
                    invitations = await gw.groups.invitations(key)
                except BaseException:
                    gw.relay.detach_all(session)
                    self.forget(session)
                    await self.release(session)
                    raise
            except BaseException:
                gw.joining.discard(session)
                raise
        except REDIS_ERRORS as exc:
            raise redis_failure(exc) from None
        recovered = {f.STREAM_DM: dms.recovered} if f.STREAM_DM in resume else {}
        if broadcasts is not None:
            recovered[f.STREAM_BROADCAST] = broadcasts.recovered
        positions = {f.STREAM_DM: dm_from, f.STREAM_BROADCAST: bc_from or id_str(session.last_broadcast)}
        for stream, (_, start, replay, resumed) in group_replays.items():
            positions[stream] = start
            if resumed:
                recovered[stream] = replay.recovered
        welcome = f.Welcome(
            user=name, online=claim.online.names, v=f.PROTOCOL_VERSION, session=token, positions=positions,
            node=gw.node_id, recovered=recovered or None, online_total=claim.online.total,
            online_next=claim.online.next, ref=frame.ref,
        )
        session.push(f.encode(welcome))
        session.last_dm = id_tuple(dm_from)
        try:
            for _, data in dms.frames:
                await session.replay_dm(data)
            if broadcasts is not None:
                session.last_broadcast = id_tuple(bc_from or "0-0")
                for _, data in broadcasts.frames:
                    await session.replay_broadcast(data)
            for gkey, start, replay, _ in group_replays.values():
                session.last_group[gkey] = max(session.last_group.get(gkey, (0, 0)), id_tuple(start))
                for _, data in replay.frames:
                    await session.replay_group(gkey, data)
            for gkey, frames in owed:
                for data in frames:
                    await session.replay_group(gkey, data, member=True)
            for data in invitations:  # invitations still pending, made while offline or not
                session.push(data)
        except BaseException:  # the socket died mid-replay: it never became a live session
            gw.joining.discard(session)
            gw.relay.detach_all(session)
            if self.forget(session):
                await gw.router.unsubscribe(keys.user_channel(key))
                await self.release(session)
            raise
        gw.joining.discard(session)
        if gw.recovery.losses != losses or gw.recovery.lease_losses != lease_epoch:
            # The subscriptions dropped, or the lease was found lost (the name may have been freed, so
            # DMs stored meanwhile were published nowhere), during this login: its replay may end
            # before what it missed, and the catch-up that began meanwhile skipped it (still joining;
            # a re-claim that ran after the login ended kept it).  Still holding, so no live frame
            # moves the client's positions past that gap: close, and the client resumes from what it
            # got (its next login reads everything after that).
            log.info("%s was lost during the login of %s; closing it so that it resumes",
                     "pub/sub" if gw.recovery.losses != losses else "the lease", name)
            gw.close_session(session, CloseCode.SESSION_LOST, "session lost")
        else:
            session.go_live()
            gw.fanout.add(session)
        gw.m_logins.inc("ok")
        gw.m_replayed.inc("login", amount=len(dms.frames) + (len(broadcasts.frames) if broadcasts else 0))
        try:  # the inbox is written up to last_dm: the cursor may move there, and with live DMs from now on
            await gw.store.settle(key, session.token_hash, session.last_dm_id)
        except REDIS_ERRORS:  # retried by the lease loop: a session left on hold looks like an unfinished login
            log.warning("could not record delivery for %s; replay may repeat", name)
            self._to_settle[key] = session
        log.info(
            "login %s from %s%s (replayed %d DMs, %d broadcasts%s)", name, peer(ws),
            " taking over its session" if claim.took_over else "", len(dms.frames),
            len(broadcasts.frames) if broadcasts else 0,
            "" if all(recovered.values()) else "; history no longer reaches the resume point",
        )
        return session

    async def _claim(self, session: Session, takeover: str | None) -> tuple[Claim | None, int]:
        """Claim the session's name; with the count of lost leases read before the claim that
        succeeded (a loss found after it may have freed the name while the login reads its replay)."""
        page = 0 if session.presence == f.PRESENCE_OFF else self.gw.settings.online_page
        args = (session.key, session.name, self.gw.node_id, session.token, takeover, page,
                self.gw.settings.login_timeout)
        recovery = self.gw.recovery
        epoch = recovery.lease_losses
        # An earlier login of this name on this gateway failed and its release is still queued (Redis did
        # not answer it): finish it first, or this claim finds that dead attempt holding the name.
        await self._release_queued(session.key)
        try:
            try:
                return await self.gw.registry.claim(*args), epoch
            except NoLease:
                recovery.lease_lost()  # the other sessions' names were freed too: re-claim them and catch up
                epoch = recovery.lease_losses  # this claim comes after that loss
                sent = asyncio.get_running_loop().time()
                await self.gw.registry.register_gateway(self.gw.node_id)
                recovery.lease_renewed(sent)
                # The same token: a session the first attempt wrote (its lease lost meanwhile) is taken back.
                return await self.gw.registry.claim(*args), epoch
        except NamePending:  # nothing of ours was written; the holder's login is unfinished (or failed)
            raise Unavailable("that name's previous login has not finished; retry shortly") from None
        except BaseException:
            # The claim is several steps; one that failed midway may have written the session (under a
            # lease now lost, or before Redis stopped answering).  Give it back (token-checked; retried
            # by the lease loop if Redis cannot answer now).
            await self.release(session)
            raise

    def forget(self, session: Session) -> bool:
        """Drop a session from the local maps; True if it still owned its name here."""
        self.by_token.pop(session.token_hash, None)
        if self.gw.sessions.get(session.key) is session:
            del self.gw.sessions[session.key]
            return True
        return False

    async def logout(self, session: Session) -> None:
        self.gw.fanout.drop(session.ws)
        self.gw.joining.discard(session)
        owned = self.gw.sessions.get(session.key) is session
        cursors = cursors_of(session)
        self.gw.relay.detach_all(session)
        if owned and cursors:
            try:  # where a later login without resume positions picks each group up
                await self.gw.groups.save_cursors(session.key, cursors)
            except REDIS_ERRORS:
                log.warning("could not save group positions of %s", session.name)
        if not self.forget(session):  # taken over on this very gateway: the new session owns it all
            return
        await self.gw.router.unsubscribe(keys.user_channel(session.key))
        await self.release(session)
        log.info("logout %s (close code %s)", session.name, session.ws.close_code)

    async def release(self, session: Session) -> None:
        try:
            await self.gw.registry.release(session.key, self.gw.node_id, session.token)
        except REDIS_ERRORS:
            self._to_release.setdefault(session.key, set()).add(session.token)

    def _reply_error(self, ws: ServerConnection, exc: ChatError, session: Session | None = None) -> None:
        """The one place a ChatError becomes an error frame on the wire."""
        self.gw.m_errors.inc(exc.code.value)
        reply_error(ws, exc, self.gw.m_errors, session)


    async def retry_releases(self) -> None:
        """Release the names whose release Redis did not answer, and settle the live sessions whose settle
        it did not answer (raises Redis errors: the caller retries).

        A completed login left on ``hold`` would answer others' logins ``unavailable`` instead of
        ``username_taken``, and be taken over as abandoned a login timeout after its claim."""
        for key in list(self._to_release):
            await self._release_queued(key)
        for key, session in list(self._to_settle.items()):
            if self.gw.sessions.get(key) is session:  # the settle is token-checked; a gone session needs none
                await self.gw.store.settle(key, session.token_hash, session.last_dm_id)
            if self._to_settle.get(key) is session:
                del self._to_settle[key]

    async def _release_queued(self, key: str) -> None:
        """The queued releases of ``key`` (raises Redis errors, the rest stay queued)."""
        for token in list(self._to_release.get(key, ())):
            await self.gw.registry.release(key, self.gw.node_id, token)
            tokens = self._to_release.get(key)  # the lease loop may have run the same release meanwhile
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    del self._to_release[key]
