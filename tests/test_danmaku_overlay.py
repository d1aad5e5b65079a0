"""The ``voxgate danmaku`` OBS overlay (web-demo/overlay.html) in headless Chromium: a comment posted
to ``/comments`` is shown while its voice plays, every sample received is rendered, and the page is
transparent. Chromium and Playwright as in ``tests/test_web_demo.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")

from gateway.integrations.danmaku import DanmakuConfig  # noqa: E402
from gateway.integrations.danmaku_live import LiveDanmaku  # noqa: E402
from tests.test_danmaku_live import OVERRIDES, http_post  # noqa: E402
from tests.test_web_demo import CHROMIUM_ARGS, _ensure_chromium  # noqa: E402
from tests.utils import run_server  # noqa: E402

WAIT_MS = 90_000


async def test_the_overlay_shows_the_comment_being_read_and_plays_its_voice(tmp_path: Path) -> None:
    from gateway.client import VoxgateClient

    executable = _ensure_chromium()
    config = DanmakuConfig(listen_port=0, ttl_chat_s=60, ttl_paid_s=120)
    async with run_server(OVERRIDES) as gateway, VoxgateClient(f"ws://127.0.0.1:{gateway.port}") as client:
        live = LiveDanmaku(config, client)
        await live.start()
        try:
            async with playwright_api.async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 240})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
                    await page.goto(f"{live.base_url}/overlay?hold=60000")
                    await page.wait_for_function("window.voxgateOverlay && voxgateOverlay.ready && voxgateOverlay.connected", timeout=30_000)
                    assert await page.evaluate("voxgateOverlay.audioState") == "running"
                    while live.overlay.num_viewers == 0:
                        await asyncio.sleep(0.01)
                    # OBS composites the page over the scene: nothing but the caption may be opaque.
                    assert await page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
                    assert await page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgba(0, 0, 0, 0)"

                    body = '{"user": "u9", "name": "小明16", "kind": "gift", "text": "lightstick", "id": "g1"}'
                    status, _ = await http_post(live.port or 0, "/comments", body.encode())
                    assert status == 202
                    # The caption is up while the voice plays (the worklet reports its first sample) ...
                    await page.wait_for_function("voxgateOverlay.captions.length === 1", timeout=WAIT_MS, polling=50)
                    shown = await page.evaluate("JSON.parse(JSON.stringify(voxgateOverlay))")
                    [utterance] = shown["utterances"].values()
                    assert utterance["startedAt"] is not None and not utterance["ended"]
                    assert await page.text_content("#caption .name") == "小明16:"
                    assert await page.text_content("#caption .text") == "lightstick"
                    assert "shown" in (await page.get_attribute("#caption", "class") or "")
                    # ... and every sample that arrived is rendered.
                    await page.wait_for_function(
                        "Object.values(voxgateOverlay.utterances).every((u) => u.done && u.ended && u.played === u.pushed && u.pushed > 0)",
                        timeout=WAIT_MS, polling=50,
                    )
                    state = await page.evaluate("JSON.parse(JSON.stringify(voxgateOverlay))")
                    [utterance] = state["utterances"].values()
                    rate = state["audioSampleRate"]
                    assert abs(utterance["pushed"] - round(utterance["samples"] * rate / utterance["sampleRate"])) <= 1
                    assert utterance["said"] == "Thank you 小明16 for the lightstick!"
                    await page.screenshot(path=str(tmp_path / "overlay.png"))
                    assert errors == [] and state["errors"] == []
                finally:
                    await browser.close()
        finally:
            await live.stop()
    [spoken] = live.policy.report.spoken
    assert abs(spoken.audio_ms * 24 - utterance["samples"]) <= 24  # type: ignore[operator]
