"""A comparison's protocol, read from its experiment config's ``compare`` block (conf/experiment/_compare.yaml
documents every key) and checked before any cell runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from astra.compare.selection import STATISTICS
from astra.run import hydra_support
from astra.run.skip_existing import PROJECT_ROOT

CONF_DIR = Path(PROJECT_ROOT) / "conf"
UNTRAINED = "untrained"


class ProtocolError(ValueError):
    pass


@dataclass
class Protocol:
    experiment: str  # the experiment config's name (experiment=<name>)
    name: str  # experiment_name: result folders <name>_select, <name>_test; chosen rates under <name>/
    arms: list[str]
    rates: dict[str, list[float]]
    untrained: bool
    select_seeds: list[int]
    test_seeds: list[int]
    select_overrides: list[str]
    test_overrides: list[str]
    contrasts: list[tuple[str, str]]
    widen_steps: int
    metric: str
    results_dir: Path
    log_dir: Path  # the cells' run directories: <log_dir>/compare/<name>/<phase>/...
    report_dir: Path
    user_overrides: list[str] = field(default_factory=list)
    secondary_metrics: list[str] = field(default_factory=list)  # reported beside the metric; the rule never reads them
    select_statistic: str = "mean"  # what the rule maximises over a rate's seeds (astra.compare.selection.STATISTICS)

    def phase_name(self, phase: str) -> str:
        return f"{self.name}_{phase}"

    @property
    def chosen_rates_file(self) -> Path:
        return self.results_dir / self.name / "chosen_rates.json"


def compose(overrides: list[str]) -> DictConfig:
    """The run config as ``run.py`` would compose it (the ``${astra_...}`` resolvers registered first)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    hydra_support.register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def _seeds(value: Any, key: str) -> list[int]:
    """``n`` -> seeds 0..n-1; a list -> those seeds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return list(value)
    raise ProtocolError(f"compare.{key}={value!r} is not valid: expected a number of seeds (>= 1) or a list of seeds")


def _rates(value: Any, key: str) -> list[float]:
    if isinstance(value, list) and value and all(isinstance(r, (int, float)) and r > 0 for r in value):
        return sorted(float(r) for r in value)
    raise ProtocolError(f"compare.rates.{key}={value!r} is not valid: expected a non-empty list of positive rates")


def load_protocol(experiment: str, user_overrides: list[str]) -> Protocol:
    cfg = compose([f"experiment={experiment}", *user_overrides])
    if "compare" not in cfg or cfg.compare is None:
        raise ProtocolError(f"experiment={experiment} has no compare block: it is not a comparison "
                            "(see conf/experiment/compare_smoke.yaml and docs/compare.md)")  # fmt: skip
    block = OmegaConf.to_container(cfg.compare, resolve=True)
    methods = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    arms = list(block.get("arms") or [])
    unknown = [arm for arm in arms if arm not in methods or arm == UNTRAINED]
    if not arms or unknown:
        raise ProtocolError(f"compare.arms={arms!r}: {unknown or 'empty'} not accepted; arms are trained methods "
                            f"of conf/method/ ({', '.join(m for m in methods if m != UNTRAINED)}); the untrained "
                            "row is compare.untrained: true")  # fmt: skip
    grids = block.get("rates") or {}
    if "default" not in grids and any(arm not in grids for arm in arms):
        raise ProtocolError("compare.rates needs a 'default' grid or one per arm (e.g. rates: {default: [1e-4, 3e-4]})")
    rates = {arm: _rates(grids.get(arm, grids.get("default")), arm if arm in grids else "default") for arm in arms}
    untrained = bool(block.get("untrained", True))
    rows = set(arms) | ({UNTRAINED} if untrained else set())
    contrasts = []
    for pair in block.get("contrasts") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and set(pair) <= rows and pair[0] != pair[1]):
            raise ProtocolError(f"compare.contrasts entry {pair!r} is not valid: expected [arm, arm] of {sorted(rows)}")
        contrasts.append((pair[0], pair[1]))
    widen = block.get("widen_steps", 1)
    if not isinstance(widen, int) or isinstance(widen, bool) or widen < 0:
        raise ProtocolError(f"compare.widen_steps={widen!r} is not valid: expected an integer >= 0")
    secondary = block.get("secondary_metrics") or []
    if not isinstance(secondary, list) or not all(isinstance(m, str) and m for m in secondary):
        raise ProtocolError(f"compare.secondary_metrics={secondary!r} is not valid: expected a list of metric names "
                            "(e.g. [loglikelihood_accuracy], with task.eval.also_loglikelihood: true)")  # fmt: skip
    select, test = block.get("select") or {}, block.get("test") or {}
    statistic = select.get("statistic", "mean")
    if statistic not in STATISTICS:
        raise ProtocolError(f"compare.select.statistic={statistic!r} is not valid: expected one of "
                            f"{', '.join(STATISTICS)}")  # fmt: skip
    return Protocol(
        experiment=experiment, name=str(cfg.experiment_name), arms=arms, rates=rates, untrained=untrained,
        select_seeds=_seeds(select.get("seeds", 2), "select.seeds"), test_seeds=_seeds(test.get("seeds", 5), "test.seeds"),
        select_overrides=[str(o) for o in select.get("overrides") or []],
        test_overrides=[str(o) for o in test.get("overrides") or []],
        contrasts=contrasts, widen_steps=widen, metric=str(cfg.task.eval.primary_metric),
        results_dir=Path(str(cfg.paths.results_dir)), log_dir=Path(str(cfg.paths.log_dir)), report_dir=Path(str(block.get("report_dir"))),
        user_overrides=list(user_overrides), secondary_metrics=list(secondary), select_statistic=statistic,
    )  # fmt: skip
