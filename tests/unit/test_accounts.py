"""The login guard's decisions (gateway/accounts.py Lua), on fakeredis with cheap argon2.

The concurrency bound itself is shown against real gateways in
tests/integration/test_login_guard.py; here each rule of the budget, one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest

from common import keys
from gateway.accounts import MAX_TOKENS, Accounts
from protocol.errors import BadPassword, InvalidUsername, RateLimited, UsernameConfusable
from protocol.names import login_name

BUDGET = 3
HOME, CAFE = "10.0.0.1", "10.0.0.2"


@pytest.fixture
async def accounts(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[Accounts]:
    acc = Accounts(redis, time_cost=1, memory_kib=64, max_failures=BUDGET, lockout_seconds=60, token_seconds=3600)
    yield acc
    acc.close()


async def login(
    accounts: Accounts, name: str, password: str, *, ip: str = "", token: str | None = None, issued: str = "t"
) -> str:
    return await accounts.authenticate(login_name(name), password, issued=issued, presented=token, ip=ip)


async def test_registration_then_wrong_passwords_spend_the_strangers_budget(accounts: Accounts) -> None:
    assert await login(accounts, "Owner", "right", ip=HOME, issued="issued-at-home") == "Owner"
    for _ in range(BUDGET):
        with pytest.raises(BadPassword):
            await login(accounts, "owner", "wrong", ip=CAFE)
    with pytest.raises(RateLimited) as locked:  # the right password is not even checked
        await login(accounts, "owner", "right", ip=CAFE)
    assert locked.value.retry_after is not None and 0 < locked.value.retry_after <= 60
    assert await login(accounts, "owner", "right", ip=HOME) == "Owner"  # the owner's address: its own budget
    assert await login(accounts, "owner", "right", ip="10.9.9.9", token="issued-at-home") == "Owner"


async def test_a_session_token_the_account_was_issued_is_its_own_budget(accounts: Accounts) -> None:
    await login(accounts, "owner", "right", ip=HOME, issued="tok1")
    for _ in range(BUDGET):
        with pytest.raises(BadPassword):
            await login(accounts, "owner", "wrong", ip=CAFE)
    with pytest.raises(RateLimited):
        await login(accounts, "owner", "right", ip=CAFE, token="not-issued")
    assert await login(accounts, "owner", "right", ip=CAFE, token="tok1") == "owner"


async def test_a_token_of_another_account_proves_nothing(accounts: Accounts) -> None:
    await login(accounts, "owner", "right", ip=HOME, issued="owner-token")
    await login(accounts, "mallory", "pw", ip=CAFE, issued="mallory-token")
    for _ in range(BUDGET):
        with pytest.raises(BadPassword):
            await login(accounts, "owner", "wrong", ip=CAFE, token="mallory-token")
    with pytest.raises(RateLimited):
        await login(accounts, "owner", "wrong", ip=CAFE, token="mallory-token")


async def test_only_the_newest_tokens_are_remembered(accounts: Accounts, redis: fakeredis.FakeAsyncRedis) -> None:
    for i in range(MAX_TOKENS + 4):
        await login(accounts, "owner", "right", ip=HOME, issued=f"tok{i}")
    remembered = {m.decode() for m in await redis.zrange(keys.login_tokens("owner"), 0, -1)}
    assert remembered == {f"tok{i}" for i in range(4, MAX_TOKENS + 4)}
    assert 0 < await redis.pttl(keys.login_tokens("owner")) <= 3_600_000


async def test_right_passwords_give_their_unit_back(accounts: Accounts, redis: fakeredis.FakeAsyncRedis) -> None:
    await login(accounts, "owner", "right", ip=HOME)
    for i in range(3 * BUDGET):  # each from a new address: a stranger's login every time
        assert await login(accounts, "owner", "right", ip=f"10.1.0.{i}") == "owner"
    assert int(await redis.get(keys.login_budget("owner", "stranger")) or 0) == 0


async def test_a_success_resets_the_owners_budget_but_not_the_strangers(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    await login(accounts, "owner", "right", ip=HOME)
    with pytest.raises(BadPassword):
        await login(accounts, "owner", "typo", ip=HOME)
    with pytest.raises(BadPassword):
        await login(accounts, "owner", "guess", ip=CAFE)
    await login(accounts, "owner", "right", ip=HOME)
    assert await redis.get(keys.login_budget("owner", "ip")) is None
    assert int(await redis.get(keys.login_budget("owner", "stranger"))) == 1


async def test_concurrent_guesses_take_at_most_the_budget(accounts: Accounts) -> None:
    await login(accounts, "owner", "right", ip=HOME)
    results = await asyncio.gather(
        *(login(accounts, "owner", f"guess{i}", ip=CAFE) for i in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, BadPassword) for r in results) == BUDGET
    assert sum(isinstance(r, RateLimited) for r in results) == 20 - BUDGET


async def test_look_alikes_and_legacy_names(accounts: Accounts, redis: fakeredis.FakeAsyncRedis) -> None:
    await login(accounts, "alicec", "pw")
    for look_alike in ("\u0430licec", "al\u0131cec", "\u0430\u04cf\u0456\u0441\u0435\u0441", "aIicec"):
        with pytest.raises(UsernameConfusable):
            await login(accounts, look_alike, "pw")
        assert not await redis.exists(keys.account(login_name(look_alike).key))
    with pytest.raises(InvalidUsername):  # a name only the older rules accept: no new account
        await login(accounts, "bob\u3164", "pw")
    assert await login(accounts, "ALICEC", "pw") == "alicec"


async def test_backfill_claims_stored_accounts_once(accounts: Accounts, redis: fakeredis.FakeAsyncRedis) -> None:
    await redis.hset(keys.account("carol"), mapping={"name": "Carol", "pw": "x"})
    await redis.hset(keys.account("dave\u1160"), mapping={"name": "dave\u1160", "pw": "x"})
    assert await accounts.backfill_skeletons(batch=1) == 2
    assert await accounts.backfill_skeletons() == 0  # the marker: once per Redis
    for look_alike in ("c\u0430rol", "dave"):
        with pytest.raises(UsernameConfusable):
            await login(accounts, look_alike, "pw")
