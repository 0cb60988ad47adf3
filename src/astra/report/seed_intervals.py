"""Intervals for method comparisons (``python -m astra.compare`` and the report's tables): a two-level bootstrap that resamples seeds and test items (the primary interval), the
item-only interval beside it, and the minimum detectable difference of the design.

An arm's test outcomes form a matrix ``[seed, item]`` (1/0 for right/wrong, or the item's score). For a contrast
A - B the statistic is the mean over seeds and items of A minus the same mean of B. One bootstrap replicate draws
the seeds with replacement and, independently, the items with replacement, and recomputes the statistic with
those multiplicities. Items are always paired (the same test item on both sides). Seeds are paired when both
arms ran at least two of the same seeds (seed k of A against seed k of B: the same data order and head init);
otherwise each arm's seeds are drawn on their own.

Why two levels: the seed-to-seed spread of a fine-tune (data order, head init) is often larger than the item
sampling error, and an interval over items alone treats three seeds' average as if it were the arm's true score.

Stratified items: a metric that averages per-part scores (the commonsense suite: the mean of ARC-Easy's,
ARC-Challenge's and OpenBookQA's accuracies, whatever their sizes) weights item i of part g by 1 / (G n_g). With
``groups`` (item id -> part) both intervals use those weights, and the bootstrap redraws each part's items within
the part (its size fixed), so the statistic is the metric the tables print and its variance is the stratified one,
sum over parts of var_g / (G^2 n_g).

The minimum detectable difference at 80% power, two-sided alpha = 0.05, is ``(z_0.975 + z_0.80) x SE`` with SE the
standard deviation of the two-level bootstrap distribution: a true difference that large would exclude zero four
times in five under this design (normal approximation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

BOOTSTRAP_SAMPLES = 10_000
Z_975, Z_80 = 1.959964, 0.841621
MDD_FACTOR = Z_975 + Z_80  # 2.8016
CHUNK = 1_000  # replicates per batch: [chunk, items] float64 stays small at 2000 items


@dataclass
class Interval:
    difference: float  # mean over seeds and items of A - B, score units (x100 in tables)
    low: float
    high: float
    standard_error: float  # sd of the bootstrap distribution
    minimum_detectable: float  # MDD_FACTOR x standard_error
    seeds_a: int
    seeds_b: int
    seeds_paired: bool
    items: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome_matrix(per_seed: dict[int, dict[str, float]], seeds: list[int], items: list[str]) -> torch.Tensor:
    """``[len(seeds), len(items)]`` float64: each seed's outcome per item."""
    return torch.tensor([[per_seed[s][i] for i in items] for s in seeds], dtype=torch.float64)


def _counts(generator: torch.Generator, replicates: int, n: int) -> torch.Tensor:
    """``[replicates, n]``: how often each of n units is drawn in n draws with replacement."""
    picks = torch.randint(n, (replicates, n), generator=generator)
    return torch.zeros(replicates, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones_like(picks, dtype=torch.float64)
    )


def _strata(items: list[str], groups: dict[str, str] | None) -> list[torch.Tensor] | None:
    """Column indices of each part, or None when the items are weighted alike (no groups, or one part)."""
    if not groups:
        return None
    missing = [item for item in items if item not in groups]
    if missing:
        raise ValueError(f"items {missing[:3]} have no group; groups must name one for every compared item")
    parts: dict[str, list[int]] = {}
    for column, item in enumerate(items):
        parts.setdefault(groups[item], []).append(column)
    return [torch.tensor(columns) for _, columns in sorted(parts.items())] if len(parts) > 1 else None


def _stratified_weights(generator: torch.Generator, replicates: int, strata: list[torch.Tensor],
                        n_items: int) -> torch.Tensor:  # fmt: skip
    """``[replicates, n_items]``: each part's items redrawn within the part, weighted 1 / (G n_g) per draw."""
    weights = torch.zeros(replicates, n_items, dtype=torch.float64)
    for columns in strata:
        weights[:, columns] = _counts(generator, replicates, len(columns)) / (len(columns) * len(strata))
    return weights


