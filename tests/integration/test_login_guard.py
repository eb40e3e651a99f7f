"""The login guard against real gateways: a guess budget taken in Redis before hashing,
owners who are not locked out by strangers, and look-alike names refused.

Clients on 127.0.0.2 and 127.0.0.3 are other addresses of the loopback
interface: a gateway sees them as different IPs than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
import pytest
from argon2 import PasswordHasher
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from common import keys
from protocol import frames as f
from tests.helpers import Proc, Processes, RedisServer, async_wait_until

BUDGET = 5
GUARD_ENV = {"CHINWAG_LOGIN_FAILURES": str(BUDGET), "CHINWAG_LOCKOUT_SECONDS": "120"}
OWNER_IP, OTHER_IP, STRANGER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.1"


async def login_from(
    url: str, ip: str, user: str, password: str, session: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    """Send one login from ``ip`` and return its answer (``welcome`` or ``error``) as a dict."""
    async with connect(url, local_addr=(ip, 0), open_timeout=timeout) as ws:
        await ws.send(f.encode(f.Login(v=1, user=user, password=password, session=session, ref="l")), text=True)
        answer: dict[str, Any] = msgspec.json.decode(await asyncio.wait_for(ws.recv(decode=False), timeout))
        return answer


def outcome(answer: dict[str, Any]) -> str:
    return "welcome" if answer["type"] == "welcome" else str(answer["code"])


def logins_by_result(gateways: list[Proc]) -> dict[str, int]:
    """``chinwag_logins_total`` summed over the gateways, by result."""
    totals: dict[str, int] = {}
    for gw in gateways:
        for result, value in re.findall(r'^chinwag_logins_total\{result="([^"]+)"\} (\S+)$',
                                         gw.http_get("/metrics"), re.M):
            totals[result] = totals.get(result, 0) + int(float(value))
    return totals


@pytest.fixture
def guarded(redis_server: RedisServer, processes: Processes) -> list[Proc]:
    return [processes.gateway(redis_server.url, env=GUARD_ENV) for _ in range(2)]


async def _register_owner(url: str) -> str:
    """Register ``owner`` from OWNER_IP; the session token of its welcome."""
    welcome = await login_from(url, OWNER_IP, "owner", "right")
    assert welcome["type"] == "welcome", welcome
    return str(welcome["session"])


async def _guess_concurrently(gateways: list[Proc], n: int = 40) -> list[str]:
    """n wrong passwords at once from a stranger's address, split over the gateways."""
    answers = await asyncio.gather(*(
        login_from(gateways[i % len(gateways)].url, STRANGER_IP, "owner", f"guess-{i}") for i in range(n)
    ))
    return [outcome(a) for a in answers]


async def test_concurrent_guesses_on_two_gateways_get_at_most_the_budget(guarded: list[Proc]) -> None:
    """Issue 11.2: 40 wrong passwords at once, 20 per gateway: at most BUDGET are checked."""
    await _register_owner(guarded[0].url)
    results = await _guess_concurrently(guarded)
    print(f"\n40 concurrent guesses: {results.count('bad_password')} bad_password, "
          f"{results.count('rate_limited')} rate_limited")
    assert results.count("bad_password") <= BUDGET
    assert results.count("bad_password") + results.count("rate_limited") == 40, results
    # Counted on the gateways too: every password check that ran was a bad_password.
    assert logins_by_result(guarded).get("bad_password", 0) <= BUDGET
    # The stranger's budget is spent: even the right password is not checked.
    locked = await login_from(guarded[1].url, STRANGER_IP, "owner", "right")
    assert outcome(locked) == "rate_limited" and 0 < locked["retry_after"] <= 120


async def test_the_owner_still_logs_in_while_strangers_are_locked_out(guarded: list[Proc]) -> None:
    """Issue 11.2: strangers' guesses do not lock out the owner's token or last address."""
    token = await _register_owner(guarded[0].url)
    guesses = [outcome(await login_from(guarded[i % 2].url, STRANGER_IP, "owner", f"guess-{i}"))
               for i in range(BUDGET + 3)]
    assert guesses == ["bad_password"] * BUDGET + ["rate_limited"] * 3
    assert outcome(await login_from(guarded[0].url, STRANGER_IP, "owner", "right")) == "rate_limited"
    # From a new address, a made-up or stolen-looking token is no proof: still a stranger.
    assert outcome(await login_from(guarded[1].url, OTHER_IP, "owner", "right", session="x" * 32)) == "rate_limited"
    # The owner, from the address of the last successful login:
    again = await login_from(guarded[1].url, OWNER_IP, "owner", "right")
    assert outcome(again) == "welcome"
    # ... and from anywhere else with a session token an earlier welcome gave:
    assert outcome(await login_from(guarded[0].url, OTHER_IP, "owner", "right", session=token)) == "welcome"
    assert outcome(await login_from(guarded[1].url, OTHER_IP, "owner", "right", session=again["session"])) == "welcome"
    # The trusted kinds have budgets of their own, which wrong passwords spend too: OTHER_IP
    # is now the last successful address; its budget spent, a token still gets through.
    for i in range(BUDGET):
        assert outcome(await login_from(guarded[0].url, OTHER_IP, "owner", f"typo-{i}")) == "bad_password"
    assert outcome(await login_from(guarded[0].url, OTHER_IP, "owner", "right")) == "rate_limited"
    assert outcome(await login_from(guarded[1].url, OTHER_IP, "owner", "right", session=token)) == "welcome"


