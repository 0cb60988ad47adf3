"""Every fact about a commonsense benchmark, in one table (``BENCHMARKS``), so a benchmark is one row here or,
for a benchmark this table lacks, the same facts under ``task.benchmark_facts.<name>`` in its task YAML.

What code knows is a handful of *layouts*, not benchmarks; a benchmark names the ones it uses:

- ``layout``: the LLM-Adapters instruction form, named after its answer words: ``true_false`` (BoolQ),
  ``solution`` (PIQA: solution1/2), ``answer`` ("Please choose the correct answer to the question", answer1..N:
  SIQA, ARC, OBQA), ``option`` (WinoGrande's fill-in-the-blank, option1/2, scored by lm-eval's partial
  evaluation), ``ending`` (HellaSwag, ending1..4, also read from its 6-line text file);
- ``query``: lm-eval's prompt around the question (``"Question: {}\\nAnswer:"``), for the layouts whose query is
  the question (``true_false``, ``solution``, ``answer``);
- ``hub_layout``: the schema of the benchmark's own Hub rows (``commonsense_hub``): ``boolq``, ``piqa``,
  ``siqa``, ``winogrande``, ``hellaswag`` or ``choices`` (``{question, choices: {text, label}, answerKey}``, the
  question under ``hub_question``).

The Hub dataset and the sample / local files a run reads are the task YAML's (``hub``, ``sample_dir``, ``data``);
the lm-eval task config is derived from a row (``lm_eval_config``), never written by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

LAYOUTS = ("true_false", "solution", "answer", "option", "ending")
HUB_LAYOUTS = ("boolq", "piqa", "siqa", "winogrande", "hellaswag", "choices")


@dataclass(frozen=True)
class CommonsenseBenchmark:
    name: str
    layout: str  # one of LAYOUTS
    max_choices: int  # the answer words the generation protocol looks for: answer1 .. answer<max_choices>
    query: str = "{}"  # lm-eval's query; "{}" is the question
    hub_layout: str | None = None  # one of HUB_LAYOUTS; None: no Hub reader
    hub_question: str = "question"  # the ``choices`` schema's question field
    data_file: str | None = None  # the real test file below a data root such as /work/shared/data
    expected_count: int | None = None  # its number of items

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"commonsense benchmark {self.name!r}: layout={self.layout!r} is not one of {LAYOUTS}")
        if self.hub_layout is not None and self.hub_layout not in HUB_LAYOUTS:
            raise ValueError(f"commonsense benchmark {self.name!r}: hub_layout={self.hub_layout!r} is not one of {HUB_LAYOUTS}")

    def answer_word(self, k: int) -> str:
        """The LLM-Adapters answer word of choice ``k`` (0-based): "true", "solution2", "answer3", ..."""
        return ("false", "true")[k] if self.layout == "true_false" else f"{self.layout}{k + 1}"

    @property
    def answer_words(self) -> list[str]:
        return [self.answer_word(k) for k in range(self.max_choices)]


_QUESTION = "Question: {}\nAnswer:"
BENCHMARKS: dict[str, CommonsenseBenchmark] = {
    b.name: b
    for b in (
        CommonsenseBenchmark("boolq", "true_false", 2, "Question: {}?\nAnswer:", "boolq", data_file="boolq/test.json", expected_count=3270),
        CommonsenseBenchmark("piqa", "solution", 2, _QUESTION, "piqa", data_file="piqa/test.json", expected_count=1838),
        CommonsenseBenchmark("siqa", "answer", 3, "Q: {}\nA:", "siqa", data_file="social_i_qa/test.json", expected_count=1954),
        CommonsenseBenchmark("hellaswag", "ending", 4, hub_layout="hellaswag", data_file="hellaswag/hellaswag_val_full.txt.bz2",
                             expected_count=10042),
        CommonsenseBenchmark("winogrande", "option", 2, hub_layout="winogrande", data_file="winogrande/test.json", expected_count=1267),
        CommonsenseBenchmark("arc_e", "answer", 5, _QUESTION, "choices", data_file="ARC-Easy/test.json", expected_count=2376),
        CommonsenseBenchmark("arc_c", "answer", 5, _QUESTION, "choices", data_file="ARC-Challenge/test.json", expected_count=1172),
        CommonsenseBenchmark("obqa", "answer", 4, "{}", "choices", "question_stem", "openbookqa/test.json", 500),
    )
}  # fmt: skip


def benchmark(name: str | CommonsenseBenchmark, task_cfg: Any = None) -> CommonsenseBenchmark:
    """The row of ``name``: ``task.benchmark_facts.<name>`` of the task config when it states one, else the table's."""
    if isinstance(name, CommonsenseBenchmark):
        return name
    facts = (task_cfg.get("benchmark_facts") or {}).get(name) if task_cfg is not None else None
    if facts is not None:
        known = {f.name for f in fields(CommonsenseBenchmark)} - {"name"}
        unknown = sorted(set(facts) - known)
        if unknown:
            raise ValueError(f"task.benchmark_facts.{name} has unknown keys {unknown}; valid: {sorted(known)}")
        return CommonsenseBenchmark(name=name, **dict(facts))
    if name not in BENCHMARKS:
        raise ValueError(f"unknown commonsense task {name!r}; expected one of {tuple(BENCHMARKS)} "
                         f"or its facts under task.benchmark_facts.{name}")  # fmt: skip
    return BENCHMARKS[name]


# lm-eval's multiple-choice task over our items ({id, task, query, choices, gold, answer_word}) as JSONL; the data
# file is named at run time (``lm_eval_runner``). Feature names, not "{{query}}" templates: lm-eval turns a rendered
# template made only of digits into an int.
_LM_EVAL_TEMPLATE = {
    "dataset_path": "json", "dataset_name": None, "output_type": "multiple_choice", "num_fewshot": 0,
    "test_split": "test", "doc_to_text": "query", "doc_to_choice": "choices", "doc_to_target": "gold",
    "target_delimiter": " ", "metadata": {"version": 1.0},
}  # fmt: skip
_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}


def lm_eval_config(spec: CommonsenseBenchmark, task_name: str) -> dict[str, Any]:
    """lm-eval's task config for ``spec``'s items (derived here, so no task file restates the table)."""
    config = {**_LM_EVAL_TEMPLATE, "task": task_name, "metric_list": [dict(_ACC), dict(_ACC_NORM)]}
    if spec.layout == "option":
        # lm-eval's WinoGrande partial evaluation: one context per option (the sentence up to the blank + the
        # option), one shared continuation (the rest of the sentence), scored as " " + continuation. doc_to_text
        # returning the int feature `gold` is what switches lm-eval to this multiple-input form. acc only, as
        # lm-eval's winogrande: acc_norm would divide by the length of the contexts, which is meaningless here.
        config.update(doc_to_text="gold", doc_to_target="continuation", metric_list=[dict(_ACC)],
                      doc_to_choice="{{[query + choices[0], query + choices[1]]}}")  # fmt: skip
    return config
