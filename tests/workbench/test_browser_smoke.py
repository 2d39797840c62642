"""The browser fixture drives a real headless Chromium: DOM text and screenshots work."""

from __future__ import annotations


def test_chromium_renders_a_page_and_takes_a_screenshot(browser_page, tmp_path):
    browser_page.goto("data:text/html,<title>t</title><h1>hi</h1>")
    assert browser_page.locator("h1").inner_text() == "hi"
    shot = tmp_path / "page.png"
    browser_page.screenshot(path=str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 100


def test_the_browser_is_chromium(chromium_browser):
    assert chromium_browser.is_connected()
    assert chromium_browser.browser_type.name == "chromium"
    assert int(chromium_browser.version.split(".")[0]) >= 100