async def test_right_passwords_do_not_use_the_budget_up(guarded: list[Proc]) -> None:
    """A right password gives its unit back: the owner can log in any number of times."""
    await _register_owner(guarded[0].url)
    for i in range(3 * BUDGET):
        ip = (STRANGER_IP, OTHER_IP)[i % 2]  # each a new address, so each a stranger's login
        # The last login's socket is closed, but its gateway frees the name just after: until it
        # has, the other gateway answers username_taken (also a right password, also given back).
        deadline = time.monotonic() + 30
        while (result := outcome(await login_from(guarded[i % 2].url, ip, "owner", "right"))) == "username_taken":
            assert time.monotonic() < deadline, "the name was never freed"
            await asyncio.sleep(0.05)  # pacing between bounded attempts, not synchronisation
        assert result == "welcome"


# -- look-alike names (issue 11.5) ----------------------------------------------------------

LOOK_ALIKES = {
    "\u0430licec": "username_confusable",  # Cyrillic a
    "al\u0131cec": "username_confusable",  # dotless i
    "a\u0406icec": "username_confusable",  # Cyrillic capital I, shown as "aIicec"
    "\u0430\u04cf\u0456\u0441\u0435\u0441": "username_confusable",  # all Cyrillic
    "alicec\u3164": "invalid_username",  # Hangul filler: invisible
    "alicec\u115f": "invalid_username",
    "ali\u200bcec": "invalid_username",  # zero width space
}


async def test_look_alike_names_are_refused_while_the_original_exists(
    redis_server: RedisServer, processes: Processes
) -> None:
    gw = processes.gateway(redis_server.url)
    async with connect(gw.url) as original:  # alicec online the whole time
        await original.send(f.encode(f.Login(v=1, user="alicec", password="pw")), text=True)
        assert msgspec.json.decode(await original.recv(decode=False))["type"] == "welcome"
        results = {name: outcome(await login_from(gw.url, STRANGER_IP, name, "pw")) for name in LOOK_ALIKES}
        assert results == LOOK_ALIKES
    assert outcome(await login_from(gw.url, STRANGER_IP, "ALICEC", "pw")) == "welcome"  # the owner is fine
    assert outcome(await login_from(gw.url, STRANGER_IP, "alice", "pw")) == "welcome"  # a different name


async def test_two_look_alikes_registered_at_once_one_wins(redis_server: RedisServer, processes: Processes) -> None:
    """The skeleton is claimed in the Lua call that creates the account: never both."""
    gws = [processes.gateway(redis_server.url) for _ in range(2)]
    for n in range(5):
        latin, cyrillic = f"bob{n}", f"b\u043eb{n}"
        answers = await asyncio.gather(
            login_from(gws[0].url, STRANGER_IP, latin, "pw"), login_from(gws[1].url, STRANGER_IP, cyrillic, "pw")
        )
        assert sorted(outcome(a) for a in answers) == ["username_confusable", "welcome"], answers


async def test_accounts_stored_under_the_older_rules_keep_working(
    redis_server: RedisServer, processes: Processes
) -> None:
    """A stored name the new rules refuse still logs in; stored accounts get their skeletons at start."""
    digest = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")
    redis = Redis.from_url(redis_server.url)
    try:
        # As the code before PRECIS stored them: a name with a Hangul filler, and a plain one.
        await redis.hset(keys.account("carol\u1160"), mapping={"name": "carol\u1160", "pw": digest})
        await redis.hset(keys.account("dave"), mapping={"name": "Dave", "pw": digest})
        gw = processes.gateway(redis_server.url)
        await async_wait_until(lambda: redis.exists(keys.SKELETONS_BACKFILLED), 20, "the skeleton backfill")
        welcome = await login_from(gw.url, STRANGER_IP, "carol\u3164", "pw")  # NFKC: U+3164 -> U+1160
        assert outcome(welcome) == "welcome" and welcome["user"] == "carol\u1160"
        assert outcome(await login_from(gw.url, STRANGER_IP, "erin\u3164", "pw")) == "invalid_username"  # no new ones
        assert outcome(await login_from(gw.url, STRANGER_IP, "d\u0430ve", "pw")) == "username_confusable"
        assert outcome(await login_from(gw.url, STRANGER_IP, "carol", "pw")) == "username_confusable"
        assert outcome(await login_from(gw.url, STRANGER_IP, "dave", "pw")) == "welcome"
    finally:
        await redis.aclose()
