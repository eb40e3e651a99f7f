"""The web client in a real Chromium against real gateways and a real Redis.

Each test starts its own redis-server and gateway processes (tests/conftest.py)
and opens pages in separate browser contexts (separate people).  Nothing
sleeps to synchronise: every step waits on something visible on the page, or
on a ChatClient event, with a deadline (tests/web/conftest.py sets
Playwright's to 10 s).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from protocol import frames as f
from tests.helpers import Clients, Proc, Processes, RedisServer, free_port, self_signed_cert, wait_for_event
from tests.web.steps import log_in, open_conv, say, shown

pytestmark = pytest.mark.timeout(90)

AXE = Path(__file__).parent / "fixtures" / "axe.min.js"


def http_url(gw: Proc, query: str = "") -> str:
    return f"http://127.0.0.1:{gw.port}/{query}"


def gateways(processes: Processes, redis: RedisServer, blob_dir: Path, n: int, *args: str) -> list[Proc]:
    return [processes.gateway(redis.url, args=["--blob-dir", str(blob_dir), *args]) for _ in range(n)]


def png(width: int = 4, height: int = 3) -> bytes:
    """A small valid PNG, made here (no fixture file to go stale)."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 60 % 256, y * 80 % 256, 200)) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def test_two_browsers_on_two_gateways_chat_in_every_way(
    redis_server: RedisServer, processes: Processes, pages: Any, tmp_path: Path
) -> None:
    gw1, gw2 = gateways(processes, redis_server, tmp_path / "blobs", 2)
    alice = await pages(http_url(gw1))
    bob = await pages(http_url(gw2))
    await log_in(alice, "alice")
    await log_in(bob, "bob")
    assert await alice.get_attribute("body", "data-node") != await bob.get_attribute("body", "data-node")
    await alice.locator('#online [data-user="bob"]').wait_for()  # live presence

    # Broadcast: the open conversation at login is Everyone.
    await say(alice, "hello everyone")
    await shown(bob, "hello everyone").wait_for()
    await shown(alice, "hello everyone").wait_for()

    # DM, with an unread count on the other side until it is opened.
    await alice.click('#online [data-user="bob"]')
    await say(alice, "hi bob")
    await shown(alice, "hi bob").wait_for()
    await bob.locator('#conversations [data-conv="@alice"] [data-unread="1"]').wait_for()
    assert await bob.title() == "(1) Chinwag"
    await open_conv(bob, "@alice")
    await shown(bob, "hi bob").wait_for()
    assert await bob.locator('#conversations [data-unread]').count() == 0
    await say(bob, "hi alice")
    await alice.locator("#messages li[data-id]").filter(has_text="hi alice").wait_for()

    # Groups: create, join, message; an invite-only group joined from an invitation.
    await alice.fill("#group-create-name", "Devs")
    await alice.click("#group-create button")
    await alice.locator("#conv-title").filter(has_text="#Devs").wait_for()
    await bob.fill("#group-join-name", "devs")
    await bob.click("#group-join button")
    await bob.locator("#conv-title").filter(has_text="#Devs").wait_for()
    await alice.locator("#messages li.system").filter(has_text="bob joined").wait_for()
    await say(alice, "to the group")
    await shown(bob, "to the group").wait_for()
    await bob.click("#group-members")
    await bob.locator("#group-members-list").filter(has_text="Members: alice, bob").wait_for()

    await alice.fill("#group-create-name", "Secret")
    await alice.check("#group-create-private")
    await alice.click("#group-create button")
    await alice.locator("#conv-title").filter(has_text="#Secret").wait_for()
    await alice.fill("#group-invite-user", "bob")
    await alice.click("#group-invite button")
    await bob.click('#invitations button[aria-label="Join #Secret"]')
    await bob.locator("#conv-title").filter(has_text="#Secret").wait_for()
    await say(bob, "thanks for the invite")
    await shown(alice, "thanks for the invite").wait_for()
    await bob.click("#group-leave")
    await alice.locator("#messages li.system").filter(has_text="bob left").wait_for()

    # Files: an image shown inline, and a file of several chunks downloaded intact.
    await open_conv(alice, "@bob")
    picture = png()
    await alice.set_input_files("#file-input", files=[{"name": "cat.png", "mimeType": "image/png",
                                                       "buffer": picture}])
    await alice.locator("#messages li[data-id] [data-file]").first.wait_for()
    await open_conv(bob, "@alice")
    image = bob.locator('#messages img[alt="image cat.png"]')
    await image.wait_for()
    await bob.wait_for_function("document.querySelector('#messages img').naturalWidth === 4")
    blob = os.urandom(600_000)  # three chunks of 256 KiB
    await alice.set_input_files("#file-input", files=[{"name": "data.bin", "mimeType": "application/octet-stream",
                                                       "buffer": blob}])
    button = bob.get_by_role("button", name="Download data.bin (586 KiB)")
    async with bob.expect_download() as info:
        await button.click()
    saved = tmp_path / "saved.bin"
    await (await info.value).save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(blob).digest()

    # Every message exactly once, on both sides.
    for page, texts in ((alice, ["hi bob", "hi alice"]), (bob, ["hi bob", "hi alice"])):
        for text in texts:
            assert await shown(page, text).count() == 1
    assert alice.errors == [] and bob.errors == []


