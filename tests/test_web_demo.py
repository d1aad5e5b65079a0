"""The browser demo (web-demo/) end to end, in headless Chromium driven by Playwright.

A real gateway (``tests.utils.run_server``: tiny random-weight model on 127.0.0.1:0) serves the page
and the WebSocket. The page's own state (``window.voxgateDemo``) is read back: frames received, seq
gaps, samples pushed into the AudioWorklet and samples the worklet actually rendered, Stop timing,
per-session checksums.

Chromium comes from Debian (``/usr/bin/chromium``; installed with apt-get when missing and we are
root), never from ``playwright install``. ``VOXGATE_TEST_BASE_URL=http://host:port`` points the tests
at an already-running server instead (handy while developing the page).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")
import pytest_asyncio  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-quic",
]

SENTENCE = "Hello from the browser demo. The worklet should play every sample."
LONG_TEXT = " ".join(
    [
        "This is a much longer passage, streamed one word at a time the way a chat model would,",
        "so that the context is still open and speaking when the Stop button is pressed.",
        "Nothing after that moment should reach the speakers, and the server must confirm the cancel.",
    ]
    * 3
)
WAIT_MS = 90_000  # generous: the tiny model runs on 2 CPU cores, and audio plays in real time


def _ensure_chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"apt-get install chromium failed: {result.stderr.strip()[-500:]}")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium installed but {CHROMIUM} is absent")
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base_url() -> AsyncIterator[str]:
    external = os.environ.get("VOXGATE_TEST_BASE_URL")
    if external:
        yield external.rstrip("/")
        return
    from tests.utils import run_server

    async with run_server() as gateway:
        yield f"http://127.0.0.1:{gateway.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    executable = _ensure_chromium()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Page:
    """A loaded demo page plus the console/page errors it produced."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))

    async def state(self, expr: str = "voxgateDemo.main") -> Any:
        return await self.page.evaluate(f"JSON.parse(JSON.stringify({expr}))")

    async def wait(self, expr: str, timeout: float = WAIT_MS) -> None:
        try:
            await self.page.wait_for_function(expr, timeout=timeout, polling=50)
        except playwright_api.TimeoutError:
            state = await self.state("{main: voxgateDemo.main, sessions: voxgateDemo.sessions, log: voxgateDemo.log.slice(-15)}")
            raise AssertionError(f"timed out after {timeout / 1000:g} s waiting for {expr}\npage state: {state}\n{self.errors}") from None

    async def log(self) -> list[dict[str, Any]]:
        return await self.state("voxgateDemo.log")


