"""The engine cost model: a fixed part per item and a part per token, fitted from batches."""

from __future__ import annotations

import pytest

from gateway.engine_cost import CostModel, EngineCost


def test_two_shapes_separate_the_fixed_part_from_the_per_token_part() -> None:
    model = CostModel()
    for tokens in (10, 20, 60, 130):
        model.observe(1, tokens, 0.15 + 0.0225 * tokens)
    model.observe(4, 4 * 50, 4 * 0.15 + 0.0225 * 200)  # a batch of 4 items of 50 tokens
    cost = model.estimate
    assert cost.fixed_s == pytest.approx(0.15) and cost.per_token_s == pytest.approx(0.0225)
    assert cost.seconds(100) == pytest.approx(2.4) and cost.seconds(200, items=4) == pytest.approx(5.1)


def test_one_shape_cannot_tell_the_parts_apart_and_puts_all_of_it_per_token() -> None:
    model = CostModel()
    assert not model.estimate.measured
    model.observe(1, 100, 1.0)
    model.observe(2, 200, 2.0)  # the same ratio of items to tokens
    assert model.estimate == EngineCost(0.0, pytest.approx(0.01))


def test_a_fit_with_a_negative_part_falls_back_to_per_token_only() -> None:
    model = CostModel()
    model.observe(1, 10, 0.1)
    model.observe(1, 100, 3.0)  # steeper than proportional: the line crosses below zero
    cost = model.estimate
    assert cost.fixed_s == 0.0 and cost.per_token_s > 0


def test_old_batches_leave_the_window_and_bad_samples_are_ignored() -> None:
    model = CostModel(window=4)
    for tokens in (10, 40, 10, 40):
        model.observe(1, tokens, 0.5 + 0.05 * tokens)  # a slow engine, once
    for tokens in (10, 40, 10, 40):
        model.observe(1, tokens, 0.1 + 0.01 * tokens)  # now fast: the old samples are gone
    model.observe(0, 10, 1.0)
    model.observe(1, 0, 1.0)
    model.observe(1, 10, -1.0)
    assert model.estimate.fixed_s == pytest.approx(0.1) and model.estimate.per_token_s == pytest.approx(0.01)
    with pytest.raises(ValueError):
        CostModel(window=1)