async def test_a_taken_name_says_username_exists_and_a_wrong_password_says_so(
    redis_server: RedisServer, processes: Processes, pages: Any, tmp_path: Path
) -> None:
    gw1, gw2 = gateways(processes, redis_server, tmp_path / "blobs", 2)
    alice = await pages(http_url(gw1))
    await log_in(alice, "alice", "secret")
    other = await pages(http_url(gw2))
    await other.fill("#login-user", "ALICE")
    await other.fill("#login-password", "secret")
    await other.click("#login-submit")
    error = other.locator("#login-error")
    await error.filter(has_text="Username Exists").wait_for()
    assert await other.locator("#chat-view").is_hidden()
    await other.fill("#login-password", "wrong")
    await other.click("#login-submit")
    await error.filter(has_text="Wrong password").wait_for()
    await alice.locator("#status").filter(has_text="Connected").wait_for()  # the holder is untouched


async def test_a_page_fails_over_when_its_gateway_is_killed_and_shows_every_message_once(
    redis_server: RedisServer, processes: Processes, pages: Any, clients: Clients, tmp_path: Path
) -> None:
    gw1, gw2 = gateways(processes, redis_server, tmp_path / "blobs", 2)
    # Three ports nobody listens on between the two: the page tries each in turn (connection refused,
    # backoff growing) before it reaches gw2, which keeps it disconnected long enough to type into.
    dead = [free_port() for _ in range(3)]
    urls = [f"ws://127.0.0.1:{port}" for port in (gw1.port, *dead, gw2.port)]
    listed = "?gateways=" + ",".join(urls)
    alice = await pages(http_url(gw1, listed))
    await log_in(alice, "alice")
    bob = await clients.login(gw2.url, "bob")
    for i in range(3):
        await bob.send("@alice", f"before {i}")
    await bob.send("*", "broadcast before")
    await alice.locator('#conversations [data-conv="@bob"] [data-unread="3"]').wait_for()
    first_node = await alice.get_attribute("body", "data-node")

    gw1.kill()
    await alice.locator("#status").filter(has_text="Reconnect").wait_for()
    await say(alice, "sent while away")  # shown as pending until the new connection's ack
    await alice.locator("#messages li.pending").filter(has_text="sent while away").wait_for()
    for i in range(3):
        await bob.send("@alice", f"during {i}")
    await bob.send("*", "broadcast during")

    await alice.locator('body[data-welcomes="2"]').wait_for(timeout=20_000)
    assert await alice.get_attribute("body", "data-node") != first_node
    await shown(alice, "sent while away").wait_for()
    assert await alice.locator("#messages li.pending").count() == 0
    got = await wait_for_event(bob, lambda e: isinstance(e, f.Message) and e.body == "sent while away")
    assert isinstance(got, f.Message)
    for text in ("broadcast before", "broadcast during", "sent while away"):
        assert await shown(alice, text).count() == 1, text
    await open_conv(alice, "@bob")
    await shown(alice, "during 2").wait_for()
    for i in range(3):
        for text in (f"before {i}", f"during {i}"):
            assert await shown(alice, text).count() == 1, text
    assert await alice.evaluate("window.chinwag.core.duplicates") >= 0
    assert [e for e in alice.errors if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e] == []


