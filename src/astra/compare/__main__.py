"""python -m astra.compare experiment=<name> [overrides ...] [--phase select|test|report|all] [--dry-run]

Runs a comparison end to end, by the protocol its experiment config writes down before anything runs
(conf/experiment/_compare.yaml documents the ``compare`` block; docs/compare.md the whole protocol):

  select  every arm over its rate grid on the validation rows, compare.select.seeds seeds each, and the untrained
          row; the rule (astra.compare.selection) picks each arm's rate, widening a grid whose best rate is on its
          edge; the choices go to <results_dir>/<experiment_name>/chosen_rates.json (never into a config by hand)
  test    each arm at its chosen rate x compare.test.seeds seeds on the test rows, and the untrained row
  report  per-seed values, mean and sd; each contrast of compare.contrasts with its two-level bootstrap interval
          (seeds and items), the item-only interval and the minimum detectable difference; a forest plot
          (compare.report_dir: report.md, report.json, forest.png)

Every cell is an ordinary run (its result file under <results_dir>/<experiment_name>_select or _test); a cell whose
ok result exists is read, not run again, so the same command resumes an interrupted comparison. Any other
key=value is a Hydra override applied to every cell (e.g. data_root=../shared/data). --dry-run prints each cell's
run.py command instead (to run them elsewhere, e.g. as a SLURM array or side by side; then run this command to read
them back): the select phase's grid (a widened rate is known only once the grid's cells are read), and the test
phase's cells once the select phase has written the chosen rates.
Exit code 0 when the phase finished, 1 when a cell failed (the others still ran; rerun to retry it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from astra.run import console

console.quiet_third_party(sys.argv)  # before the noisy imports, as run.py does (ASTRA_VERBOSE=1 keeps all)

from astra.compare import report as report_module  # noqa: E402
from astra.compare.cells import Cell, CellFailed, cells_for, run_cell  # noqa: E402
from astra.compare.protocol import UNTRAINED, Protocol, ProtocolError, load_protocol  # noqa: E402
from astra.compare.selection import decide, rate_key, rule_text, widened_rate  # noqa: E402
from astra.run import results  # noqa: E402

PHASES = ("select", "test", "report", "all")


class Session:
    """Runs cells, one progress line each, and remembers failures (a phase with a failed cell stops there)."""

    def __init__(self, protocol: Protocol, dry_run: bool, read_only: bool = False):
        self.protocol, self.dry_run, self.read_only = protocol, dry_run, read_only  # read_only: --phase report
        self.log_dir = protocol.log_dir / "compare" / protocol.name
        self.failed: list[str] = []
        self.ran = self.read = 0

    def run(self, cells: list[Cell]) -> dict[Cell, dict[str, Any]]:
        done = {}
        for index, cell in enumerate(cells, 1):
            if self.dry_run:
                print(cell.command(self.protocol))
                continue
            start = time.perf_counter()
            try:
                result, ran = run_cell(cell, self.protocol, self.log_dir, self.read_only)
            except CellFailed as exc:
                self.failed.append(str(exc))
                print(f"[{index}/{len(cells)}] {cell.label()}  FAILED (see the end)", flush=True)
                continue
            self.ran, self.read = self.ran + ran, self.read + (not ran)
            score = result["metrics"][self.protocol.metric]
            how = f"ran in {time.perf_counter() - start:.0f} s" if ran else "existing result"
            print(f"[{index}/{len(cells)}] {cell.label()}  {self.protocol.metric} {score:.3f}  ({how})", flush=True)
            done[cell] = result
        return done


def select(session: Session) -> dict[str, Any] | None:
    protocol = session.protocol
    grids = {arm: list(rates) for arm, rates in protocol.rates.items()}
    print(f"select: {len(protocol.arms)} arms over their rate grids x seeds {protocol.select_seeds} "
          f"(experiment_name={protocol.phase_name('select')})", flush=True)  # fmt: skip
    done = session.run(cells_for("select", grids, protocol.select_seeds, protocol.untrained))
    widenings: dict[str, list[float]] = {arm: [] for arm in protocol.arms}
    for _ in range(protocol.widen_steps + 1):
        if session.failed or session.dry_run:
            return None
        untrained = {c.seed: r["metrics"][protocol.metric] for c, r in done.items() if c.arm == UNTRAINED}
        decisions = {}
        for arm in protocol.arms:
            cells = {(c.rate, c.seed): r for c, r in done.items() if c.arm == arm}
            decisions[arm] = decide(grids[arm], cells, protocol.select_seeds, protocol.metric, untrained,
                                   protocol.select_statistic)
        to_widen = {
            arm: d["edge"] for arm, d in decisions.items() if d["edge"] and len(widenings[arm]) < protocol.widen_steps
        }
        if not to_widen:
            break
        extra = {}
        for arm, side in to_widen.items():
            rate = widened_rate(grids[arm], side)
            grids[arm].append(rate)
            widenings[arm].append(rate)
            extra[arm] = [rate]
            print(f"select: {arm}'s best rate is on the grid's {side} edge: widening to {rate_key(rate)}", flush=True)
        done.update(session.run(cells_for("select", extra, protocol.select_seeds, untrained=False)))
    chosen = {"experiment": protocol.experiment, "experiment_name": protocol.name,
              "rule": rule_text(protocol.select_statistic), "statistic": protocol.select_statistic,
              "metric": protocol.metric, "seeds": protocol.select_seeds, "untrained": untrained, "arms": {}}  # fmt: skip
    for arm, decision in decisions.items():
        chosen["arms"][arm] = {**decision, "grid": sorted(grids[arm]), "widened_to": widenings[arm],
                               "on_edge_after_widening": bool(decision["edge"]) and decision["chosen"] is not None}  # fmt: skip
        verdict = (
            "no rate (every rate collapsed)" if decision["chosen"] is None else f"rate {rate_key(decision['chosen'])}"
        )
        print(
            f"select: {arm:<13} {verdict}"
            + ("  (still on the grid's edge)" if chosen["arms"][arm]["on_edge_after_widening"] else "")
        )
    chosen["code_versions"] = report_module.code_versions(done.values())
    protocol.chosen_rates_file.parent.mkdir(parents=True, exist_ok=True)
    protocol.chosen_rates_file.write_text(json.dumps(chosen, indent=2) + "\n", encoding="utf-8")
    print(f"select: chosen rates -> {protocol.chosen_rates_file}", flush=True)
    return chosen


def read_chosen(protocol: Protocol) -> dict[str, Any]:
    path = protocol.chosen_rates_file
    if not path.is_file():
        raise ProtocolError(f"{path} does not exist: run the select phase first (--phase select, or --phase all)")
    try:
        chosen = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{path} is not readable JSON ({exc}): rerun --phase select to write it again") from exc
    return for_arms(chosen, protocol, path)


def for_arms(chosen: dict[str, Any], protocol: Protocol, path: Path) -> dict[str, Any]:
    """The chosen rates of compare.arms alone: an arm the file lacks is an error (select has not run for it); an
    arm the file has beyond compare.arms is left out, and said so (never tested or reported behind the user's back)."""
    missing = [arm for arm in protocol.arms if arm not in chosen["arms"]]
    if missing:
        raise ProtocolError(f"compare.arms has {missing}, which {path} has no chosen rate for (it has "
                            f"{sorted(chosen['arms'])}): run --phase select to choose their rates")  # fmt: skip
    left_out = [arm for arm in chosen["arms"] if arm not in protocol.arms]
    if left_out:
        print(f"left out: {', '.join(left_out)} (in {path.name}, not in compare.arms)", flush=True)
    return {**chosen, "arms": {arm: d for arm, d in chosen["arms"].items() if arm in protocol.arms}}


def test(session: Session, chosen: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]] | None:
    protocol = session.protocol
    rates = {arm: [d["chosen"]] for arm, d in chosen["arms"].items() if d["chosen"] is not None}
    print(f"test: {len(rates)} arms at their chosen rates x seeds {protocol.test_seeds} "
          f"(experiment_name={protocol.phase_name('test')})", flush=True)  # fmt: skip
    done = session.run(cells_for("test", rates, protocol.test_seeds, protocol.untrained))
    if session.failed or session.dry_run:
        return None
    by_row: dict[str, dict[int, dict[str, Any]]] = {}
    for cell, result in done.items():
        by_row.setdefault(cell.arm, {})[cell.seed] = result
    return by_row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m astra.compare", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="experiment=<name> (required) and Hydra overrides for every cell")
    parser.add_argument("--phase", choices=PHASES, default="all", help="run one phase (default: all three)")
    parser.add_argument("--dry-run", action="store_true", help="print the phase's run.py commands, run nothing")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after --phase
    experiments = [o.split("=", 1)[1] for o in args.overrides if o.startswith("experiment=")]
    if len(experiments) != 1:
        parser.error("give exactly one experiment=<name> (a config of conf/experiment/ with a compare block)")
    others = [o for o in args.overrides if not o.startswith("experiment=")]
    try:
        protocol = load_protocol(experiments[0], others)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    session = Session(protocol, args.dry_run, read_only=args.phase == "report")
    start = time.perf_counter()
    chosen = select(session) if args.phase in ("select", "all") else None
    if args.phase in ("test", "report", "all") and not session.failed and not args.dry_run:
        try:
            chosen = chosen or read_chosen(protocol)
        except ProtocolError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        tested = test(session, chosen)
        if tested is not None and args.phase in ("report", "all"):
            try:
                written = report_module.write(protocol, tested, chosen)
            except ProtocolError as exc:  # e.g. a secondary metric the cells did not score
                print(f"error: {exc}", file=sys.stderr)
                return 1
            for path in written:
                print(f"report: {path}")
    elif args.dry_run and args.phase in ("test", "all"):
        if protocol.chosen_rates_file.is_file():  # the rates are chosen: the test cells are known
            print(f"test: at the rates of {protocol.chosen_rates_file}")
            try:
                test(session, read_chosen(protocol))
            except ProtocolError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        else:
            print(f"test: its cells depend on the rates the select phase chooses ({protocol.chosen_rates_file} does "
                  "not exist yet): run --phase select first")  # fmt: skip
    if session.failed:
        print("\n".join(["", "failed cells:", *session.failed]), file=sys.stderr)
        return 1
    print(f"compare: {session.ran} cells ran, {session.read} read from existing results, "
          f"{time.perf_counter() - start:.0f} s; results under {results.experiment_dir(protocol.results_dir, protocol.name)}*")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
