"""N headless browser tabs chatting through the web client: a smoke load test with the gateway's CPU per tab.

    chinwag-loadtest browser --start-cluster 1 --clients 20 --messages 5

Run by ``chinwag-loadtest browser`` (``--clients`` tabs, ``--start-cluster``
gateways). Starts its own cluster (redis-server on a free loopback port, presence, N
gateways: chinwag/cluster.py), opens one page of the web client in
Debian's chromium (Playwright; ``/usr/bin/chromium``, nothing downloaded),
one browser context per tab, spread over the gateways, and logs each in.
Then every tab sends ``--messages`` broadcasts, typed into the page, and the
run waits (bounded) until every tab holds every broadcast.  Reported: login
and chat time, deliveries per second, and the gateways' CPU seconds (psutil)
for the login phase and the chat phase, per browser client.  It is a smoke
test of many real browsers at once, not a throughput benchmark: the browsers
share the machine with the gateways and use most of its CPU
(``chinwag-loadtest`` measures the server with lightweight clients).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from chinwag.cluster import Cluster, free_base_port

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def gateway_cpu(cluster: Cluster) -> float:
    """CPU seconds (user + system) the gateway processes have used so far."""
    total = 0.0
    for name, proc in cluster.procs:
        if name.startswith("gateway"):
            try:
                times = psutil.Process(proc.pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


async def log_in(page: Any, url: str, user: str, timeout_ms: float) -> None:
    await page.goto(url, timeout=timeout_ms)
    await page.fill("#login-user", user)
    await page.fill("#login-password", "pw")
    await page.click("#login-submit")
    await page.locator("#chat-view").wait_for(state="visible", timeout=timeout_ms)


async def chat(page: Any, tab: int, messages: int) -> None:
    for i in range(messages):
        await page.fill("#composer-input", f"tab {tab} says {i}")
        await page.press("#composer-input", "Enter")


async def run(tabs: int, messages: int, gateways: int, chromium: str, timeout: float) -> dict[str, Any]:
    from playwright.async_api import async_playwright  # the dev extra; only this script needs it

    timeout_ms = timeout * 1000
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CHINWAG_RATE_MESSAGES": "0", "CHINWAG_IP_CONNECTIONS": "0", "CHINWAG_IP_LOGINS": "0"}
        cluster = Cluster(gateways=gateways, base_port=free_base_port("127.0.0.1", gateways), data_dir=Path(tmp),
                          log_level="WARNING", appendonly=False, extra_env=env)
        try:
            cluster.up()
            urls = [f"http://127.0.0.1:{port}/" for port in cluster.gateway_ports()]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=timeout_ms)
                try:
                    pages = [await (await browser.new_context()).new_page() for _ in range(tabs)]
                    cpu0, t0 = gateway_cpu(cluster), time.perf_counter()
                    await asyncio.gather(*(log_in(p, urls[i % gateways], f"tab{i}", timeout_ms)
                                           for i, p in enumerate(pages)))
                    cpu1, t1 = gateway_cpu(cluster), time.perf_counter()
                    await asyncio.gather(*(chat(p, i, messages) for i, p in enumerate(pages)))
                    want = tabs * messages
                    check = ("n => window.chinwag.convs.get('*').entries"
                             ".filter(e => e.id && e.body.startsWith('tab ')).length >= n")
                    await asyncio.gather(*(p.wait_for_function(check, arg=want, timeout=timeout_ms) for p in pages))
                    cpu2, t2 = gateway_cpu(cluster), time.perf_counter()
                    duplicates = sum([await p.evaluate("window.chinwag.core.duplicates") for p in pages])
                finally:
                    await browser.close()
        finally:
            cluster.down()
    deliveries = tabs * tabs * messages
    return {
        "tabs": tabs, "gateways": gateways, "messages_sent": tabs * messages, "deliveries": deliveries,
        "login_s": round(t1 - t0, 3), "chat_s": round(t2 - t1, 3),
        "deliveries_per_s": round(deliveries / max(t2 - t1, 1e-9), 1),
        "gateway_cpu_login_s": round(cpu1 - cpu0, 3), "gateway_cpu_chat_s": round(cpu2 - cpu1, 3),
        "gateway_cpu_ms_per_tab": round((cpu2 - cpu0) * 1000 / tabs, 2),
        "duplicates_dropped": duplicates,
    }
