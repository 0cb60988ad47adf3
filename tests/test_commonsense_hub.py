"""Commonsense test items from the benchmarks' own Hub rows (task.source=hub), checked against the file readers."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from astra.tasks.base import ALPACA_PROMPT
from astra.tasks.commonsense import CommonsenseFamily
from astra.tasks.commonsense_data import TASKS, CommonsenseDataError, parse_llm_adapters_row
from astra.tasks.commonsense_hub import hub_item

# One row per benchmark in its Hub dataset's schema (field names and value types as the datasets publish them).
HUB_ROWS = {
    "boolq": {"question": "is the sun a star", "passage": "The Sun is the star at the centre.", "label": 1, "idx": 0},
    "piqa": {"goal": "Dry wet shoes", "sol1": "Stuff them with newspaper.", "sol2": "Freeze them.", "label": 0},
    "siqa": {"context": "Kai gave Ash a gift.", "question": "How would Ash feel?", "answerA": "grateful",
             "answerB": "angry", "answerC": "bored", "label": "1"},
    "hellaswag": {"activity_label": "Baking cookies", "ctx_a": "A woman mixes dough.", "ctx_b": "she",
                  "endings": ["puts it in the oven.", "eats the bowl.", "[title] sings.", "leaves."], "label": "0"},
    "winogrande": {"sentence": "The cup did not fit in the box because the _ was too big.", "option1": "cup",
                   "option2": "box", "answer": "1"},
    "arc_e": {"question": "What do plants need?", "answerKey": "B",
              "choices": {"text": ["Rocks", "Sunlight", "Sand"], "label": ["A", "B", "C"]}},
    "arc_c": {"question": "Which is a metal?", "answerKey": "4",
              "choices": {"text": ["wood", "glass", "paper", "iron"], "label": ["1", "2", "3", "4"]}},
    "obqa": {"question_stem": "The sun is responsible for", "answerKey": "D",
             "choices": {"text": ["puppies", "rain", "cars", "plants sprouting"], "label": ["A", "B", "C", "D"]}},
}  # fmt: skip
GOLD = {"boolq": 1, "piqa": 0, "siqa": 0, "hellaswag": 0, "winogrande": 0, "arc_e": 1, "arc_c": 3, "obqa": 3}


def test_every_benchmark_has_a_hub_row_and_yaml_source():
    """The Hub dataset lives in the task YAML only; the suite names the same one for each benchmark."""
    assert set(HUB_ROWS) == set(TASKS)
    suite = OmegaConf.load("conf/task/commonsense_suite.yaml").hub
    for task in TASKS:
        yaml_hub = OmegaConf.load(f"conf/task/{task}.yaml").hub.test
        assert yaml_hub.path and yaml_hub.split and suite[task] == yaml_hub


@pytest.mark.parametrize("task", TASKS)
def test_hub_item_instruction_reads_back_as_llm_adapters_row(task):
    item = hub_item(task, HUB_ROWS[task], 1, "row 1")
    assert item["gold"] == GOLD[task] and item["id"] == f"{task}-1"
    if task == "hellaswag":  # no LLM-Adapters instruction on the item; the family builds it (tested below)
        return
    # The instruction must be exactly what LLM-Adapters' file would hold: its own parser recovers the item.
    as_file = parse_llm_adapters_row(task, {"instruction": item["instruction"], "answer": item["answer_word"]}, "x", 1)
    assert as_file["choices"] == item["choices"] and as_file["gold"] == item["gold"]
    if task != "boolq":  # boolq: the Hub row has the passage, the file has not
        assert as_file["query"] == item["query"]


def test_hub_queries_are_lm_evals():
    assert hub_item("boolq", HUB_ROWS["boolq"], 1, "r")["query"] == (
        "The Sun is the star at the centre.\nQuestion: is the sun a star?\nAnswer:"
    )
    hellaswag = hub_item("hellaswag", HUB_ROWS["hellaswag"], 1, "r")
    assert hellaswag["query"] == "Baking cookies: A woman mixes dough. She"
    assert hellaswag["choices"][2] == " sings."  # lm-eval's preprocess strips first, then drops "[title]"
    winogrande = hub_item("winogrande", HUB_ROWS["winogrande"], 1, "r")
    assert winogrande["query"] == "The cup did not fit in the box because the "
    assert winogrande["continuation"] == "was too big."
    assert hub_item("obqa", HUB_ROWS["obqa"], 1, "r")["query"] == "The sun is responsible for"


def test_bad_hub_rows_name_the_row_and_what_was_expected():
    with pytest.raises(CommonsenseDataError, match=r"row 7: a piqa Hub row needs fields .*missing \['sol2'\].*baber/piqa"):
        hub_item("piqa", {"goal": "g", "sol1": "a", "label": 0}, 7, "row 7", dataset="baber/piqa")
    with pytest.raises(CommonsenseDataError, match=r"answerKey='E' is not one of \['A', 'B', 'C'\]"):
        hub_item("arc_e", {**HUB_ROWS["arc_e"], "answerKey": "E"}, 1, "row 1")
    with pytest.raises(CommonsenseDataError, match=r"label='' is not one of"):
        hub_item("hellaswag", {**HUB_ROWS["hellaswag"], "label": ""}, 1, "row 1")  # the hidden-label test split


def test_family_formats_hub_rows_for_both_protocols():
    cfg = OmegaConf.load("conf/task/arc_e.yaml")
    example = CommonsenseFamily().format_row(HUB_ROWS["arc_e"], "test", cfg)
    assert example.reference == 1 and example.meta["choices"] == ["Rocks", "Sunlight", "Sand"]
    assert example.prompt == ALPACA_PROMPT.format(instruction=example.meta["instruction"])
    hellaswag = CommonsenseFamily().format_row(HUB_ROWS["hellaswag"], "test", OmegaConf.load("conf/task/hellaswag.yaml"))
    assert "Ending4: leaves." in hellaswag.prompt and "Answer format: ending1/ending2/ending3/ending4" in hellaswag.prompt
