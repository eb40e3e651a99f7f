"""What a person does on the web client's page, as Playwright steps shared by the browser tests."""

from __future__ import annotations

from typing import Any

from client import ChatClient
from protocol import frames as f
from tests.helpers import wait_for_event


async def log_in(page: Any, user: str, password: str = "pw") -> None:
    await page.fill("#login-user", user)
    await page.fill("#login-password", password)
    await page.click("#login-submit")
    await page.locator("#chat-view").wait_for(state="visible")


async def say(page: Any, text: str) -> None:
    await page.fill("#composer-input", text)
    await page.press("#composer-input", "Enter")


async def open_conv(page: Any, address: str) -> None:
    await page.click(f'#conversations [data-conv="{address}"]')
    await page.locator("#conv-title").filter(has_text=address if address != "*" else "Everyone").wait_for()


def shown(page: Any, text: str) -> Any:
    """The list items of the open conversation holding ``text``, sent and acked (an id)."""
    return page.locator("#messages li[data-id]").filter(has_text=text)


async def dm_round_trip(page: Any, page_user: str, client: ChatClient, to_page: str, from_page: str) -> None:
    """``client`` sends ``to_page`` to ``page_user``, logged in on ``page``, who opens that conversation,
    sees it and answers ``from_page``; the answer must reach ``client``, from ``page_user``."""
    await client.send(f"@{page_user}", to_page)
    await page.locator(f'#conversations [data-conv="@{client.user}"]').click()
    await shown(page, to_page).wait_for()
    await say(page, from_page)
    got = await wait_for_event(client, lambda e: isinstance(e, f.Message) and e.to == f"@{client.user}", 30)
    assert isinstance(got, f.Message) and (got.body, got.from_) == (from_page, page_user), got
