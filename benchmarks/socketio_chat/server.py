"""The Chinwag chat semantics on python-socketio, for benchmarks/compare.py.

    python -m benchmarks.socketio_chat.server --port 9201 --redis-url redis://127.0.0.1:6390/0

A ``socketio.AsyncServer`` (aiohttp app, uvloop when installed) whose
``client_manager`` is ``socketio.AsyncRedisManager``, so several servers on
one Redis behave as one chat.  Events:

* ``login`` ``{user}``: claims the lowercased name with ``SET NX`` and a TTL
  (refreshed every TTL/3 while connected, deleted on disconnect if still
  ours), enters the room ``user:<name>``; acks ``{"ok": true, "user": ...}``
  or ``{"ok": false, "error": "taken"}``.
* ``dm`` ``{to, body, ref}``: emits ``message`` to the room of ``to`` (on
  whichever server it is connected to, through the Redis manager); acks
  ``{"id", "ts", "ref"}``.
* ``broadcast`` ``{body, ref}``: emits ``message`` to everyone; acks the same.

Messages are only relayed, never stored (python-socketio has no history), and
there are no passwords: this is the minimum the load in compare.py needs.
``GET /healthz`` answers 200 once Redis answers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from typing import Any

import redis.asyncio as aioredis
import socketio
from aiohttp import web

from common.redis import is_cluster_url, redacted_url

NAME_TTL = 30  # seconds a claimed name lives without refresh


def build_app(redis_url: str, node: str) -> web.Application:
    # redis-py's pool stops at 100 connections by default and the manager opens one per concurrent
    # publish: under load that fails with "Too many connections" and a reconnect, so allow more.
    mgr = socketio.AsyncRedisManager(redis_url, redis_options={"max_connections": 1024})
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)
    rds: aioredis.Redis = aioredis.from_url(redis_url)
    users: dict[str, str] = {}  # sid -> lowercased name, on this server
    ids = itertools.count(1)
    release = rds.register_script(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")

    def key(name: str) -> str:
        return f"sio:user:{name}"

    def stamp(ref: Any) -> dict[str, Any]:
        return {"id": f"{node}-{next(ids)}", "ts": int(time.time() * 1000), "ref": ref}

    @sio.event
    async def login(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        if sid in users:
            return {"ok": False, "error": "already_logged_in"}
        display = str(data.get("user", ""))
        name = display.lower()
        if not name or len(name) > 32:
            return {"ok": False, "error": "invalid"}
        if not await rds.set(key(name), sid, nx=True, ex=NAME_TTL):
            return {"ok": False, "error": "taken"}
        users[sid] = name
        await sio.enter_room(sid, f"user:{name}")
        await sio.save_session(sid, {"user": display})
        return {"ok": True, "user": display}

    @sio.event
    async def dm(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        if sid not in users:
            return {"error": "not_logged_in", "ref": data.get("ref")}
        ack = stamp(data.get("ref"))
        to = str(data.get("to", "")).lower()
        await sio.emit("message", {"id": ack["id"], "from": users[sid], "to": to, "body": data.get("body", ""),
                                   "ts": ack["ts"]}, room=f"user:{to}")
        return ack

    @sio.event
    async def broadcast(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        if sid not in users:
            return {"error": "not_logged_in", "ref": data.get("ref")}
        ack = stamp(data.get("ref"))
        await sio.emit("message", {"id": ack["id"], "from": users[sid], "to": "*", "body": data.get("body", ""),
                                   "ts": ack["ts"]})
        return ack

    @sio.event
    async def disconnect(sid: str, *args: Any) -> None:
        name = users.pop(sid, None)
        if name is not None:
            await release(keys=[key(name)], args=[sid])

    async def refresh() -> None:
        while True:
            await asyncio.sleep(NAME_TTL / 3)
            if users:
                async with rds.pipeline(transaction=False) as pipe:
                    for name in users.values():
                        pipe.expire(key(name), NAME_TTL)
                    await pipe.execute()

    async def healthz(request: web.Request) -> web.Response:
        await rds.ping()
        return web.Response(text="ok")

    async def on_startup(app: web.Application) -> None:
        app["refresher"] = asyncio.create_task(refresh())

    async def on_cleanup(app: web.Application) -> None:
        app["refresher"].cancel()
        if users:
            await rds.delete(*(key(n) for n in users.values()))
        await rds.aclose()

    app.router.add_get("/healthz", healthz)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    if is_cluster_url(args.redis_url):
        # The baseline is python-socketio's AsyncRedisManager as documented: one Redis, classic pub/sub.
        parser.error(f"--redis-url {redacted_url(args.redis_url)}: the socket.io comparison server runs on one "
                     "Redis (AsyncRedisManager), not a Redis Cluster; give it a redis:// URL")
    try:
        import uvloop  # Chinwag's gateways run on uvloop too
        uvloop.install()
    except ImportError:
        pass
    app = build_app(args.redis_url, f"sio{args.port}-{os.getpid()}")
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