async def open_page(browser: Any, url: str) -> tuple[Any, Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
    page = Page(await context.new_page())
    await page.page.goto(url)
    await page.wait("window.voxgateDemo && voxgateDemo.ready", timeout=30_000)
    assert await page.page.evaluate("voxgateDemo.audioState") == "running"
    return context, page


def drained(expr: str, context_id: str) -> str:
    """JS: the context is done and the worklet rendered all of it (nothing buffered)."""
    return (
        f"(() => {{ const s = {expr}; const c = s.contexts[{context_id!r}];"
        " return c && c.done && c.pushed > 0 && c.played === c.pushed && s.bufferedSamples === 0; })()"
    )


def assert_plays_what_it_received(s: dict[str, Any], rate: int) -> None:
    """Every received sample went through the resampler into the worklet, and was rendered."""
    assert s["framesReceived"] > 0
    assert s["seqGaps"] == 0 and s["missingFrames"] == 0, s
    assert s["lastSeq"] == s["framesReceived"] - 1, "seq starts at 0 and counts every frame"
    assert s["errors"] == []
    for cid, c in s["contexts"].items():
        if c["cancelled"] or not c["frames"]:
            continue
        expected = round(c["samples"] * rate / c["sampleRate"])
        assert abs(c["pushed"] - expected) <= 1, (cid, c, rate)
        assert c["played"] == c["pushed"], (cid, c)
        if c["audioMs"] is not None:  # the server's own count agrees with what arrived
            assert abs(c["audioMs"] - 1000 * c["samples"] / c["sampleRate"]) <= 1.0, (cid, c)


async def test_js_decoder_matches_the_python_reference(base_url: str, browser: Any) -> None:
    """voxgate.js' decodeFrame reads what gateway.protocol/gateway.audio write, sample for sample."""
    import numpy as np

    from gateway.audio import decode_samples, encode_samples
    from gateway.protocol import encode_audio_frame

    rng = np.random.default_rng(7)
    samples = np.concatenate([[-1.0, -0.5, 0.0, 0.5, 1.0], rng.uniform(-1, 1, 475)]).astype(np.float32)
    cases = []
    for i, fmt in enumerate(["pcm_s16le", "pcm_f32le", "ulaw"]):
        payload = encode_samples(samples, fmt)
        frame = encode_audio_frame(4_000_000_000 + i, 7 + i, 123_456 + i, 3 if i == 2 else 1, payload)
        cases.append({"format": fmt, "b64": base64.b64encode(frame).decode(), "want": decode_samples(payload, fmt).tolist()})

    context, page = await open_page(browser, f"{base_url}/")
    try:
        got = await page.page.evaluate(
            """async (cases) => {
                const { decodeFrame, StreamResampler } = await import('/web-demo/voxgate.js');
                const out = cases.map((c) => {
                    const bytes = Uint8Array.from(atob(c.b64), (ch) => ch.charCodeAt(0));
                    const f = decodeFrame(bytes.buffer, c.format);
                    return { seq: f.seq, ctx: f.contextIndex, offset: f.offset, flags: f.flags,
                             first: f.first, last: f.last, samples: Array.from(f.samples) };
                });
                // The streaming resampler gives the same result however the input is chunked.
                const x = Float32Array.from({ length: 2400 }, (_, i) => Math.sin(i / 7));
                const whole = new StreamResampler(24000, 44100);
                const a = [...whole.push(x), ...whole.end()];
                const chunked = new StreamResampler(24000, 44100);
                const b = [];
                for (let i = 0; i < x.length; i += 37) b.push(...chunked.push(x.subarray(i, i + 37)));
                b.push(...chunked.end());
                const diff = Math.max(...a.map((v, i) => Math.abs(v - b[i])));
                return { frames: out, resampled: [a.length, b.length, diff] };
            }""",
            cases,
        )
    finally:
        await context.close()
    for i, (case, frame) in enumerate(zip(cases, got["frames"], strict=True)):
        assert (frame["seq"], frame["ctx"], frame["offset"]) == (4_000_000_000 + i, 7 + i, 123_456 + i)
        assert (frame["flags"], frame["first"], frame["last"]) == ((3, True, True) if i == 2 else (1, True, False))
        np.testing.assert_array_equal(np.float32(frame["samples"]), np.float32(case["want"]), err_msg=case["format"])
    assert got["resampled"][:2] == [4410, 4410]
    assert got["resampled"][2] < 1e-6


async def test_speak_plays_every_sample_without_gaps(base_url: str, browser: Any) -> None:
    context, page = await open_page(browser, f"{base_url}/")
    try:
        p = page.page
        await p.fill("#text", SENTENCE)
        await p.click("#speak")
        await page.wait(drained("voxgateDemo.main", "c1"))
        s = await page.state()
        rate = await p.evaluate("voxgateDemo.audioSampleRate")

        assert_plays_what_it_received(s, rate)
        c = s["contexts"]["c1"]
        assert s["doneIds"] == ["c1"] and s["cancelledIds"] == []
        assert s["samplesPlayed"] == s["samplesPushed"] == c["pushed"]
        assert 0 < c["ttfaMs"] <= c["ttfpMs"] < 60_000
        # alignment was requested by the page: words arrived and the playhead highlighted them
        assert c["words"] > 0
        assert await p.evaluate("voxgateDemo.wordsHighlighted") > 0
        assert await p.locator("#transcript .w").count() == c["words"]
        # the figures panel shows the same numbers (it refreshes every 150 ms)
        await page.wait("document.querySelector('#m-frames').textContent === String(voxgateDemo.main.framesReceived)", 5_000)
        assert await p.text_content("#m-gaps") == "0"
        assert page.errors == []
    finally:
        await context.close()


async def test_stop_silences_at_once_and_session_goes_on(base_url: str, browser: Any) -> None:
    context, page = await open_page(browser, f"{base_url}/")
    try:
        p = page.page
        await p.fill("#text", LONG_TEXT)
        await p.eval_on_selector("#wps", "(el) => { el.value = '8'; el.dispatchEvent(new Event('input')); }")
        await p.click("#stream")
        # Barge in once the first context is audibly playing.
        await page.wait("voxgateDemo.main.samplesPlayed > 4800")  # ~0.1 s of it has been heard
        before = await page.state()
        assert not before["contexts"]["c1"]["done"], "the utterance must still be open when Stop is pressed"
        await p.click("#stop")
        await page.wait("voxgateDemo.main.cancelledIds.includes('c1') && voxgateDemo.main.stop && voxgateDemo.main.stop.clearTime !== null")
        await p.wait_for_timeout(600)  # frames in flight would arrive and play during this time
        s = await page.state()
        rate = await p.evaluate("voxgateDemo.audioSampleRate")
        stop = s["stop"]

        # The clear reached the worklet within a few render quanta of the click ...
        assert stop["clearTime"] - stop["clickTime"] <= 0.1, stop
        # ... and after it only the short fade-out tail (≤ 3 ms) and the block in progress played.
        after_clear = s["samplesPlayed"] - stop["samplesPlayedAtClear"]
        assert after_clear <= stop["faded"] + 128, (after_clear, stop)
        assert after_clear <= 0.01 * rate
        assert s["bufferedSamples"] == 0 and s["playerState"] == "idle"
        c = s["contexts"]["c1"]
        assert c["cancelled"] and not c["done"]
        assert s["seqGaps"] == 0 and s["errors"] == []
        assert any(e["text"].startswith("cancelled c1") for e in await page.log())

        # The session goes on: the next utterance plays in full.
        await p.fill("#text", SENTENCE)
        await p.click("#speak")
        await page.wait(drained("voxgateDemo.main", "c2"))
        s = await page.state()
        c2 = s["contexts"]["c2"]
        assert c2["played"] == c2["pushed"] > 0 and c2["frames"] > 0
        assert s["seqGaps"] == 0 and s["errors"] == []
        assert page.errors == []
    finally:
        await context.close()


async def test_formats_decode_and_play(base_url: str, browser: Any) -> None:
    """µ-law (8 kHz) and float32 frames decode and play through the same path as s16le."""
    context, page = await open_page(browser, f"{base_url}/")
    try:
        p = page.page
        rate = await p.evaluate("voxgateDemo.audioSampleRate")
        await p.fill("#text", "Short and clear.")
        for n, fmt in enumerate(["ulaw", "pcm_f32le"], start=1):
            await p.select_option("#format", fmt)
            await page.wait(f"voxgateDemo.main.settings.format === {fmt!r}")
            settings = (await page.state())["settings"]
            await p.click("#speak")
            await page.wait(drained("voxgateDemo.main", f"c{n}"))
            c = (await page.state())["contexts"][f"c{n}"]
            assert c["sampleRate"] == (8000 if fmt == "ulaw" else settings["sample_rate"]), (fmt, c, settings)
        s = await page.state()
        assert_plays_what_it_received(s, rate)
        assert page.errors == []
    finally:
        await context.close()


async def test_sessions_each_hear_only_their_own_audio(base_url: str, browser: Any, tmp_path: Any) -> None:
    n = 3
    context, page = await open_page(browser, f"{base_url}/?sessions={n}")
    try:
        p = page.page
        await page.wait(f"voxgateDemo.sessions.length === {n} && voxgateDemo.sessions.every((s) => s.status === 'connected')", timeout=30_000)
        await p.wait_for_selector("#multi-speak:not([disabled])")
        await p.fill("#text", SENTENCE)
        await p.click("#speak")  # the main session speaks too: four sessions at once
        await p.click("#multi-speak")
        await page.wait(" && ".join([drained("voxgateDemo.main", "c1")] + [drained(f"voxgateDemo.sessions[{i}]", "c1") for i in range(n)]))
        # Screenshot for humans (figures, transcripts, log all populated; figures refresh every 150 ms).
        await p.wait_for_timeout(300)
        await p.screenshot(path=str(tmp_path / "web-demo.png"), full_page=True)

        rate = await p.evaluate("voxgateDemo.audioSampleRate")
        sessions = [await page.state()] + await page.state("voxgateDemo.sessions")
        for s in sessions:
            assert_plays_what_it_received(s, rate)
            assert list(s["contexts"]) == ["c1"], "each session has only the context it spoke"
            assert s["samplesPlayed"] == s["samplesPushed"] == s["contexts"]["c1"]["pushed"]
        # Different texts → different audio, and each session heard (and played) only its own.
        ids = {s["sessionId"] for s in sessions}
        sums = {s["contexts"]["c1"]["checksum"] for s in sessions}
        assert len(ids) == len(sessions) and len(sums) == len(sessions), sessions
        assert int(await p.locator(".mini .f-gaps").first.text_content()) == 0
        assert page.errors == []
    finally:
        await context.close()


async def test_opus_frames_decode_with_webcodecs_and_play(base_url: str, browser: Any) -> None:
    """The demo offers opus where the browser has WebCodecs, and plays it as long as s16le."""
    context, page = await open_page(browser, f"{base_url}/")
    try:
        p = page.page
        if not await p.evaluate("typeof AudioDecoder !== 'undefined'"):
            pytest.skip("this Chromium has no WebCodecs AudioDecoder")
        options = await p.eval_on_selector_all("#format option", "els => els.map(e => e.value)")
        assert "opus" in options and "mp3" not in options
        await p.fill("#text", "Short and clear.")
        for n, fmt in enumerate(["pcm_s16le", "opus"], start=1):
            await p.select_option("#format", fmt)
            await page.wait(f"voxgateDemo.main.settings.format === {fmt!r}")
            await p.click("#speak")
            await page.wait(drained("voxgateDemo.main", f"c{n}"))
        s = await page.state()
        pcm, opus = s["contexts"]["c1"], s["contexts"]["c2"]
        assert opus["sampleRate"] == 48_000
        pcm_s, opus_s = pcm["samples"] / pcm["sampleRate"], opus["samples"] / opus["sampleRate"]
        # Opus adds its lookahead and pads the last frame: at most two 20 ms frames more.
        assert pcm_s <= opus_s <= pcm_s + 0.045, (pcm_s, opus_s)
        assert s["errors"] == [] and page.errors == []
    finally:
        await context.close()
