"""Registration in ordered single-slot steps (gateway/skeletons.py): each crash between steps is repaired.

fakeredis with cheap argon2; the same scripts run on a real Redis Cluster in
tests/integration/test_accounts_cluster.py.  A crash is a cancelled login
(nothing is cleaned up on a cancel, as after ``kill -9``) or the state a crash
leaves, written directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from common import keys
from gateway import accounts as accounts_module
from gateway.accounts import Accounts
from gateway.skeletons import Skeletons, skeleton_keys
from protocol.errors import Unavailable, UsernameConfusable
from protocol.names import login_name
from tests.helpers import async_wait_until

LOOK_ALIKE = "\u0430licec"  # Cyrillic a: the same skeletons as alicec


@pytest.fixture
async def accounts(redis: fakeredis.FakeAsyncRedis) -> AsyncIterator[Accounts]:
    acc = Accounts(redis, time_cost=1, memory_kib=64, max_failures=50, lockout_seconds=60)
    yield acc
    acc.close()


async def login(accounts: Accounts, name: str, password: str = "pw") -> str:
    return await accounts.authenticate(login_name(name), password, issued="t")


async def holders(redis: fakeredis.FakeAsyncRedis, key: str) -> list[str | None]:
    values = [await redis.get(sk) for sk in skeleton_keys(key)]
    return [v.decode() if v is not None else None for v in values]


async def stall_before_create(accounts: Accounts, name: str) -> asyncio.Task[str]:
    """A registration that stops just before the account step; returns once its claims are written."""
    stalled = asyncio.Event()

    async def never(**_: Any) -> Any:
        stalled.set()
        await asyncio.Event().wait()

    accounts._create = never  # type: ignore[method-assign]
    task = asyncio.create_task(login(accounts, name))
    await asyncio.wait_for(stalled.wait(), 10)
    return task


async def test_a_crash_after_the_claims_blocks_look_alikes_only_until_the_lease_ends(
    redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_module, "REGISTRATION_LEASE_MS", 300)
    crashed = Accounts(redis, time_cost=1, memory_kib=64)
    task = await stall_before_create(crashed, "alicec")
    task.cancel()  # the gateway dies here: claims written, no account, nothing cleaned up
    with pytest.raises(asyncio.CancelledError):
        await task
    crashed.close()
    assert not await redis.exists(keys.account("alicec"))
    assert all(h is not None and h.startswith("alicec ") for h in await holders(redis, "alicec"))
    other = Accounts(redis, time_cost=1, memory_kib=64)
    try:
        with pytest.raises(UsernameConfusable):  # the attempt's lease is on: it may still create its account
            await login(other, LOOK_ALIKE)
        await async_wait_until(lambda: _no_attempts(redis, "alicec"), 10, "the lease to end")
        assert await login(other, LOOK_ALIKE) == LOOK_ALIKE  # the dead attempt's claims are free
        key = login_name(LOOK_ALIKE).key
        assert await holders(redis, "alicec") == [key, key]  # the successful login holds them for good
        with pytest.raises(UsernameConfusable):
            await login(other, "alicec")
    finally:
        other.close()


async def test_the_same_name_retrying_after_a_crash_takes_its_own_claims_at_once(
    redis: fakeredis.FakeAsyncRedis
) -> None:
    crashed = Accounts(redis, time_cost=1, memory_kib=64)
    task = await stall_before_create(crashed, "alicec")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    crashed.close()
    retry = Accounts(redis, time_cost=1, memory_kib=64)
    try:
        assert await login(retry, "alicec") == "alicec"  # the lease is still on: a holder re-claims its own
        assert await holders(redis, "alicec") == ["alicec", "alicec"]
    finally:
        retry.close()


async def test_an_attempt_whose_lease_ran_out_cannot_create_its_account(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    """The takeover is safe: once a claim was taken over, its attempt can never create the account."""
    value = "alicec dead"  # claims left by an attempt whose key is gone (lease over)
    for sk in skeleton_keys("alicec"):
        await redis.set(sk, value)
    assert await login(accounts, LOOK_ALIKE) == LOOK_ALIKE
    late = await accounts._create(keys=[keys.account("alicec"), keys.registration("alicec", "dead")],
                                  args=["alicec", "hash"])
    assert late == -2 and not await redis.exists(keys.account("alicec"))


async def test_a_stale_claim_renewed_meanwhile_is_not_taken_over(redis: fakeredis.FakeAsyncRedis) -> None:
    """Compare-and-set on the exact value: a retry of the holder (a new attempt) beats a takeover of the old one."""
    skeletons = Skeletons(redis)
    sk = skeleton_keys("alicec")[0]
    await redis.set(sk, "alicec old")  # attempt "old" is over
    await redis.set(keys.registration("alicec", "new"), "1")
    claim: Any = skeletons._claim
    # The look-alike read "alicec old", found it stale, and before its takeover the holder re-claimed:
    await redis.set(sk, "alicec new")
    answer = await claim(keys=[sk], args=["bob x", "bob", "alicec old"])
    assert int(answer[0]) == 0 and answer[1] == b"alicec new"
    assert not await skeletons.claim(sk, "bob", "bob x")  # and the new attempt counts
    assert await redis.get(sk) == b"alicec new"


async def test_a_refused_registration_drops_the_claims_it_made(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    fold, upper = skeleton_keys("alicec")
    await redis.hset(keys.account("mallory"), mapping={"name": "mallory", "pw": "x"})
    await redis.set(upper, "mallory")  # a live look-alike holds the second skeleton only
    with pytest.raises(UsernameConfusable):
        await accounts._register(login_name("alicec"), "hash")  # past the read-only check: the claims decide
    assert await redis.get(fold) is None  # its first claim was released
    assert await redis.get(upper) == b"mallory"
    assert not await _any_attempt(redis, "alicec")


async def test_a_registration_that_outlives_its_lease_is_refused_and_cleans_up(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    real = accounts._create

    async def after_the_lease(**kw: Any) -> Any:
        await redis.delete(*kw["keys"][1:])  # the lease ran out while the gateway stalled
        return await real(**kw)

    accounts._create = after_the_lease  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await login(accounts, "alicec")
    assert await holders(redis, "alicec") == [None, None]
    assert not await redis.exists(keys.account("alicec"))


async def test_an_account_step_whose_reply_was_lost_keeps_the_claims(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    """The account step ran but its answer never came (a timeout): the account keeps its skeletons."""
    real = accounts._create

    async def ran_then_lost(**kw: Any) -> Any:
        await real(**kw)
        raise ConnectionError("connection lost after the command ran")

    accounts._create = ran_then_lost  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await login(accounts, "alicec")
    assert await redis.exists(keys.account("alicec"))
    assert all(h is not None and h.startswith("alicec ") for h in await holders(redis, "alicec"))
    with pytest.raises(UsernameConfusable):
        await login(accounts, LOOK_ALIKE)


async def test_a_late_account_step_after_the_clean_up_creates_nothing(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    """A timed-out account step that reaches Redis after the clean-up finds its attempt gone."""
    real = accounts._create
    late: list[Any] = []

    async def timed_out(**kw: Any) -> Any:
        late.append(kw)
        raise TimeoutError("no answer")

    accounts._create = timed_out  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await login(accounts, "alicec")
    assert await holders(redis, "alicec") == [None, None]
    assert await real(**late[0]) == -2 and not await redis.exists(keys.account("alicec"))


async def test_a_skeleton_of_a_deleted_account_is_free(accounts: Accounts, redis: fakeredis.FakeAsyncRedis) -> None:
    await login(accounts, LOOK_ALIKE)
    await redis.delete(keys.account(login_name(LOOK_ALIKE).key))  # an operator removes the impostor
    assert await login(accounts, "alicec") == "alicec"
    assert await holders(redis, "alicec") == ["alicec", "alicec"]


async def test_two_first_logins_of_one_name_create_one_account_and_keep_its_claims(
    accounts: Accounts, redis: fakeredis.FakeAsyncRedis
) -> None:
    results = await asyncio.gather(login(accounts, "alicec", "pw"), login(accounts, "alicec", "pw"),
                                   return_exceptions=True)
    assert results == ["alicec", "alicec"]
    assert await holders(redis, "alicec") == ["alicec", "alicec"]
    assert not await _any_attempt(redis, "alicec")


async def test_of_two_look_alikes_registering_at_once_one_wins(accounts: Accounts) -> None:
    for _ in range(5):
        suffix = str(_)
        results = await asyncio.gather(login(accounts, "alicec" + suffix), login(accounts, LOOK_ALIKE + suffix),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["UsernameConfusable", "str"], results


async def _any_attempt(redis: fakeredis.FakeAsyncRedis, key: str) -> bool:
    return bool([k async for k in redis.scan_iter(match=keys.registration(key, "*"))])


async def _no_attempts(redis: fakeredis.FakeAsyncRedis, key: str) -> bool:
    return not await _any_attempt(redis, key)


async def test_a_look_alike_is_refused_before_it_spends_a_unit_of_the_budget(
    redis: fakeredis.FakeAsyncRedis
) -> None:
    accounts = Accounts(redis, time_cost=1, memory_kib=64, max_failures=2)
    try:
        await login(accounts, "alicec")
        for _ in range(5):  # more than the budget: still refused as a look-alike, never rate-limited
            with pytest.raises(UsernameConfusable):
                await login(accounts, LOOK_ALIKE)
        assert not await redis.exists(keys.login_budget(login_name(LOOK_ALIKE).key, "stranger"))
    finally:
        accounts.close()