def _point_weights(strata: list[torch.Tensor], n_items: int) -> torch.Tensor:
    weights = torch.zeros(n_items, dtype=torch.float64)
    for columns in strata:
        weights[columns] = 1.0 / (len(columns) * len(strata))
    return weights


def two_level_interval(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]],
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                       groups: dict[str, str] | None = None) -> Interval | None:  # fmt: skip
    """``a``, ``b``: seed -> item id -> outcome; ``groups``: item id -> part, for a metric that averages parts
    (module docstring). None when no item is shared by every seed of both sides."""
    shared_seeds = sorted(set(a) & set(b))
    paired = len(shared_seeds) >= 2
    seeds_a, seeds_b = (shared_seeds, shared_seeds) if paired else (sorted(a), sorted(b))
    if not seeds_a or not seeds_b:
        return None
    items = sorted(set.intersection(*(set(a[s]) for s in seeds_a), *(set(b[s]) for s in seeds_b)))
    if not items:
        return None
    matrix_a, matrix_b = outcome_matrix(a, seeds_a, items), outcome_matrix(b, seeds_b, items)
    generator = torch.Generator().manual_seed(seed)
    n_items, strata = len(items), _strata(items, groups)
    replicates = []
    for start in range(0, samples, CHUNK):
        size = min(CHUNK, samples - start)
        item_weights = (_counts(generator, size, n_items) / n_items if strata is None
                        else _stratified_weights(generator, size, strata, n_items))  # fmt: skip
        weights_a = _counts(generator, size, len(seeds_a)) / len(seeds_a)
        weights_b = weights_a if paired else _counts(generator, size, len(seeds_b)) / len(seeds_b)
        mean_a = ((weights_a @ matrix_a) * item_weights).sum(dim=1)
        mean_b = ((weights_b @ matrix_b) * item_weights).sum(dim=1)
        replicates.append(mean_a - mean_b)
    distribution = torch.cat(replicates)
    low, high = torch.quantile(distribution, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    se = float(distribution.std())
    difference = (float(matrix_a.mean() - matrix_b.mean()) if strata is None
                  else float((matrix_a.mean(dim=0) - matrix_b.mean(dim=0)) @ _point_weights(strata, n_items)))  # fmt: skip
    return Interval(difference, low, high, se, MDD_FACTOR * se,
                    len(seeds_a), len(seeds_b), paired, n_items)  # fmt: skip


def item_only_interval(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]],
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                       groups: dict[str, str] | None = None) -> Interval | None:  # fmt: skip
    """The same contrast with each item's outcome averaged over the seeds first and only the items resampled:
    the interval of the earlier tables, which ignores the seed-to-seed spread (shown beside the primary one)."""
    shared_seeds = sorted(set(a) & set(b))
    seeds_a, seeds_b = (shared_seeds, shared_seeds) if len(shared_seeds) >= 2 else (sorted(a), sorted(b))
    if not seeds_a or not seeds_b:
        return None
    items = sorted(set.intersection(*(set(a[s]) for s in seeds_a), *(set(b[s]) for s in seeds_b)))
    if not items:
        return None
    differences = outcome_matrix(a, seeds_a, items).mean(dim=0) - outcome_matrix(b, seeds_b, items).mean(dim=0)
    generator, strata = torch.Generator().manual_seed(seed), _strata(items, groups)
    if strata is None:
        picks = torch.randint(len(items), (samples, len(items)), generator=generator)
        distribution, difference = differences[picks].mean(dim=1), float(differences.mean())
    else:  # each part's items redrawn within the part; the parts averaged with equal weight
        part_means = [differences[columns][torch.randint(len(columns), (samples, len(columns)), generator=generator)]
                      .mean(dim=1) for columns in strata]  # fmt: skip
        distribution = torch.stack(part_means).mean(dim=0)
        difference = float(differences @ _point_weights(strata, len(items)))
    low, high = torch.quantile(distribution, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    se = float(distribution.std())
    return Interval(difference, low, high, se, MDD_FACTOR * se, len(seeds_a), len(seeds_b),
                    len(shared_seeds) >= 2, len(items))  # fmt: skip
