"""A contrast's interval is of the number the table prints: when the metric averages parts of unequal size (the
commonsense suite: the mean of three benchmarks' accuracies), the intervals weight and redraw items by part."""

from __future__ import annotations

import math
from statistics import fmean

import pytest
import torch

from astra.compare.protocol import ProtocolError
from astra.compare.report import metric_item_groups
from astra.report.seed_intervals import item_only_interval, two_level_interval

SIZES = {"big": 80, "small": 20}


def part_ids() -> list[str]:
    return [f"{part}-{i}" for part, n in SIZES.items() for i in range(n)]


def per_seed(matrix: list[list[float]]) -> dict[int, dict[str, float]]:
    ids = part_ids()
    return {seed: dict(zip(ids, row)) for seed, row in enumerate(matrix)}


def test_stratified_intervals_estimate_the_mean_of_part_means_with_the_stratified_variance():
    """Items only vary (no seed effect): the difference must be the mean of the two parts' mean differences (not
    the pooled item mean), and the SE the stratified one, sqrt(sum_g var_g / (G^2 n_g)), for both intervals."""
    big = torch.linspace(0.0, 0.4, SIZES["big"], dtype=torch.float64)  # part means 0.2 and 0.8
    small = torch.linspace(0.6, 1.0, SIZES["small"], dtype=torch.float64)
    row = torch.cat([big, small]).tolist()
    a, b = per_seed([row, row, row]), per_seed([[0.0] * len(row)] * 3)
    groups = {item: item.split("-")[0] for item in part_ids()}
    expected_difference = (0.2 + 0.8) / 2  # the pooled mean would be (80 x 0.2 + 20 x 0.8) / 100 = 0.32
    expected_se = math.sqrt(big.var(unbiased=False) / (4 * 80) + small.var(unbiased=False) / (4 * 20))
    for interval in (
        two_level_interval(a, b, samples=20_000, groups=groups),
        item_only_interval(a, b, samples=20_000, groups=groups),
    ):
        assert interval.difference == pytest.approx(expected_difference)
        assert interval.standard_error == pytest.approx(float(expected_se), rel=0.05)
        assert interval.low < expected_difference < interval.high
    pooled = two_level_interval(a, b)
    assert pooled.difference == pytest.approx(0.32)
    with pytest.raises(ValueError, match="no group"):
        two_level_interval(a, b, groups={"big-0": "big"})


def result(outcomes: dict[str, float], metric: float) -> dict:
    return {"metrics": {"accuracy": metric}, "items": {"ids": list(outcomes), "correct": list(outcomes.values())}}


def test_the_report_proves_how_the_metric_weights_items_and_refuses_a_metric_it_cannot_reproduce():
    ids = part_ids()
    outcomes = {item: float(i % 2 == 0 or item.startswith("small")) for i, item in enumerate(ids)}  # big 0.5, small 1
    pooled, by_part = fmean(outcomes.values()), (0.5 + 1.0) / 2
    plain = {"lora": {0: result(outcomes, pooled), 1: result(outcomes, pooled)}}
    assert metric_item_groups(plain, "accuracy", None) is None
    macro = {"lora": {0: result(outcomes, by_part)}, "astra": {0: result(outcomes, by_part)}}
    groups = metric_item_groups(macro, "accuracy", None)
    assert groups == {item: item.split("-")[0] for item in ids}
    mixed = {"lora": {0: result(outcomes, by_part), 1: result(outcomes, pooled)}}  # no one weighting fits every cell
    with pytest.raises(ProtocolError, match="row lora seed 1"):
        metric_item_groups(mixed, "accuracy", None)
    other = {"lora": {3: result(outcomes, 0.123)}}  # e.g. a correlation: not an item mean at all
    with pytest.raises(ProtocolError, match="row lora seed 3: its accuracy"):
        metric_item_groups(other, "accuracy", None)
