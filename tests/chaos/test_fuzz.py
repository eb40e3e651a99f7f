"""Live fuzz: hostile clients throw thousands of bad frames at one gateway while two honest ones chat.

One real gateway process.  Two honest clients (alice, bob) send 200 DMs back
and forth at a modest 10/s, each awaited.  Meanwhile 4 hostile clients on raw
WebSockets send 3,000 frames between them, generated from a seeded
``random.Random``: random bytes (text and binary, some shaped like upload
chunks), random JSON values, deep nesting, huge strings up to and past the
64 KiB frame limit (a few past the 1 MiB hard cap), and valid frames with
mutated fields (wrong types, missing and unknown fields, unknown types, a
spoofed ``from``, bad addresses, bad refs), plus login floods with wrong
passwords.  When the server closes a hostile socket it reconnects; every close
code must be a documented one (never 1011).

Afterwards: every honest DM arrived exactly once, in order, at its recipient
(and no honest message ever reached a hostile socket); the gateway is alive,
``/readyz`` is 200, its log has no traceback; its RSS stayed bounded.

The gateway's rate limits answer a hostile send flood with ``rate_limited``
(4029 after persistent abuse), and its wrong-password floods lock the targeted
accounts (victim, alice, bob: logins then get ``rate_limited``; the honest
clients are logged in before and stay connected).  Both are documented outcomes.
Honest sends answered ``rate_limited`` are retried after ``retry_after`` with
the same ref.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from client import ChatClient
from client.chat import Closed
from protocol import frames as f
from protocol.errors import RateLimited
from protocol.files import CHUNK_MAGIC, EMPTY_SHA256, upload_id
from tests.helpers import Clients, Processes, RedisServer

SEED = 20240611
HOSTILE = 4
HOSTILE_FRAMES = 3000  # all hostile clients together
HONEST_DMS = 200  # alice and bob together
HONEST_RATE = 10.0  # DMs per second
FUZZ_SECONDS = 20.0  # hostile frames are spread over about this long
DEADLINE = 60.0  # the whole fuzz run, delivery included
LOGIN_TIMEOUT = 3.0  # short, so the idle sockets see 4002 within the run
RSS_LIMIT = 300 * 1024 * 1024
RSS_GROWTH_LIMIT = 100 * 1024 * 1024
MARK = "HONEST:"  # every honest body carries it; no hostile socket may ever see it

# 1007 bad UTF-8, 1009 over the hard cap, 4001 login refused, 4002 login timeout,
# 4008 slow consumer, 4029 rate-limit abuse, 1000/1001 normal / going away.
DOCUMENTED_CLOSES = {1000, 1001, 1007, 1009, 4001, 4002, 4008, 4029}
FRAME_LIMIT = 64 * 1024
HARD_CAP = 1024 * 1024


@dataclass
class Tally:
    frames: Counter[str] = field(default_factory=Counter)  # frames sent by kind
    errors: Counter[str] = field(default_factory=Counter)  # error frames received by code
    replies: Counter[str] = field(default_factory=Counter)  # other frames received by type
    closes: Counter[str] = field(default_factory=Counter)  # server-initiated closes by code
    connects: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # handshakes refused (503, ...)
    leaks: list[str] = field(default_factory=list)  # honest text seen by a hostile socket

    @property
    def sent(self) -> int:
        return sum(self.frames.values())


# -- random values ------------------------------------------------------------------------

FULLWIDTH_ALICE = "\uff41\uff4c\uff49\uff43\uff45"  # NFKC makes it "alice"

_WEIRD = ["", " ", "\x00", "\u202e", "e\u0301", "\U0001f600", "\ufeff", FULLWIDTH_ALICE, "ALICE", "alice ", "ﬁ",
          "\\", '"', "\n", "null", "0-0", "*", "@", "#", "@@alice", "#" * 40, "1-1", "-1-0", "9" * 30 + "-0"]
_BAD_ADDRESSES = ["", "alice", "@", "#", "**", "@alice bob", "@" + "a" * 33, "#" + "g" * 33, "@al/ice", "#no body",
                  "@\u202ealice", "* ", " @bob", "@" + FULLWIDTH_ALICE, "#\x00", "@@", "##devs", "@.", "%",
                  "@" + "é" * 32]


def _rand_str(rng: random.Random, n: int | None = None) -> str:
    n = rng.randint(0, 40) if n is None else n
    pick = rng.random()
    if pick < 0.4:
        return "".join(rng.choice(string.printable) for _ in range(n))
    if pick < 0.7:  # any code point but surrogates (which cannot be sent as UTF-8)
        out = []
        for _ in range(n):
            cp = rng.randint(0, 0x10FFFF)
            out.append(chr(cp if not 0xD800 <= cp <= 0xDFFF else 0x41))
        return "".join(out)
    return rng.choice(_WEIRD) * rng.randint(1, 3)


def _rand_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**40, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, 1.0, 2.0, 1e-320, rng.uniform(-1e9, 1e9)])
    if kind == "str":
        return _rand_str(rng)
    if kind == "list":
        return [_rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_rand_str(rng, rng.randint(0, 8)): _rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _rand_address(rng: random.Random, me: str) -> str:
    pick = rng.random()
    if pick < 0.35:
        return rng.choice(_BAD_ADDRESSES)
    if pick < 0.5:
        return f"@{rng.choice(['nobody', 'victim', f'h{rng.randrange(HOSTILE)}', me])}"
    if pick < 0.6:
        return "*"
    if pick < 0.65:
        return rng.choice(["@alice", "@bob", "@ALICE"])  # honest users may get hostile DMs
    return f"#g{rng.randrange(6)}"


def _template(rng: random.Random, me: str) -> dict[str, Any]:
    kind = rng.choice(["send"] * 4 + ["history"] * 2 + ["group"] * 2 + ["who", "ping", "groups", "upload", "login"])
    ref = f"r{rng.randrange(10**6)}" if rng.random() < 0.8 else None
    frame: dict[str, Any] = {"type": kind}
    if kind == "send":
        frame.update(to=_rand_address(rng, me), body=_rand_str(rng, rng.randint(1, 60)))
    elif kind == "history":
        frame.update(conv=rng.choice(["@alice", "@bob", "*", _rand_address(rng, me)]))
        if rng.random() < 0.5:
            frame["before"] = rng.choice(["1-0", "0-0", "99999999999999999999-0", f"{int(time.time() * 1000)}-0"])
        if rng.random() < 0.5:
            frame["limit"] = rng.choice([1, 50, 100, 0, 101, -1, 2.0])
    elif kind == "group":
        frame.update(op=rng.choice([*f.GROUP_OPS, "dance", ""]), group=rng.choice([f"g{rng.randrange(6)}",
                     f"#g{rng.randrange(6)}", *_BAD_ADDRESSES[:6]]))
        if rng.random() < 0.5:
            frame["user"] = rng.choice(["alice", "@bob", "victim", f"h{rng.randrange(HOSTILE)}", "bad name"])
        if rng.random() < 0.5:
            frame["invite_only"] = rng.random() < 0.5
    elif kind == "upload":
        size = rng.choice([0, 1, 10, 1000, 10**9, 10**15])
        sha = EMPTY_SHA256 if size == 0 else hashlib.sha256(rng.randbytes(8)).hexdigest()
        frame.update(name=rng.choice(["a.txt", "../etc/passwd", "", "x" * 300, "ok.png", "a/b"]), size=size, sha256=sha)
        if rng.random() < 0.5:
            frame["mime"] = rng.choice(["text/plain", "bad", "", "image/png; x=1"])
    elif kind == "login":
        frame.update(v=1, user=rng.choice(["victim", "alice", "bob"]), password=_rand_str(rng, 12) or "x")
    if ref is not None:
        frame["ref"] = ref
    return frame


def _mutate(rng: random.Random, frame: dict[str, Any]) -> dict[str, Any]:
    for _ in range(rng.randint(1, 3)):
        keys = list(frame)
        op = rng.randrange(9)
        if op == 0 and keys:  # a field of the wrong type
            frame[rng.choice(keys)] = _rand_json(rng)
        elif op == 1 and keys:  # a missing field
            del frame[rng.choice(keys)]
        elif op == 2:  # an unknown field
            frame[_rand_str(rng, rng.randint(1, 10))] = _rand_json(rng)
        elif op == 3:  # a spoofed sender
            frame["from"] = rng.choice(["alice", "bob", "@alice", "server"])
        elif op == 4:  # an unknown or non-string type
            frame["type"] = rng.choice(["message", "welcome", "ack", "error", "", "SEND", "Login", 1, None, ["send"],
                                        _rand_str(rng)])
        elif op == 5:  # a bad ref
            frame["ref"] = rng.choice(["x" * 65, 1, {}, [], True, "x" * 64, ""])
        elif op == 6:  # a bad address
            frame[rng.choice(["to", "conv", "group", "user"])] = rng.choice(_BAD_ADDRESSES)
        elif op == 7:  # weird strings in place of every string
            for k, v in frame.items():
                if isinstance(v, str) and k != "type":
                    frame[k] = _rand_str(rng)
        else:  # a version mismatch (only meaningful on login)
            frame["v"] = rng.choice([0, 2, "1", 1.0, None, 999])
    return frame


def _deep(rng: random.Random) -> str:
    n = rng.randint(500, 20_000)
    if rng.random() < 0.5:
        return "[" * n + "]" * n
    inner = "{\"a\":" * n + "1" + "}" * n
    return f'{{"type":"send","to":"@bob","body":{inner},"ref":"deep"}}'


def _huge(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.01:  # past the hard cap: the socket is closed with 1009
        return json.dumps({"type": "ping", "pad": "x" * (HARD_CAP + 1000)})
    if pick < 0.3:  # just past the frame limit: too_large
        return json.dumps({"type": "send", "to": "*", "body": "y" * (FRAME_LIMIT + rng.randint(0, 5000))})
    n = rng.randint(8001, FRAME_LIMIT - 200)
    field_name = rng.choice(["body", "to", "ref", "password", "user", "conv", "group"])
    frame = _template(rng, "h0")
    frame[field_name] = rng.choice(["z", "é", "\U0001f600"]) * (n // 4)
    return json.dumps(frame, ensure_ascii=rng.random() < 0.5)


def _login_flood(rng: random.Random, me: str) -> str:
    user = rng.choice(["victim", "alice", "bob", "ALICE", FULLWIDTH_ALICE])
    password = _rand_str(rng, rng.randint(1, 30)) or "x"
    frame: dict[str, Any] = {"type": "login", "v": 1, "user": user, "password": password}
    if rng.random() < 0.3:
        frame["session"] = _rand_str(rng, rng.randint(1, 40))
    if rng.random() < 0.2:
        frame["resume"] = rng.choice([{"dm": "0-0"}, {"*": "1-0", "#g1": "0-0"}, {"bogus": "0-0"}, {"dm": "x"}])
    return json.dumps(frame)


def make_frame(rng: random.Random, me: str) -> tuple[str, str | bytes, bool]:
    """(kind, data, send-as-text) of one hostile frame."""
    p = rng.random()
    if p < 0.05:
        return "random-binary", rng.randbytes(rng.randint(0, 2000)), False
    if p < 0.08:  # shaped like an upload chunk: magic, an upload id (sometimes the right one), an offset, data
        if rng.random() < 0.5:
            uid = bytes.fromhex(upload_id(me.lower(), hashlib.sha256(rng.randbytes(8)).hexdigest()))
        else:
            uid = rng.randbytes(16)
        offset = rng.choice([0, 1, 2**63, 2**64 - 1, rng.randrange(2**32)]).to_bytes(8, "big")
        data = CHUNK_MAGIC + uid[: rng.choice([16, 16, 3])] + offset + rng.randbytes(rng.randint(0, 500))
        return "chunk-like", data, False
    if p < 0.083:
        return "over-hard-cap", json.dumps({"type": "ping", "pad": "x" * (HARD_CAP + rng.randint(1, 5000))}), True
    if p < 0.085:
        return "bad-utf8-text", b"\xff\xfe" + rng.randbytes(rng.randint(0, 50)), True
    if p < 0.13:
        return "random-text", _rand_str(rng, rng.randint(0, 200)), True
    if p < 0.23:
        return "random-json", json.dumps(_rand_json(rng)), True
    if p < 0.25:
        return "deep-nesting", _deep(rng), True
    if p < 0.29:
        return "huge", _huge(rng), True
    if p < 0.37:
        return "login-flood", _login_flood(rng, me), True
    if p < 0.42:
        return "valid", json.dumps(_template(rng, me)), True
    return "mutated", json.dumps(_mutate(rng, _template(rng, me))), True


# -- the clients ----------------------------------------------------------------------------


async def _read(ws: ClientConnection, tally: Tally) -> None:
    try:
        async for raw in ws:
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            if MARK in text:
                tally.leaks.append(text[:300])
            try:
                obj = json.loads(text)
            except ValueError:
                tally.replies["<not json>"] += 1
                continue
            if isinstance(obj, dict) and obj.get("type") == "error":
                tally.errors[str(obj.get("code"))] += 1
            else:
                tally.replies[str(obj.get("type") if isinstance(obj, dict) else type(obj).__name__)] += 1
    except ConnectionClosed:
        pass


def _record_close(ws: ClientConnection, tally: Tally) -> None:
    proto = ws.protocol
    rcvd = proto.close_rcvd
    if rcvd is None:
        tally.closes["abnormal"] += 1
    elif proto.close_rcvd_then_sent:  # the server closed first
        tally.closes[str(rcvd.code)] += 1


async def _hostile(i: int, url: str, tally: Tally, quota: int, start: float, stop_at: float) -> None:
    rng = random.Random(SEED + i)
    me = f"h{i}"
    sent = 0
    interval = FUZZ_SECONDS / quota
    loop = asyncio.get_running_loop()
    while sent < quota and loop.time() < stop_at:
        try:
            ws = await connect(url, max_size=None, ping_interval=None, open_timeout=5, close_timeout=2,
                               compression=None)
        except InvalidHandshake as exc:  # e.g. 503 while at max connections
            tally.refused[type(exc).__name__] += 1
            await asyncio.sleep(0.05)  # pacing a refused reconnect
            continue
        tally.connects += 1
        reader = asyncio.create_task(_read(ws, tally))
        try:
            if rng.random() < 0.5:  # half the sessions log in (registering on first use) and fuzz the logged-in path
                await ws.send(json.dumps({"type": "login", "v": 1, "user": me, "password": f"hpw{i}", "ref": "in"}))
            while sent < quota and loop.time() < stop_at:
                kind, data, text = make_frame(rng, me)
                tally.frames[kind] += 1
                sent += 1
                await ws.send(data, text=text)
                if rng.random() < 0.01:  # churn: hang up and reconnect now and then
                    break
                delay = start + sent * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing, not synchronisation
        except ConnectionClosed:
            pass
        finally:
            if ws.protocol.close_rcvd is None and ws.protocol.close_sent is None:
                await ws.close()
            else:
                await ws.wait_closed()
            await reader
            _record_close(ws, tally)


async def _idle(url: str, tally: Tally, first: str | None) -> None:
    """A socket that never logs in (maybe after one non-login frame): closed with 4002."""
    async with connect(url, ping_interval=None, compression=None) as ws:
        tally.connects += 1
        if first is not None:
            await ws.send(first)
        reader = asyncio.create_task(_read(ws, tally))
        await asyncio.wait_for(ws.wait_closed(), LOGIN_TIMEOUT + 10)
        await reader
        _record_close(ws, tally)


@dataclass
class Honest:
    sent: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {"alice": [], "bob": []})  # to -> (id, body)
    got: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {"alice": [], "bob": []})  # from peer
    hostile_dms: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    closed: dict[str, Any] = field(default_factory=dict)


async def _honest_send(chat: ChatClient, to: str, body: str, honest: Honest) -> f.Ack:
    ref = f"hon-{hashlib.sha256(body.encode()).hexdigest()[:16]}"
    while True:
        try:
            return await chat.send(to, body, ref=ref)
        except RateLimited as exc:
            honest.rate_limited += 1
            await asyncio.sleep(exc.retry_after or 0.2)  # the server asked us to wait this long


async def _honest_receive(chat: ChatClient, peer: str, honest: Honest, done: asyncio.Event) -> None:
    me = chat.user or ""
    async for event in chat.events():
        if isinstance(event, f.Message):
            if event.from_ == peer and event.to.lower() == f"@{me}":
                honest.got[me].append((event.id, event.body))
                if len(honest.got["alice"]) + len(honest.got["bob"]) >= HONEST_DMS:
                    done.set()
            else:
                honest.hostile_dms[event.from_] += 1
        elif isinstance(event, f.Error):
            honest.hostile_dms[f"error:{event.code}"] += 1
        elif isinstance(event, Closed):
            honest.closed[me] = event


@pytest.mark.timeout(180)
async def test_fuzz(redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path) -> None:
    gateway = processes.gateway(redis_server.url, args=["--blob-dir", str(tmp_path / "blobs"),
                                                         "--login-timeout", str(LOGIN_TIMEOUT)])
    assert gateway.proc is not None
    server = psutil.Process(gateway.proc.pid)
    loop = asyncio.get_running_loop()
    begin = loop.time()

    alice = await clients.login(gateway.url, "alice", "alice-pw")
    bob = await clients.login(gateway.url, "bob", "bob-pw")
    victim = await clients.login(gateway.url, "victim", "victim-pw")  # an account to throw wrong passwords at
    await victim.close()
    rss_before = server.memory_info().rss

    honest = Honest()
    done = asyncio.Event()
    receivers = [asyncio.create_task(_honest_receive(alice, "bob", honest, done)),
                 asyncio.create_task(_honest_receive(bob, "alice", honest, done))]

    async def chat() -> None:
        start = loop.time()
        for n in range(HONEST_DMS):
            sender, to = (alice, "bob") if n % 2 == 0 else (bob, "alice")
            body = f"{MARK}{n} from {sender.user} {'é' * (n % 7)}"
            ack = await _honest_send(sender, f"@{to}", body, honest)
            honest.sent[to].append((ack.id, body))
            delay = start + (n + 1) / HONEST_RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing at HONEST_RATE

    tally = Tally()
    start = loop.time()
    stop_at = begin + DEADLINE - 15
    quota = HOSTILE_FRAMES // HOSTILE
    idle = [asyncio.create_task(_idle(gateway.url, tally, first)) for first in (None, '{"type":"ping","ref":"p"}')]
    hostile = [asyncio.create_task(_hostile(i, gateway.url, tally, quota, start, stop_at)) for i in range(HOSTILE)]
    await asyncio.wait_for(chat(), DEADLINE)
    await asyncio.wait_for(asyncio.gather(*hostile, *idle), max(1.0, begin + DEADLINE - loop.time()))
    try:  # a lost DM shows up in the asserts below, with the counts
        await asyncio.wait_for(done.wait(), max(1.0, begin + DEADLINE + 10 - loop.time()))
    except TimeoutError:
        pass
    rss_after = server.memory_info().rss
    for task in receivers:
        task.cancel()

    closes = dict(sorted(tally.closes.items()))
    print(
        f"\nfuzz: {tally.sent} hostile frames ({dict(tally.frames)}) on {tally.connects} connections; "
        f"{sum(tally.errors.values())} error frames {dict(tally.errors.most_common())}; "
        f"other replies {dict(tally.replies.most_common())}; closes by code {closes}; refused {dict(tally.refused)}; "
        f"honest delivered {len(honest.got['alice']) + len(honest.got['bob'])}/{HONEST_DMS} "
        f"(rate_limited {honest.rate_limited}, hostile DMs/errors at honest {sum(honest.hostile_dms.values())}); "
        f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB; {loop.time() - begin:.1f}s"
    )

    # every honest DM exactly once, in order, nothing else claiming to be from the peer
    for user in ("alice", "bob"):
        assert honest.got[user] == honest.sent[user], f"{user}: DMs lost, doubled or reordered"
    assert alice.duplicates == 0 and bob.duplicates == 0, "the server sent an honest DM twice"
    assert honest.closed == {}, f"an honest client was disconnected: {honest.closed}"
    assert tally.leaks == [], f"honest messages reached a hostile socket: {tally.leaks[:3]}"
    assert tally.sent >= HOSTILE_FRAMES * 0.9, f"only {tally.sent} hostile frames sent"

    # the server closed hostile sockets only with documented codes
    undocumented = {code: n for code, n in tally.closes.items() if code not in {str(c) for c in DOCUMENTED_CLOSES}}
    assert undocumented == {}, f"undocumented close codes: {undocumented}"
    assert tally.closes["4002"] >= 2, "the idle sockets were not closed for their login timeout"
    assert tally.errors["internal"] == 0, "the gateway answered 'internal' (a bug)"

    # the gateway survived, is ready, logged no crash, and its memory stayed bounded
    assert not gateway.exited(), "the gateway died"
    assert gateway.ready_status() == 200
    log = gateway.log()
    assert "Traceback" not in log and "handler crashed" not in log, log[-4000:]
    assert rss_after < RSS_LIMIT, f"gateway RSS {rss_after / 2**20:.1f} MiB"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, f"gateway RSS grew {(rss_after - rss_before) / 2**20:.1f} MiB"
