"""Astra's randomized eigensolver against exact ``eigh`` on a REAL pretrained model's calibration moments.

    PYTHONPATH=src python experiments/bench/real_eigensolver.py --data-root ../shared/data    # CPU: ~5 min
    PYTHONPATH=src python experiments/bench/real_eigensolver.py --data-root ../shared/data --ranks 8 --rounds 1

The random-weight models of ``init_cost.py`` and ``init_scaling.py`` have nearly flat output spectra (lam_r /
lam_{r+1} of 1.002 to 1.013), where no top-r subspace is well defined and ``eigensolver=auto`` falls back to
``eigh``. This asks the question for real weights: SmolLM2-135M-Instruct (``model=smollm2_135m``, installed
offline) with the real comparison's calibration rows (``experiment=real_commonsense_lr``: 64 rows of the
LLM-Adapters training mix, max length 256, read from ``--data-root``). The moments are collected once (cached in
a temp dir, so every solve below sees the same statistics) and then, per rank, Astra's init runs with
``eigensolver=exact`` and ``auto`` in interleaved rounds, as ``init_astra`` runs it (all 210 projections).

Printed per rank: the eigen stage's time (min / median / max over rounds; ``init_seconds`` of the init report:
everything after calibration), how ``auto`` solved the layers (randomized and accepted / re-solved exactly), the
gaps lam_r / lam_{r+1}, and the agreement of the accepted randomized bases with exact ``eigh``: the sine of the
largest principal angle between the two B's column spaces, and the Davis-Kahan estimate the solver accepted them
on (which should bound it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, environment, print_table, spread, spreads_overlap, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def compose(data_root: Path, rank: int, out: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - the ${astra_...} resolvers, as run.py registers them

    overrides = [f"paths.output_dir={out / 'run'}", f"paths.log_dir={out / 'logs'}", f"paths.results_dir={out / 'r'}",
                 "experiment=real_commonsense_lr", "method=astra", f"data_root={data_root}", f"rank={rank}",
                 f"alpha={2 * rank}", "logger=none"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def sine_of_largest_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """sin of the largest principal angle between span(a) and span(b), d x r each, in float64."""
    qa, qb = torch.linalg.qr(a.detach().double())[0], torch.linalg.qr(b.detach().double())[0]
    return float(torch.linalg.matrix_norm(qb - qa @ (qa.mT @ qb), ord=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a folder with the files of ../shared/data")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "real_eigensolver.json")
    args = parser.parse_args(argv)
    if not (args.data_root / "ARC-Easy" / "train.json").is_file():
        parser.error(f"--data-root {args.data_root} has no ARC-Easy/train.json (pass the folder ../shared/data)")
    torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    from astra.calibration.source import calibration_loader
    from astra.methods.astra import init_astra
    from astra.methods.base import InitContext
    from astra.models.adapters import lora_layers
    from astra.models.build import build_model_and_tokenizer
    from astra.run import steps
    from astra.tasks.base import get_family

    rows, details = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = compose(args.data_root, args.ranks[0], tmp)
        base, tokenizer = build_model_and_tokenizer(cfg.model, cfg.seed)
        family = get_family(cfg.task.family)
        loader = calibration_loader(cfg, steps.build_datamodule(cfg, family, tokenizer), family, family_of=get_family)
        options = OmegaConf.to_container(cfg.method.init, resolve=True)
        for key in ("_target_", "_partial_"):
            options.pop(key)
        n_samples = int(cfg.method.calibration.n_samples)
        # one key for every solve: the moments depend on the data and the base weights only, not on the rank
        context = InitContext(seed=0, cache_dir=tmp / "cache", cache_key={"bench": "real_eigensolver"})
        for rank in args.ranks:
            cfg = compose(args.data_root, rank, tmp)
            peft_kwargs = OmegaConf.to_container(cfg.method.peft, resolve=True)
            times = {"exact": [], "auto": []}
            models, reports = {}, {}
            for round_index in range(args.rounds):
                for solver in ("exact", "auto") if round_index % 2 == 0 else ("auto", "exact"):
                    model = get_peft_model(copy.deepcopy(base), LoraConfig(task_type="CAUSAL_LM", **peft_kwargs))
                    report = init_astra(model, loader, context, **{**options, "eigensolver": solver},
                                        n_samples=n_samples, progress=False)  # fmt: skip
                    times[solver].append(report["init_seconds"])
                    models[solver], reports[solver] = model, report
            auto_checks, exact_checks = reports["auto"]["eigen"], reports["exact"]["eigen"]
            angles, accepted_bounds = {}, {}
            exact_b = {name: m.lora_B["default"].weight for name, m in lora_layers(models["exact"])}
            for name, module in lora_layers(models["auto"]):
                if auto_checks[name]["solver"] == "randomized":
                    angles[name] = sine_of_largest_angle(module.lora_B["default"].weight, exact_b[name])
                    accepted_bounds[name] = auto_checks[name]["angle_bound"]
            gaps = sorted(c["gap"] for c in exact_checks.values() if "gap" in c)
            worst = max(angles, key=angles.get) if angles else None
            row = {
                "rank": rank, "layers": len(exact_checks),
                "exact_s": spread(times["exact"]), "auto_s": spread(times["auto"]),
                "auto/exact": round(statistics.median(times["auto"]) / statistics.median(times["exact"]), 3),
                "overlap": spreads_overlap(times["auto"], times["exact"]),
                "randomized": len(angles), "resolved_exactly": len(auto_checks) - len(angles),
                "gap_min": gaps[0] if gaps else None, "gap_median": statistics.median(gaps) if gaps else None,
                "max_sin_angle": angles[worst] if worst else None,
                "its_bound": accepted_bounds[worst] if worst else None,
                "bound_holds": all(angles[n] <= accepted_bounds[n] for n in angles) if angles else None,
            }  # fmt: skip
            rows.append(row)
            details[rank] = {"times": times, "auto_solvers": reports["auto"]["eigensolver"],
                             "sin_angle": angles, "angle_bound": accepted_bounds, "gaps": gaps}  # fmt: skip
            print_table([row], list(row))
            del models, reports
    print()
    print_table(rows, list(rows[0]))
    path = write_json({"benchmark": "real_eigensolver", "model": "smollm2_135m", "calibration": "real_commonsense_lr",
                       "environment": environment(torch.device("cpu")), "rounds": args.rounds, "rows": rows,
                       "details": {str(k): v for k, v in details.items()}}, args.out)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
