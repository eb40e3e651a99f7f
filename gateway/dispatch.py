"""Request dispatch: one logged-in connection's loop, from a client frame to its answer.

``Dispatcher.serve`` reads frames until the socket closes; each is parsed
(protocol/frames.py), answered by ``dispatch`` and written back, and a
``ChatError`` or a Redis failure becomes an error frame in one place,
:func:`reply_error`.  A send is one Lua call (gateway/store.py) that stores and
publishes: the ack goes back only once the message is in Redis.  The gateway's
other parts (login, fan-out, recovery) never see client requests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import BusyLoadingError, ResponseError
from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection

from common import keys
from common.config import Settings
from common.metrics import Counter, Histogram
from common.redis import REDIS_ERRORS
from presence.registry import Registry
from protocol import frames as f
from protocol.errors import (
    AlreadyLoggedIn,
    ChatError,
    CloseCode,
    Internal,
    NotMember,
    RateLimited,
    Unavailable,
    UnknownUser,
)
from protocol.files import is_chunk
from protocol.names import group_name, normalize_name, parse_address

from . import lease
from .files import FileService
from .group_relay import GroupRelay
from .groups import Groups, GroupState
from .request_rate import RequestLimiter
from .session import Session
from .store import Store

log = logging.getLogger("chinwag.gateway")


def reply_error(ws: ServerConnection, exc: ChatError, errors: Counter, session: Session | None = None) -> None:
    """The one place a ChatError becomes an error frame on the wire (counted by code)."""
    errors.inc(exc.code.value)
    data = f.encode(f.error_frame(exc, exc.ref))
    if session is not None:
        session.push(data)
    else:
        broadcast((ws,), data, text=True)


def redis_failure(exc: BaseException) -> ChatError:
    """Redis away (or still loading) is ``unavailable``; Redis refusing a command is our bug."""
    if isinstance(exc, ResponseError) and not isinstance(exc, BusyLoadingError):
        log.error("Redis refused a command", exc_info=exc)
        return Internal()
    return Unavailable()


@dataclass
class Dispatcher:
    """Answers the requests of logged-in sessions; holds no state of its own."""

    settings: Settings
    parser: f.FrameParser
    redis: Redis | RedisCluster
    store: Store
    registry: Registry
    groups: Groups
    relay: GroupRelay
    files: FileService
    requests: RequestLimiter
    m_in: Counter
    m_out: Counter
    m_errors: Counter
    m_publish: Histogram

    async def serve(self, session: Session) -> None:
        """Answer ``session``'s frames until its socket closes (ConnectionClosed ends the loop)."""
        ws = session.ws
        while True:  # not ``async for``: its generator frame is memory every idle socket would hold
            raw = await ws.recv()
            if is_chunk(raw):  # a binary upload chunk (protocol/files.py); answered, never raises
                session.push(await self.files.on_chunk(session, raw))
                continue
            frame: f.ClientFrame | None = None
            try:
                frame = self.parser.parse(raw)
                # A send (nearly every frame under load) skips dispatch()'s coroutine frame.
                reply = await (self._send(session, frame) if isinstance(frame, f.Send)
                               else self.dispatch(session, frame))
            except ChatError as exc:
                if exc.ref is None and frame is not None:
                    exc.ref = frame.ref
                reply_error(ws, exc, self.m_errors, session)
                if isinstance(exc, RateLimited):
                    session.limited += 1
                    if session.limited >= self.settings.rate_abuse_limit:
                        log.warning("%s kept sending while rate limited; closing", session.name)
                        await ws.close(CloseCode.RATE_ABUSE, "rate limit abuse")
                        return
            except REDIS_ERRORS as exc:
                failure = redis_failure(exc)
                failure.ref = frame.ref if frame is not None else None
                reply_error(ws, failure, self.m_errors, session)
            else:
                if not isinstance(frame, f.Ping):  # free pings must not reset the abuse count
                    session.limited = 0
                self.m_out.inc("reply")
                session.push(reply)

    async def dispatch(self, session: Session, frame: f.ClientFrame) -> bytes:
        """The answer to one frame; raises ChatError (or a Redis error) instead."""
        if isinstance(frame, f.Send):
            return await self._send(session, frame)
        if isinstance(frame, f.Ping):
            return f.encode(f.Pong(ref=frame.ref))
        await self.requests.take(session.key)  # every other request kind: the user's request budget
        if isinstance(frame, f.Who):
            cap = self.settings.online_page
            page = await self.registry.online_page(frame.cursor, min(frame.limit or cap, cap))
            return f.encode(f.Online(users=page.names, total=page.total, next=page.next, ref=frame.ref))
        if isinstance(frame, f.HistoryRequest):
            address = parse_address(frame.conv)
            if address.kind == "group":
                if not await self.groups.is_member(address.key, session.key):
                    raise NotMember()
                messages = await self.store.history(keys.group_stream(address.key), frame.before, frame.limit)
            elif address.kind == "user":  # the merge of the conversation's two halves (gateway/history.py)
                messages = await self.store.dm_history(session.key, address.key, frame.before, frame.limit)
            else:
                messages = await self.store.history(keys.BROADCAST_STREAM, frame.before, frame.limit)
            return f.encode(f.HistoryPage(conv=frame.conv, messages=messages, ref=frame.ref))
        if isinstance(frame, f.Group):
            return await self._group_op(session, frame)
        if isinstance(frame, f.Groups):
            summaries = [f.GroupSummary(g.name, g.owner, g.invite_only) for g in await self.groups.of_user(session.key)]
            return f.encode(f.GroupList(groups=summaries, ref=frame.ref))
        if isinstance(frame, f.Upload):
            return await self.files.start_upload(session, frame)
        raise AlreadyLoggedIn()

    async def _send(self, session: Session, frame: f.Send) -> bytes:
        """Store and publish in one Lua call in the stream's slot (gateway/store.py); the ack carries its id."""
        address = parse_address(frame.to)
        file_json = await self.files.check_ref(frame.file) if frame.file is not None else b""
        started = time.perf_counter()
        if address.kind == "user":
            # The floor: a reply is numbered above the last DM its sender's session has written out.
            stored = await self.store.send_dm(session.name_json, session.key, address.key, frame.body, frame.ref,
                                              file_json, floor=session.last_dm_id)
            if stored is None:
                raise UnknownUser(f"no user named {address.name!r}")
            self.m_in.inc("dm")
        elif address.kind == "group":
            stored = await self.store.send_group(session.name_json, session.key, address.key, frame.body, frame.ref,
                                                 file_json)
            self.m_in.inc("group")
        else:
            stored = await self.store.send_broadcast(session.name_json, session.key, frame.body, frame.ref, file_json)
            self.m_in.inc("broadcast")
        self.m_publish.observe(time.perf_counter() - started)
        return f.encode(f.Ack(id=stored.id, ts=stored.ts, ref=frame.ref, duplicate=stored.duplicate))

    async def _group_op(self, session: Session, frame: f.Group) -> bytes:
        """One ``group`` op.  Membership changes are decided in Redis before delivery changes here;
        gateway/group_relay.py says in what order and why no frame reaches a non-member."""
        gname, gkey = group_name(frame.group)
        op = frame.op
        if op == "create":
            async def create(nonce: str) -> tuple[GroupState, bool]:
                return await self.groups.create(
                    gkey, gname, session.key, session.name, bool(frame.invite_only), nonce), True

            state = await self.relay.join(session, gkey, create)
        elif op == "join":
            state = await self.relay.join(
                session, gkey, lambda nonce: self.groups.join(gkey, session.key, session.name, nonce))
        elif op == "leave":
            # What the group stored while we were a member (gateway/lease.py).
            await lease.deliver_before_leaving(self.store, self.groups, self.relay, session, gkey)
            left = await self.relay.leave(session, gkey, lambda: self.groups.leave(gkey, session.key, session.name))
            self.relay.backlog.deliver(session, gkey, left.since, left.upto)  # stored after the read above
            return f.encode(f.GroupInfo(op=op, group=gname, owner="", invite_only=False, members=[], ref=frame.ref))
        elif op in ("invite", "remove"):
            target, tkey = normalize_name((frame.user or "").removeprefix("@"))
            account: Any = await self.redis.hget(keys.account(tkey), "name")
            if account is None:
                raise UnknownUser(f"no user named {target!r}")
            state = await self.groups.owner_op(op, gkey, session.key, session.name, tkey, account.decode())
        elif op == "set":
            state = await self.groups.owner_op(op, gkey, session.key, session.name, invite_only=bool(frame.invite_only))
        else:  # members
            state = await self.groups.state(gkey, session.key)
        return f.encode(f.GroupInfo(op=op, group=state.name, owner=state.owner, invite_only=state.invite_only,
                                    members=state.members, position=state.position, ref=frame.ref))