# The tab is in the background and may notify: what it shows is recorded (the desktop's own
# notifications are not something a headless browser has).
HIDDEN_TAB = """
Object.defineProperty(Document.prototype, "hidden", { get: () => true });
window.shownNotifications = [];
window.Notification = class {
  constructor(title, options) { window.shownNotifications.push([title, options.body]); }
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
};
"""


async def test_a_python_client_and_a_browser_chat(
    redis_server: RedisServer, processes: Processes, pages: Any, clients: Clients, tmp_path: Path
) -> None:
    gw1, gw2 = gateways(processes, redis_server, tmp_path / "blobs", 2)
    carol = await clients.login(gw1.url, "carol")
    for i in range(60):  # before dave's first login: reached by scrolling back through history only
        await carol.send("*", f"old news {i}")
    dave = await pages(http_url(gw2), init_script=HIDDEN_TAB)
    await log_in(dave, "dave")
    await shown(dave, "old news 59").wait_for()
    assert await dave.locator("#messages li[data-id]").count() == 50  # one page
    await dave.click("#older")
    await shown(dave, "old news 0").wait_for()
    assert await dave.locator("#messages li[data-id]").count() == 60
    await dave.locator("#older:disabled").filter(has_text="No older messages").wait_for()  # 10 < 50: the last

    await carol.send("@dave", "hello from python")
    await dave.wait_for_function("window.shownNotifications.length > 0")
    assert await dave.evaluate("window.shownNotifications") == [["carol", "hello from python"]]
    await dave.locator('#conversations [data-conv="@carol"]').click()
    await shown(dave, "hello from python").wait_for()
    await say(dave, "hello from the browser")
    got = await wait_for_event(carol, lambda e: isinstance(e, f.Message) and e.body == "hello from the browser")
    assert isinstance(got, f.Message) and got.from_ == "dave" and got.to == "@carol"
    await open_conv(dave, "*")
    await say(dave, "to all")
    got = await wait_for_event(carol, lambda e: isinstance(e, f.Message) and e.to == "*")
    assert isinstance(got, f.Message) and got.body == "to all"


async def test_accessibility_phone_width_keyboard_and_screenshot(
    redis_server: RedisServer, processes: Processes, pages: Any, clients: Clients, tmp_path: Path
) -> None:
    (gw,) = gateways(processes, redis_server, tmp_path / "blobs", 1, "--allowed-origins", "https://elsewhere.example")
    # bypass_csp: axe is injected as an inline script, which the page's CSP rightly refuses.
    page = await pages(http_url(gw), bypass_csp=True, viewport={"width": 1100, "height": 700})

    async def serious_violations() -> list[str]:
        await page.add_script_tag(content=AXE.read_text())
        result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        return [f"{v['id']} ({v['impact']}): {v['help']}" for v in result["violations"]
                if v["impact"] in ("serious", "critical")]

    assert await serious_violations() == []
    # Keyboard only: the focus starts in the name, Tab goes to the password, Enter logs in.
    assert await page.evaluate("document.activeElement.id") == "login-user"
    await page.keyboard.type("erin")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "login-password"
    await page.keyboard.type("pw")
    await page.keyboard.press("Enter")
    await page.locator("#chat-view").wait_for(state="visible")  # the own-origin page passed the allow-list
    frank = await clients.login(gw.url, "frank")
    await frank.send("*", "Welcome to Chinwag, erin!")
    await frank.send("@erin", "Lunch at noon?")
    await shown(page, "Welcome to Chinwag").wait_for()
    await page.keyboard.type("Thanks! Happy to be here.")
    await page.keyboard.press("Enter")
    await shown(page, "Happy to be here").wait_for()
    assert await page.locator("#announce p").filter(has_text="Lunch at noon?").count() == 1  # aria-live
    assert await serious_violations() == []
    screenshot = os.environ.get("CHINWAG_WEB_SCREENSHOT")
    await page.screenshot(path=screenshot or str(tmp_path / "web-client.png"))

    await page.set_viewport_size({"width": 390, "height": 800})  # a phone
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    await page.locator("#composer-input").scroll_into_view_if_needed()
    assert await page.locator("#send").is_visible()
    if screenshot:
        await page.screenshot(path=screenshot.replace(".png", "-phone.png"), full_page=True)
    assert page.errors == []


