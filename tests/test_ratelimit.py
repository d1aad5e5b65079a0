"""The one token bucket (``gateway.ratelimit``), on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from gateway.ratelimit import TokenBucket


def test_a_full_bucket_allows_its_burst_at_once_and_then_refuses() -> None:
    bucket = TokenBucket(2.0, now=10.0, burst=5.0)
    assert [bucket.take(1.0, 10.0) for _ in range(6)] == [True] * 5 + [False]
    # A refused take leaves the bucket as it was: one token's worth of waiting, not more.
    assert bucket.wait_s(1.0, 10.0) == pytest.approx(0.5)


def test_the_burst_defaults_to_one_seconds_worth() -> None:
    bucket = TokenBucket(3.0, now=0.0)
    assert bucket.take(3.0, 0.0) and not bucket.take(0.5, 0.0)


def test_tokens_refill_at_the_rate_and_never_above_the_burst() -> None:
    bucket = TokenBucket(2.0, now=0.0, burst=4.0)
    assert bucket.take(4.0, 0.0)
    assert not bucket.take(1.5, 0.5)  # half a second: one token back
    assert bucket.take(1.0, 0.5)
    assert not bucket.take(0.1, 0.5)
    # An hour idle fills the bucket to its burst, no further.
    assert bucket.take(4.0, 3600.0) and not bucket.take(0.1, 3600.0)


def test_a_clock_that_steps_back_adds_no_tokens() -> None:
    bucket = TokenBucket(1.0, now=100.0, burst=1.0)
    assert bucket.take(1.0, 100.0)
    assert not bucket.take(1.0, 50.0)
    assert bucket.take(1.0, 101.0)


def test_takes_that_add_up_to_the_burst_in_floats_are_allowed() -> None:
    bucket = TokenBucket(10.0, now=0.0, burst=1.0)
    assert all(bucket.take(0.1, 0.0) for _ in range(10))  # 0.1 ten times is not exactly 1.0
    assert not bucket.take(0.1, 0.0)


def test_rate_zero_disables_the_limit() -> None:
    bucket = TokenBucket(0.0, now=0.0)
    assert all(bucket.take(1_000.0, 0.0) for _ in range(100))
    assert bucket.wait_s(1_000.0, 0.0) == 0.0


def test_wait_s_says_when_an_amount_can_be_taken() -> None:
    bucket = TokenBucket(4.0, now=0.0, burst=8.0)
    assert bucket.wait_s(8.0, 0.0) == 0.0
    assert bucket.take(8.0, 0.0)
    assert bucket.wait_s(2.0, 0.0) == pytest.approx(0.5)
    assert bucket.wait_s(2.0, 0.25) == pytest.approx(0.25)
    assert not bucket.take(2.0, 0.4) and bucket.take(2.0, 0.5)
    # wait_s only looks: asking again changes nothing.
    assert bucket.wait_s(1.0, 0.5) == bucket.wait_s(1.0, 0.5) == pytest.approx(0.25)


def test_an_amount_over_the_burst_waits_for_a_full_bucket_not_forever() -> None:
    bucket = TokenBucket(1.0, now=0.0, burst=2.0)
    assert bucket.take(2.0, 0.0)
    assert bucket.wait_s(50.0, 0.0) == pytest.approx(2.0)
    assert not bucket.take(50.0, 2.0)  # take itself never overdraws
