"""The commonsense family: BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA.

Training rows are LLM-Adapters rows ``{instruction, input, output, answer}`` (commonsense_170k is their union),
formatted with the Alpaca prompt, the loss on ``output``. Two evaluation protocols, chosen by
``task.eval.protocol``:

- ``loglikelihood``: zero-shot lm-eval multiple choice (what the Astra reference code runs): each option's
  summed log-probability as a continuation of lm-eval's standard query (see ``commonsense_data``), in process on
  the trained model (``lm_eval_runner``); ``accuracy`` is lm-eval's ``acc`` (``acc_norm`` is kept too).
- ``generation``: the LLM-Adapters protocol most LoRA papers report: greedy decoding after the Alpaca prompt
  of the benchmark's instruction, the first option word in the output ("solution1", "true", ...) compared
  with the gold one. ``task.eval.also_loglikelihood: true`` scores the same items by log-likelihood too, in the same
  run: metrics ``loglikelihood_accuracy`` (and ``loglikelihood_accuracy_<benchmark>`` in a suite), per-item outcomes
  under ``secondary_items.loglikelihood_accuracy``, records in ``<records>_loglikelihood.jsonl``. A fine-tune that
  only teaches the answer template moves the first column and not the second; one that changes what the model
  knows moves both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from astra.data.examples import Example
from astra.data.sources import read_rows_with_lines
from astra.tasks.base import ALPACA_PROMPT, EvalSettings, TaskFamily, item_outcomes, write_records
from astra.tasks.commonsense_benchmarks import BENCHMARKS, CommonsenseBenchmark
from astra.tasks.commonsense_benchmarks import benchmark as spec
from astra.tasks.commonsense_data import answer_word, parse_llm_adapters_row, read_hellaswag
from astra.tasks.commonsense_hub import hub_item
from astra.tasks.generation import generation_options, greedy_generate
from astra.tasks.lm_eval_runner import score_multiple_choice

PROTOCOLS = ("loglikelihood", "generation")
# The option words the generation protocol looks for, per benchmark (as LLM-Adapters' answer extraction).
ANSWER_WORDS = {name: "|".join(b.answer_words) for name, b in BENCHMARKS.items()}


def hellaswag_instruction(item: dict) -> str:
    """LLM-Adapters' HellaSwag instruction, for items read from the 6-line text file (which has none)."""
    endings = "".join(f"\nEnding{k + 1}: {ending}" for k, ending in enumerate(item["choices"]))
    return (f"Please choose the correct ending to complete the given sentence: {item['query']}\n{endings}\n\n"
            "Answer format: ending1/ending2/ending3/ending4")  # fmt: skip


def first_answer_word(benchmark: str | CommonsenseBenchmark, generation: str) -> str | None:
    found = re.findall("|".join(spec(benchmark).answer_words), generation.strip().lower())
    return found[0] if found else None


def lm_eval_query_example(item: dict) -> Example:
    """A training example that teaches what log-likelihood scoring reads: lm-eval's query as the prompt and the
    gold option's text as the target, joined by lm-eval's target delimiter " " (WinoGrande's partial form: the
    sentence up to the blank with the gold option as the prompt, the rest of the sentence as the target)."""
    gold = item["choices"][item["gold"]]
    if "continuation" in item:
        return Example(item["query"] + gold, " " + item["continuation"], item["answer_word"])
    return Example(item["query"], " " + gold, item["answer_word"])


def training_file_benchmark(path: Path, task_cfg: Any) -> str | None:
    """The benchmark ``task.train_benchmarks`` names for the training file ``path`` (its place in
    ``task.data.train``); None when no list is set or ``path`` is not one of the training files."""
    names = task_cfg.get("train_benchmarks")
    if not names:
        return None
    files = (task_cfg.get("data") or {}).get("train")
    files = [files] if isinstance(files, str) else list(files or [])
    if len(files) != len(names):
        raise ValueError(f"task.train_benchmarks={list(names)} names {len(names)} benchmarks but task.data.train "
                         f"lists {len(files)} files; expected one benchmark per training file")  # fmt: skip
    for name in names:
        spec(name, task_cfg)  # an unknown name fails here, naming the valid ones
    resolved = Path(path).expanduser().resolve()
    for file, name in zip(files, names, strict=True):
        if Path(os.path.expanduser(str(file))).resolve() == resolved:
            return str(name)
    return None