async def test_sends_over_the_rate_limit_are_retried_until_acked(
    redis_server: RedisServer, processes: Processes, pages: Any, clients: Clients, tmp_path: Path
) -> None:
    gw = processes.gateway(redis_server.url, env={"CHINWAG_RATE_MESSAGES": "4", "CHINWAG_RATE_BURST": "1"})
    watcher = await clients.login(gw.url, "watcher")
    page = await pages(http_url(gw))
    await log_in(page, "hasty")
    # Four sends at once, faster than 4 a second with a burst of 1: some get rate_limited first.
    await page.evaluate("for (let i = 0; i < 4; i++) window.chinwag.send('*', `quick ${i}`)")
    for i in range(4):
        await shown(page, f"quick {i}").wait_for()
    assert await page.locator("#messages li.failed, #messages li.pending").count() == 0
    bodies: list[str] = []
    while len(bodies) < 4:
        got = await wait_for_event(watcher, lambda e: isinstance(e, f.Message) and e.body.startswith("quick"))
        assert isinstance(got, f.Message)
        bodies.append(got.body)
    assert sorted(bodies) == [f"quick {i}" for i in range(4)]  # each stored once
    assert 'chinwag_errors_total{code="rate_limited"}' in gw.http_get("/metrics")  # the limit did bite


async def test_over_https_and_wss(
    redis_server: RedisServer, processes: Processes, pages: Any, clients: Clients, tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    (gw,) = gateways(processes, redis_server, tmp_path / "blobs", 1, "--tls-cert", str(cert), "--tls-key", str(key))
    # The browser is told to accept the test's own certificate; the Python client verifies it.
    page = await pages(f"https://127.0.0.1:{gw.port}/", ignore_https_errors=True)
    await log_in(page, "tess")
    assert await page.evaluate("window.chinwag.ws.url") == f"wss://127.0.0.1:{gw.port}/"
    uma = await clients.login(f"wss://127.0.0.1:{gw.port}", "uma", ca_file=str(cert))
    await uma.send("@tess", "secure hello")
    await page.click('#conversations [data-conv="@uma"]')
    await shown(page, "secure hello").wait_for()
    await page.set_input_files("#file-input", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": png()}])
    await page.locator('#messages img[alt="image dot.png"]').wait_for()  # uploaded over wss, fetched over https
    got = await wait_for_event(uma, lambda e: isinstance(e, f.Message) and e.file is not None)
    assert isinstance(got, f.Message) and got.file is not None and got.file.name == "dot.png"


# crypto.subtle exists only in secure contexts (https, localhost): a page on plain http from
# another host hashes uploads with core.js's own SHA-256, which the gateway then checks.
NO_SUBTLE = 'Object.defineProperty(Crypto.prototype, "subtle", { get: () => undefined });'


async def test_an_upload_without_web_crypto_hashes_in_javascript(
    redis_server: RedisServer, processes: Processes, pages: Any, tmp_path: Path
) -> None:
    (gw,) = gateways(processes, redis_server, tmp_path / "blobs", 1)
    page = await pages(http_url(gw), init_script=NO_SUBTLE)
    await log_in(page, "vic")
    assert await page.evaluate("crypto.subtle === undefined")
    data = os.urandom(300_000)
    await page.set_input_files("#file-input", files=[{"name": "r.bin", "mimeType": "application/octet-stream",
                                                      "buffer": data}])
    item = page.locator("#messages li[data-id] [data-file]")
    await item.wait_for()
    assert await item.get_attribute("data-file") == hashlib.sha256(data).hexdigest()
