"""Drive Pipecat's own TTS services against a running voxgate; print one JSON report.

Run with a Python that has ``pipecat-ai[elevenlabs,cartesia,deepgram,openai]`` (it pins soxr and
protobuf below voxgate's, so it lives in its own venv: see tests/test_pipecat_clients.py):
``python tests/pipecat_driver.py PORT TOKEN``. For each service: one turn (audio, word timestamps),
two services of the same kind at once, and an interruption (Pipecat's InterruptionFrame) mid-turn.
Nothing here imports voxgate.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

RATE = 24_000


class Sink(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.audio = bytearray()
        self.words: list[tuple[str, int]] = []
        self.stopped = asyncio.Event()
        self.first_audio = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio += frame.audio
            self.first_audio.set()
        elif isinstance(frame, TTSTextFrame):
            self.words.append((frame.text, frame.pts or 0))
        elif isinstance(frame, TTSStoppedFrame):
            self.stopped.set()
        await self.push_frame(frame, direction)


def make_service(kind: str, port: int, token: str) -> Any:
    if kind == "elevenlabs":
        from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

        return ElevenLabsTTSService(api_key=token, voice_id="21m00Tcm4TlvDq8ikWAM", url=f"ws://127.0.0.1:{port}", sample_rate=RATE)
    if kind == "cartesia":
        from pipecat.services.cartesia.tts import CartesiaTTSService

        return CartesiaTTSService(api_key=token, voice_id="some-voice", url=f"ws://127.0.0.1:{port}/tts/websocket", sample_rate=RATE)
    if kind == "deepgram":
        from pipecat.services.deepgram.tts import DeepgramTTSService

        return DeepgramTTSService(api_key=token, base_url=f"ws://127.0.0.1:{port}", sample_rate=RATE)
    from pipecat.services.openai.tts import OpenAITTSService

    return OpenAITTSService(api_key=token, base_url=f"http://127.0.0.1:{port}/v1", voice="alloy", sample_rate=RATE)


async def run_turn(kind: str, port: int, token: str, text: str, *, interrupt: bool = False) -> dict[str, Any]:
    sink = Sink()
    task = PipelineTask(
        Pipeline([make_service(kind, port, token), sink]),
        params=PipelineParams(audio_out_sample_rate=RATE),
        enable_rtvi=False,
    )
    runner = PipelineRunner(handle_sigint=False)
    running = asyncio.create_task(runner.run(task))
    await task.queue_frame(TTSSpeakFrame(text))
    interrupted_bytes = None
    if interrupt:
        await asyncio.wait_for(sink.first_audio.wait(), 60)
        await task.queue_frame(InterruptionFrame())
        await asyncio.sleep(0.3)  # whatever was in flight lands
        interrupted_bytes = len(sink.audio)
        await asyncio.sleep(1.5)  # nothing more may come
    else:
        await asyncio.wait_for(sink.stopped.wait(), 60)
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(running, 30)
    return {
        "seconds": len(sink.audio) / 2 / RATE,
        "words": sink.words,
        "bytes_at_interrupt": interrupted_bytes,
        "bytes_final": len(sink.audio),
    }


async def main(port: int, token: str, kinds: list[str]) -> None:
    text = "Hello there, my friend. How are you doing today?"
    long_text = "This is a long sentence that keeps going for a while. " * 12
    report: dict[str, Any] = {}
    for kind in kinds:
        one = await run_turn(kind, port, token, text)
        both = await asyncio.gather(run_turn(kind, port, token, "Hi."), run_turn(kind, port, token, text))
        cut = await run_turn(kind, port, token, long_text, interrupt=True)
        report[kind] = {"one": one, "two": both, "interrupted": cut}
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",") if len(sys.argv) > 3 else ["elevenlabs", "cartesia", "deepgram", "openai"]))
