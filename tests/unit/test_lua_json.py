"""The frames Redis scripts build are byte for byte what msgspec encodes from the same Struct.

Each wire shape is defined once (protocol/frames.py, protocol/control.py); the Lua that
builds it comes from that definition (common/lua_json.py).  These run the generated
Lua in fakeredis and compare its bytes with ``msgspec.json.encode``.
"""

from __future__ import annotations

import fakeredis
import msgspec
import pytest

from common import keys
from common.lua_json import Const, IfSet, Raw, Text, json_expr
from gateway.store import Store
from protocol import control
from protocol import frames as f
from protocol.files import FileRef


async def lua(redis: fakeredis.FakeAsyncRedis, expr: str, *args: str | bytes) -> bytes:
    result: bytes = await redis.eval(f"return {expr}", 0, *args)
    return result


@pytest.mark.parametrize("file", [None, FileRef(id="a" * 64, name="x \"y\".png", mime="image/png", size=3)])
async def test_message(redis: fakeredis.FakeAsyncRedis, file: FileRef | None) -> None:
    expected = f.Message(id="1700000000000-7", from_="Al\"ice", to="@bob", body="hi \u00e9 \\ \"q\"", ts=1700000000000,
                         file=file)
    expr = json_expr(f.Message, id=Text("ARGV[1]"), from_=Raw("ARGV[2]"), to=Text("'@' .. ARGV[3]"),
                     body=Raw("ARGV[4]"), ts=Raw("string.format('%d', tonumber(ARGV[5]))"), file=IfSet(Raw("ARGV[6]")))
    got = await lua(redis, expr, expected.id, msgspec.json.encode(expected.from_), "bob",
                    msgspec.json.encode(expected.body), str(expected.ts), msgspec.json.encode(file) if file else "")
    assert got == f.encode(expected)
    assert f.frame_id(got) == (1700000000000, 7)


async def test_the_stores_frames_are_the_structs_encoding(redis: fakeredis.FakeAsyncRedis) -> None:
    store = Store(redis)
    ref = FileRef(id="b" * 64, name="n.txt", mime="text/plain", size=1)
    await redis.hset(keys.account("bob"), "name", "Bob")
    dm = await store.send_dm(b'"Alice"', "alice", "bob", "one")
    everyone = await store.send_broadcast(b'"Alice"', "alice", "two", file_json=msgspec.json.encode(ref))
    assert dm is not None
    rows = await store.stream_after(keys.inbox_stream("bob"), "0-0")
    assert rows[0][1] == f.encode(f.Message(id=dm.id, from_="Alice", to="@Bob", body="one", ts=dm.ts))
    rows = await store.stream_after(keys.BROADCAST_STREAM, "0-0")
    assert rows[0][1] == f.encode(f.Message(id=everyone.id, from_="Alice", to="*", body="two", ts=everyone.ts,
                                            file=ref))


async def test_presence(redis: fakeredis.FakeAsyncRedis) -> None:
    got = await lua(redis, json_expr(f.Presence, user=Text("ARGV[1]"), status=Const("offline")), "Bob")
    assert got == f.encode(f.Presence(user="Bob", status="offline"))


@pytest.mark.parametrize("by", ["", "Alice"])
async def test_group_event(redis: fakeredis.FakeAsyncRedis, by: str) -> None:
    expr = json_expr(f.GroupEvent, group=Text("ARGV[1]"), event=Const("invited"), user=Text("ARGV[2]"),
                     by=IfSet(Text("ARGV[3]")))
    got = await lua(redis, expr, "devs", "Bob", by)
    assert got == f.encode(f.GroupEvent(group="devs", event="invited", user="Bob", by=by or None))


async def test_group_event_with_a_flag(redis: fakeredis.FakeAsyncRedis) -> None:
    expr = json_expr(f.GroupEvent, group=Text("ARGV[1]"), event=Const("updated"), user=Text("ARGV[2]"),
                     invite_only=Raw("(ARGV[3] == '1' and 'true' or 'false')"))
    for flag in (True, False):
        got = await lua(redis, expr, "devs", "Alice", "1" if flag else "0")
        assert got == f.encode(f.GroupEvent(group="devs", event="updated", user="Alice", invite_only=flag))


async def test_control_messages(redis: fakeredis.FakeAsyncRedis) -> None:
    event = f.encode(f.GroupEvent(group="devs", event="invited", user="Bob", by="Alice"))
    cases: list[tuple[str, tuple[str | bytes, ...], control.Control]] = [
        (json_expr(control.Kick, user=Text("ARGV[1]"), token=Text("ARGV[2]")), ("bob", "ab12"),
         control.Kick(user="bob", token="ab12")),
        (json_expr(control.Part, group=Text("ARGV[1]"), user=Text("ARGV[2]")), ("devs", "bob"),
         control.Part(group="devs", user="bob")),
        # A removal carries the membership's span; a leave passes '' for both (left out, as msgspec omits them).
        *((json_expr(control.Part, group=Text("ARGV[1]"), user=Text("ARGV[2]"), since=IfSet(Text("ARGV[3]")),
                     upto=IfSet(Text("ARGV[4]"))), ("devs", "bob", since, upto),
           control.Part(group="devs", user="bob", since=since, upto=upto))
          for since, upto in (("5-0", "9-1"), ("", ""))),
        (json_expr(control.Notify, user=Text("ARGV[1]"), frame=Raw("ARGV[2]")), ("bob", event),
         control.Notify(user="bob", frame=msgspec.Raw(event))),
    ]
    for expr, args, expected in cases:
        got = await lua(redis, expr, *args)
        assert got == control.encode(expected)
        assert control.decode(got) == expected
    assert await lua(redis, json_expr(control.Mark, n=Text("ARGV[1]")), "n1") == control.mark("n1")
    assert control.mark("n1").startswith(control.MARK_PREFIX)


def test_a_field_the_struct_lacks_is_refused() -> None:
    with pytest.raises(AssertionError):
        json_expr(f.Presence, user=Text("x"), state=Const("online"))


def test_an_unknown_control_message_does_not_decode() -> None:
    with pytest.raises(msgspec.DecodeError):
        control.decode(b'{"kick":"bob","token":"x"}')  # the untagged shape of before