def suite_benchmarks(task_cfg: Any) -> list[str]:
    """``task.benchmarks`` of a suite task (one training, every listed benchmark scored); [] for a single benchmark."""
    return list(task_cfg.get("benchmarks") or [])


class CommonsenseFamily(TaskFamily):
    name = "commonsense"

    def check_ready(self, task_cfg: Any) -> None:
        super().check_ready(task_cfg)
        if task_cfg.get("train_format") == "lm_eval_query" and task_cfg.eval.protocol != "loglikelihood":
            raise ValueError(f"task.train_format=lm_eval_query teaches the options' text, which "
                             f"task.eval.protocol={task_cfg.eval.protocol!r} does not read (it looks for the answer "
                             "words of the llm_adapters template); use task.eval.protocol=loglikelihood")  # fmt: skip

    def eval_splits(self, task_cfg: Any) -> list[str]:
        return suite_benchmarks(task_cfg) or ["test"]

    def read_file(self, path: Path, task_cfg: Any = None):
        if path.suffix in (".txt", ".bz2"):
            items = read_hellaswag(path)
            return items, [f"file {path} item {k + 1} (line {6 * k + 1})" for k in range(len(items))]
        named = training_file_benchmark(path, task_cfg) if task_cfg is not None else None
        if named is not None:  # a training file of task.train_benchmarks: each row says which benchmark it is
            numbered = read_rows_with_lines(path)
            return [{**row, "benchmark": named} for _, row in numbered], [f"file {path} line {n}" for n, _ in numbered]
        return None

    def row_formats(self):
        return {"llm_adapters": self._format, "lm_eval_query": self._lm_eval_query_format}

    def _lm_eval_query_format(self, row: dict, split: str, task_cfg: Any) -> Example:
        if split != "train":
            raise ValueError("task.format=lm_eval_query is a training format (task.train_format); "
                             "test rows are read with task.format=llm_adapters")  # fmt: skip
        name = row.get("benchmark") or task_cfg.get("benchmark")
        if not name:
            raise ValueError("task.train_format=lm_eval_query needs each row's benchmark: set task.train_benchmarks "
                             "to one benchmark per task.data.train file (e.g. [arc_e, arc_c, obqa])")  # fmt: skip
        return lm_eval_query_example(parse_llm_adapters_row(spec(name, task_cfg), row, "row", 0))

    def _format(self, row: dict, split: str, task_cfg: Any) -> Example:
        if split == "train":
            for key in ("instruction", "output", "answer"):
                if key not in row:
                    raise KeyError(f"LLM-Adapters row lacks field {key!r}; expected instruction, input, output, answer")
            return Example(ALPACA_PROMPT.format(instruction=row["instruction"]), " " + row["output"], row["answer"])
        benchmark = split if split in suite_benchmarks(task_cfg) else task_cfg.benchmark
        positions = self.__dict__.setdefault("_positions", {})
        position = positions[benchmark] = positions.get(benchmark, 0) + 1  # 1-based, per benchmark: the item id
        facts = spec(benchmark, task_cfg)  # the table's row, or the YAML's task.benchmark_facts.<benchmark>
        if "query" in row and "gold" in row:  # already an item (HellaSwag's text file)
            item = row
        elif "instruction" in row:  # an LLM-Adapters test file
            item = parse_llm_adapters_row(facts, row, "row", position)
        else:  # the benchmark's own Hub dataset (task.source=hub)
            hub = (task_cfg.get("hub") or {}).get(benchmark if benchmark in suite_benchmarks(task_cfg) else "test")
            item = hub_item(facts, row, position, f"row {position}", dataset=hub.get("path") if hub else None)
        instruction = row.get("instruction") or item.get("instruction") or hellaswag_instruction(item)
        return Example(ALPACA_PROMPT.format(instruction=instruction), "", item["gold"], meta=item)

    def instruction_and_output(self, row: dict, task_cfg: Any) -> tuple[str, str]:
        return row["instruction"], row["output"]

    def evaluate(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings) -> dict:
        protocol = task_cfg.eval.protocol
        if protocol not in PROTOCOLS:
            raise ValueError(f"task.eval.protocol={protocol!r} is not valid; expected one of {list(PROTOCOLS)}")
        output = self._evaluate(model, tokenizer, examples, task_cfg, settings, protocol, settings.records_path)
        if protocol == "generation" and task_cfg.eval.get("also_loglikelihood", False):
            path = settings.records_path
            second = self._evaluate(model, tokenizer, examples, task_cfg, settings, "loglikelihood",
                                    path.with_name(f"{path.stem}_loglikelihood{path.suffix}") if path else None)  # fmt: skip
            output["metrics"].update({f"loglikelihood_{key}": value for key, value in second["metrics"].items()
                                      if key.startswith("accuracy")})  # fmt: skip
            output["secondary_items"] = {"loglikelihood_accuracy": second["items"]}
        return output

    def _evaluate(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings,
                  protocol: str, records_path: Path | None) -> dict:  # fmt: skip
        benchmarks = suite_benchmarks(task_cfg)
        if not benchmarks:
            benchmark = spec(task_cfg.benchmark, task_cfg)
            records, metrics = self._score(model, tokenizer, examples, task_cfg, settings, benchmark, protocol)
            write_records(records_path, records)
            return {"metrics": metrics, "samples": records[:3], "items": item_outcomes(records)}
        # A suite: each benchmark scored on its own items (the first ``limit`` of each); ``accuracy`` is their mean.
        records, metrics = [], {}
        for name in benchmarks:
            items = [e for e in examples if e.meta["task"] == name]
            scored, scores = self._score(model, tokenizer, items, task_cfg, settings, spec(name, task_cfg), protocol)
            records += [{"benchmark": name, **record} for record in scored]
            metrics[f"accuracy_{name}"] = scores["accuracy"]
        metrics["accuracy"] = sum(metrics[f"accuracy_{b}"] for b in benchmarks) / len(benchmarks)
        metrics["n_eval"] = float(len(records))
        write_records(records_path, records)
        return {"metrics": metrics, "samples": records[:3], "items": item_outcomes(records)}

    def _score(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings,
               benchmark: CommonsenseBenchmark, protocol: str) -> tuple[list[dict], dict]:  # fmt: skip
        examples = examples[: settings.limit] if settings.limit else examples
        if protocol == "loglikelihood":
            work_dir = (settings.records_path.parent if settings.records_path else Path(".")) / "lm_eval"
            scored = score_multiple_choice(model, tokenizer, benchmark, [e.meta for e in examples], work_dir,
                                           batch_size=int(task_cfg.eval.batch_size))  # fmt: skip
            metrics = scored["metrics"]
            return scored["records"], {"accuracy": metrics["acc"], "acc_norm": metrics.get("acc_norm"),
                                       "n_eval": float(metrics["n_eval"])}  # fmt: skip
        generations = greedy_generate(model, tokenizer, [e.prompt for e in examples], task_cfg.eval.max_new_tokens,
                                      task_cfg.eval.batch_size, settings.device, **generation_options(task_cfg, settings))  # fmt: skip
        records = []
        for example, text in zip(examples, generations):
            extracted, expected = first_answer_word(benchmark, text), answer_word(example.meta)
            records.append({"id": example.meta["id"], "generation": text, "extracted": extracted,
                            "expected": expected, "correct": extracted == expected})  # fmt: skip
        return records, {"accuracy": sum(r["correct"] for r in records) / len(records), "n_eval": float(len(records))}
