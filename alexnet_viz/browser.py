"""Drive the page in Debian's Chromium as a person would: the browser tests and scripts/screenshots.py use it.

Needs playwright (the ``test`` extra) and a Chromium binary (``apt-get install chromium``); Playwright's own
browser download is not used. Everything here waits on what the page shows (a text, a picture), never on a
fixed sleep, and :class:`Watch` records what a person would call a failure: a console error, an "Error"
badge or toast, a request that leaves the machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .launcher import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

__all__ = ["CHROMIUM_ARGS", "Driver", "Watch", "chromium", "open_page"]

SLOW_MS = 180_000  # the slowest thing a walk waits for (Compare with every method on 2 busy cores)


def chromium() -> str | None:
    """Debian's Chromium, if installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else None


@dataclass
class Watch:
    """What went wrong on the page, as a person would see it."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def hosts(self) -> set[str]:
        return {urlparse(u).hostname or "" for u in self.requests if not u.startswith(("data:", "blob:"))}


def open_page(p: Playwright, url: str, *, width: int = 1920, height: int = 1080) -> tuple[Browser, Page, Watch]:
    path = chromium()
    if path is None:
        raise RuntimeError("Debian's chromium is not installed (apt-get install chromium)")
    browser = p.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    watch = Watch()
    page.on("request", lambda r: watch.requests.append(r.url))
    page.on("console", lambda m: watch.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watch.console_errors.append(str(e)))
    page.goto(url)
    page.locator("#banner").wait_for(timeout=60_000)
    return browser, page, watch


class Driver:
    """One person at the page: pick, click, wait for the answer, and fail on any error shown."""

    def __init__(self, page: Page) -> None:
        self.page = page

    # --- reading the page ------------------------------------------------------------------------

    def text(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id}").inner_text()

    def errors_shown(self) -> list[str]:
        """Gradio's red "Error" badges and the error toasts now visible."""
        shown = [f"badge: {b.inner_text()}" for b in self.page.get_by_text("Error", exact=True).all()
                 if b.is_visible()]
        shown += [f"toast: {t.inner_text()}" for t in self.page.get_by_test_id("toast-body").all() if t.is_visible()]
        return shown

    def check(self, what: str) -> None:
        errors = self.errors_shown()
        if errors:
            raise AssertionError(f"after {what}: {errors}")

    def wait_text(self, elem_id: str, pattern: str, *, changed_from: str | None = None, timeout: int = 60_000) -> str:
        """Wait until the element's text matches ``pattern`` (a regex) and differs from ``changed_from``."""
        from playwright.sync_api import expect

        locator = self.page.locator(f"#{elem_id}")
        if pattern.startswith("^"):  # Markdown blocks start with white space
            pattern = r"^\s*" + pattern[1:]
        if changed_from is None:
            expect(locator).to_have_text(re.compile(pattern, re.S), timeout=timeout)
        else:  # both at once: a text in between (a step's "drawing the pictures...") must not end the wait
            self.page.wait_for_function(
                "([id, pattern, before]) => { const e = document.getElementById(id);"
                " return !!e && new RegExp(pattern, 's').test(e.innerText) && e.innerText !== before; }",
                arg=[elem_id, pattern, changed_from], timeout=timeout)
        self.idle(timeout)
        return locator.inner_text()

    def idle(self, timeout: int = SLOW_MS) -> None:
        """Wait until no event shown on screen is pending (Gradio ignores a second click on a button whose event
        runs); on a time-out, say which components still spin."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        visible = "[...document.querySelectorAll('.pending')].filter(e => e.offsetParent !== null)"
        try:
            self.page.wait_for_function(f"() => {visible}.length === 0", timeout=timeout)
        except PlaywrightTimeout:
            spinning = self.page.evaluate(f"() => {visible}.map(e => (e.closest('[id]') || e).id)")
            raise AssertionError(f"still pending after {timeout / 1000:.0f} s: {spinning}") from None

    def picture(self, elem_id: str) -> str:
        """The URL of the picture a component shows now ("" if none)."""
        img = self.page.locator(f"#{elem_id} img")
        return (img.first.get_attribute("src") or "") if img.count() else ""

    def wait_picture_change(self, elem_id: str, before: str, timeout: int = 60_000) -> str:
        self.page.wait_for_function(
            "([id, before]) => { const i = document.querySelector('#' + id + ' img');"
            " return i && i.src && i.src !== before && i.complete; }", arg=[elem_id, before], timeout=timeout)
        self.idle(timeout)
        return self.picture(elem_id)

    # --- doing things -------------------------------------------------------------------------------

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def choose(self, elem_id: str, option: str, *, search: str | None = None) -> None:
        """Pick ``option`` (its visible text) in a dropdown, typing ``search`` first if given."""
        box = self.page.locator(f"#{elem_id} input")
        box.click()
        if search is not None:
            box.press("Control+a")
            box.press("Backspace")
            box.press_sequentially(search, delay=20)
        self.page.get_by_role("option", name=option, exact=True).click()

    def upload(self, path: Path | str) -> str:
        """Upload a file; returns the status line once the new analysis is on screen."""
        before = self.text("status")
        self.page.locator("#image input[type=file]").set_input_files(str(path))
        return self.wait_text("status", r"ms in all", changed_from=before, timeout=SLOW_MS)

    def remove_image(self) -> None:
        self.page.locator("#image").get_by_role("button", name="Remove Image").click()

    def example(self, index: int) -> str:
        before = self.text("status")
        self.page.locator("#examples .thumbnail-item, #examples button").nth(index).click()
        return self.wait_text("status", r"ms in all", changed_from=before, timeout=SLOW_MS)

    def click_picture(self, elem_id: str, fx: float, fy: float) -> None:
        """Click at a fraction (fx, fy) of a picture's displayed box."""
        img = self.page.locator(f"#{elem_id} img").first
        box = img.bounding_box()
        if box is None:
            raise AssertionError(f"#{elem_id} shows no picture")
        img.click(position={"x": box["width"] * fx, "y": box["height"] * fy})

    def set_slider(self, elem_id: str, value: float) -> None:
        """Type a value into a slider's number box and leave it (Gradio fires ``release``)."""
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
        box.blur()

    def slider_value(self, elem_id: str) -> float:
        return float(self.page.locator(f"#{elem_id} input[type=number]").input_value())

    def download(self, target: Path) -> Path:
        with self.page.expect_download(timeout=SLOW_MS) as info:
            self.page.locator("#download-zip").click()
        info.value.save_as(str(target))
        return target


def with_page(url: str, fn: Any, **kwargs: Any) -> Any:
    """Run ``fn(driver, watch)`` on a fresh page at ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, watch = open_page(p, url, **kwargs)
        try:
            return fn(Driver(page), watch)
        finally:
            browser.close()
