"""The overlay page in a real headless Chromium (Debian's ``chromium``, driven
by Playwright), against a real aiohttp server over a RoomHub on a StockBook.

Chromium is a system package (``apt-get install -y chromium``), never a
Playwright download. Without it the test is skipped, except under CI, where
it fails. A screenshot is saved in the test's tmp dir, and also to the path
in ``OVERLAY_SCREENSHOT`` when set (docs/overlay.png is made that way).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from test_rooms import Stock

from stocksync.hub.http import HttpServer, make_app
from stocksync.hub.rooms import DisplayMode, DisplayPolicy

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ANIMATED_SKU_1 = re.compile(r"\bSKU-1\b")
WAIT_MS = 60_000
"""Generous: a loaded 2-core machine may take seconds to render a change."""

# Marks <body data-animated> with every product row that starts the change
# animation, so the test sees it without racing the animation's end. (Read
# through locators: the page's Content-Security-Policy forbids the eval
# behind Playwright's wait_for_function.)
WATCH_ANIMATIONS = """
document.body.dataset.animated = "";
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target.classList && r.target.classList.contains("changed")) {
      document.body.dataset.animated += " " + r.target.dataset.sku;
    }
  }
}).observe(document.getElementById("items"), {attributes: true, subtree: true});
"""


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def test_the_overlay_shows_live_stock_and_reconnects(chromium: Path, tmp_path: Path) -> None:
    from playwright.async_api import Locator, async_playwright, expect

    stock = Stock()
    stock.add("SKU-1", 12)
    stock.add("SKU-2", 40)
    stock.rooms.set_featured("live-1", ["SKU-1", "SKU-2", "SKU-3"])
    stock.rooms.set_policy("live-1", DisplayPolicy(DisplayMode.EXACT, low_threshold=5))

    async def scenario() -> None:
        server = HttpServer(make_app(stock.rooms), "127.0.0.1", 0)
        port = await server.start()
        base = f"http://127.0.0.1:{port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(chromium), args=FLAGS)
            page = await browser.new_page(viewport={"width": 720, "height": 330})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            await page.goto(f"{base}/rooms/live-1/overlay?token=s3cret")
            # Loaded before its room starts, as OBS may: it waits, then shows it.
            early = await browser.new_page()
            await early.goto(f"{base}/rooms/live-2/overlay")
            await expect(early.locator("#status")).to_have_text(
                "Waiting for the live…", timeout=WAIT_MS
            )

            def label(sku: str) -> Locator:
                return page.locator(f'li[data-sku="{sku}"] .label')

            await expect(label("SKU-1")).to_have_text("12 in stock", timeout=WAIT_MS)
            await expect(label("SKU-2")).to_have_text("40 in stock", timeout=WAIT_MS)
            await expect(label("SKU-3")).to_have_text("Sold out", timeout=WAIT_MS)
            await page.evaluate(WATCH_ANIMATIONS)

            stock.rooms.set_featured("live-2", ["SKU-2"])
            await expect(early.locator('li[data-sku="SKU-2"] .label')).to_have_text(
                "In stock", timeout=WAIT_MS
            )
            await early.close()

            stock.add("SKU-1", -9)
            await expect(label("SKU-1")).to_have_text("Only 3 left!", timeout=WAIT_MS)
            body = page.locator("body")
            await expect(body).to_have_attribute("data-animated", ANIMATED_SKU_1, timeout=WAIT_MS)
            # Let the animation finish before the picture.
            await expect(page.locator("li.changed")).to_have_count(0, timeout=WAIT_MS)
            shot = tmp_path / "overlay.png"
            await page.screenshot(path=str(shot), omit_background=True)

            stock.add("SKU-1", -3)
            await expect(label("SKU-1")).to_have_text("Sold out", timeout=WAIT_MS)
            row = page.locator('li[data-sku="SKU-1"]')
            await expect(row).to_have_attribute("data-state", "sold_out", timeout=WAIT_MS)

            # The hub restarts (a new epoch) while stock moves: the page
            # reconnects by itself and shows the new figures.
            await server.stop()
            stock.add("SKU-2", -38)
            restarted = stock.restart()
            server = HttpServer(make_app(restarted.rooms), "127.0.0.1", port)
            await server.start()
            await expect(label("SKU-2")).to_have_text("Only 2 left!", timeout=WAIT_MS)

            await browser.close()
        await server.stop()

        events = [u for u in requests if "/events" in u]
        assert events[0] == f"{base}/rooms/live-1/events?token=s3cret"
        assert all(u.startswith(f"{base}/") for u in requests), requests  # self-contained
        assert shot.stat().st_size > 0
        wanted = os.environ.get("OVERLAY_SCREENSHOT")
        if wanted:
            shutil.copyfile(shot, wanted)

    asyncio.run(scenario())
