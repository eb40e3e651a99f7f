"""What a person does on the web client's page, as Playwright steps shared by the browser tests."""

from __future__ import annotations

from typing import Any


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
