"""The rate-selection rule, fixed before any cell runs (docs/compare.md):

1. Each arm runs every rate of its grid with every selection seed, scored on the validation rows.
2. A cell **collapsed** when its classifier predicted one class for every validation item, or its score is at or
   below the untrained model's score with the same seed (the untrained row runs with every selection seed).
3. A rate at which any seed collapsed is excluded. Of the remaining rates, the one with the best mean validation
   score over the seeds is chosen (a tie goes to the lower rate: the safer side of a collapse). With
   ``select.statistic: worst_seed`` the best *lowest* score over the seeds is chosen instead (the mean breaks a
   tie): a rate where one seed trains late or badly loses to a rate where every seed trains.
4. If the chosen rate is the grid's lowest or highest, the grid is widened by one step on that side (the ratio of
   the two rates at that edge) and the rule is applied again, ``widen_steps`` times at most (default 1). If every
   rate was excluded, the grid is widened downwards. A best rate still on an edge afterwards is chosen and flagged.
5. An arm with every rate excluded after widening has no rate: it is left out of the test phase and the report
   says so.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any

STATISTICS = {  # select.statistic: what "best" means among the rates no seed collapsed at
    "mean": "best mean validation score over the selection seeds",
    "worst_seed": "best worst-seed validation score (the lowest score over the selection seeds; the mean breaks a tie)",
}


def rule_text(statistic: str = "mean") -> str:
    """The rule in words, as the chosen-rates file and the report state it."""
    return (
        f"{STATISTICS[statistic]}; a rate is excluded if any seed collapsed there (one predicted class for every "
        "item, or a score at or below the untrained model's with that seed); ties go to the lower rate; a best rate "
        "on the grid's edge widens the grid by one step on that side (widen_steps times)"
    )


def rate_key(rate: float) -> str:
    """How a rate is written as a JSON key and in tables: three significant digits (1e-3, 3e-4, 1.25e-05)."""
    return f"{rate:.3g}"


def same_rate(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def collapse_reason(result: dict[str, Any], metric: str, untrained_score: float | None) -> str | None:
    """Why a selection cell counts as collapsed, or None."""
    counts = result.get("prediction_counts") or {}
    scored = sum(counts.values()) if counts else 0
    if scored and max(counts.values()) == scored:
        predicted = max(counts, key=counts.get)
        return f"predicted class {predicted!r} for all {scored} items"
    score = result["metrics"][metric]
    if untrained_score is not None and score <= untrained_score:
        return f"{metric} {score:.4g} <= the untrained model's {untrained_score:.4g}"
    return None


def significant_digits(rate: float) -> int:
    return len(f"{rate:.3e}".split("e")[0].replace(".", "").rstrip("0")) or 1


def widened_rate(grid: list[float], side: str) -> float:
    """One step beyond the grid's lowest (``side='low'``) or highest rate, at the ratio of the two edge rates (a
    one-rate grid steps by 3x, half a decade), rounded to as many significant digits as the grid's rates have
    (1e-4, 3e-4, 1e-3 widen to 3e-5 and 3e-3)."""
    ordered = sorted(grid)
    if side == "low":
        rate = ordered[0] / (ordered[1] / ordered[0] if len(ordered) > 1 else 3.0)
    else:
        rate = ordered[-1] * (ordered[-1] / ordered[-2] if len(ordered) > 1 else 3.0)
    digits = max(significant_digits(r) for r in ordered)
    return float(f"{rate:.{digits - 1}e}")


def decide(grid: list[float], cells: dict[tuple[float, int], dict[str, Any]], seeds: list[int], metric: str,
           untrained: dict[int, float], statistic: str = "mean") -> dict[str, Any]:  # fmt: skip
    """One arm's decision from its selection cells ``(rate, seed) -> result``. Every (rate, seed) of the grid must
    have a result (the caller runs missing cells first). Returns the per-rate table and ``chosen`` (None: nothing
    left), ``edge`` ('low' / 'high' / None: where the grid would widen)."""
    per_rate: dict[str, Any] = {}
    for rate in sorted(grid):
        scores, collapsed = {}, {}
        for seed in seeds:
            result = cells[(rate, seed)]
            scores[seed] = result["metrics"][metric]
            reason = collapse_reason(result, metric, untrained.get(seed))
            if reason:
                collapsed[seed] = reason
        per_rate[rate_key(rate)] = {"rate": rate, "scores": scores, "mean": fmean(scores.values()),
                                    "collapsed": collapsed}  # fmt: skip
    usable = [row for row in per_rate.values() if not row["collapsed"]]
    if not usable:
        return {"rates": per_rate, "chosen": None, "edge": "low"}
    if statistic == "worst_seed":
        best = max(usable, key=lambda row: (min(row["scores"].values()), row["mean"], -row["rate"]))
    else:
        best = max(usable, key=lambda row: (row["mean"], -row["rate"]))  # a tie: the lower rate
    ordered = sorted(grid)
    edge = "low" if same_rate(best["rate"], ordered[0]) else "high" if same_rate(best["rate"], ordered[-1]) else None
    return {"rates": per_rate, "chosen": best["rate"], "edge": edge}
