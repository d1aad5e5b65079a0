"""``voxgate bench quality``'s measures, on synthetic audio (no server, no recognizer)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.bench.quality import longest_inner_silence_ms, silence_runs, word_error_rate

RATE = 24_000


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_the_longest_inner_silence_ignores_the_edges_and_finds_the_seam() -> None:
    quiet = np.zeros(int(0.3 * RATE), dtype=np.float32)
    audio = np.concatenate([quiet, tone(0.5), np.zeros(int(1.0 * RATE), np.float32), tone(0.2), tone(0.0), quiet])
    assert longest_inner_silence_ms(audio) == pytest.approx(1000.0, abs=20)
    assert longest_inner_silence_ms(np.concatenate([quiet, tone(1.0), quiet])) == 0.0
    # -50 dBFS noise counts as silence, -40 dBFS does not.
    noise = np.full(int(0.4 * RATE), 10 ** (-50 / 20), dtype=np.float32)
    assert longest_inner_silence_ms(np.concatenate([tone(0.2), noise, tone(0.2)])) == pytest.approx(400.0, abs=20)
    louder = np.full(int(0.4 * RATE), 10 ** (-40 / 20), dtype=np.float32)
    assert longest_inner_silence_ms(np.concatenate([tone(0.2), louder, tone(0.2)])) == 0.0
    assert silence_runs(np.zeros(RATE, np.float32)) == [(0, RATE)]


def test_word_error_rate_normalises_case_punctuation_and_numbers() -> None:
    assert word_error_rate("The flight costs 250 dollars.", "the flight costs two hundred fifty dollars") == 0.0
    assert word_error_rate("The quick brown fox.", "The quick, brown box!") == 0.25
    assert word_error_rate("今日は晴れ。", "今日は晴れ", "ja") == 0.0
    assert word_error_rate("a b c d", "") == 1.0


def test_a_player_stalls_when_a_chunk_arrives_after_the_audio_ahead_has_played() -> None:
    from gateway.bench.quality import playback_stalls_ms

    # 1 s of audio at t=0, the next 1 s chunk at t=1.5: the player waits 0.5 s.
    assert playback_stalls_ms([(0.0, RATE), (1.5, RATE)]) == pytest.approx((500.0, 500.0))
    # In time (t=0.9 < 1.0): no stall; stalls add up and the longest is kept.
    assert playback_stalls_ms([(0.0, RATE), (0.9, RATE), (2.2, RATE // 2), (3.0, RATE)]) == pytest.approx((300.0, 500.0))
    assert playback_stalls_ms([]) == (0.0, 0.0)


def test_first_voiced_audio_counts_the_silence_a_player_plays_before_the_speech() -> None:
    from gateway.bench.quality import first_voiced_ms

    silence = np.zeros(int(0.3 * RATE), dtype=np.float32)
    assert first_voiced_ms(np.concatenate([silence, tone(1.0)])) == 300.0
    assert first_voiced_ms(tone(1.0)) == 0.0
    assert first_voiced_ms(silence) == 0.0  # nothing voiced: nothing to wait for
