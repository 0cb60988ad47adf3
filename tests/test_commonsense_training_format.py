"""``task.train_format=lm_eval_query``: commonsense training rows become lm-eval's query + the gold option's text,
the very context and continuation that log-likelihood scoring reads; in a file mix each file names its benchmark."""

from __future__ import annotations

import json

import pytest
from conftest import CONF_DIR
from omegaconf import OmegaConf

from astra.data.datamodule import TaskDataModule
from astra.run.validation import ConfigError, check_dependent_settings
from astra.tasks.base import get_family
from astra.tasks.commonsense_benchmarks import BENCHMARKS, lm_eval_config


def answer_row(question: str, options: list[str], gold: int) -> dict:
    """An LLM-Adapters row of the "answer" layout (ARC, OBQA), written out as the files hold it."""
    listed = " ".join(f"Answer{k + 1}: {text}" for k, text in enumerate(options))
    words = "/".join(f"answer{k + 1}" for k in range(len(options)))
    return {"instruction": f"Please choose the correct answer to the question: {question}\n\n{listed}\n\n"
            f"Answer format: {words}", "input": "", "output": f"the correct answer is answer{gold + 1}",
            "answer": f"answer{gold + 1}"}  # fmt: skip


ARC_ROW = answer_row("Which gas do plants take in?", ["oxygen", "carbon dioxide", "helium"], 1)
OBQA_ROW = answer_row("The sun is responsible for", ["puppies learning", "plants sprouting", "rocks", "rain"], 1)
WINO_ROW = {
    "instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
    "Sarah was a much better surgeon than Maria so _ always got the harder cases.\n\n"
    "Option1: Sarah Option2: Maria Answer format: option1/option2",
    "input": "", "output": "the correct answer is option1", "answer": "option1",
}  # fmt: skip


def task_cfg(name: str, **changes):
    cfg = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def train_examples(cfg):
    return TaskDataModule(cfg, get_family("commonsense"), None, batch_size=1, seed=0)._load_examples("train")


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def test_single_benchmark_prompt_and_target_are_what_lm_eval_scores(tmp_path):
    cfg = task_cfg("arc_e", source="files", train_format="lm_eval_query",
                   **{"data.train": write(tmp_path, "train.json", [ARC_ROW]), "data.test": "unused"})  # fmt: skip
    [example] = train_examples(cfg)
    # By hand: ARC's lm-eval query is "Question: {question}\nAnswer:", the target the gold option after one space.
    assert example.prompt == "Question: Which gas do plants take in?\nAnswer:"
    assert example.answer == " carbon dioxide"
    config = lm_eval_config(BENCHMARKS["arc_e"], "arc_e_probe")
    assert config["doc_to_text"] == "query" and config["target_delimiter"] == " "  # the scorer reads the same


def test_a_file_mix_names_each_files_benchmark(tmp_path):
    files = [write(tmp_path, "arc.json", [ARC_ROW]), write(tmp_path, "obqa.json", [OBQA_ROW, OBQA_ROW])]
    cfg = task_cfg("commonsense_suite", source="files", train_format="lm_eval_query", benchmarks=["arc_e", "obqa"],
                   train_benchmarks=["arc_e", "obqa"], **{"data.train": files})  # fmt: skip
    examples = train_examples(cfg)
    assert [e.prompt for e in examples] == ["Question: Which gas do plants take in?\nAnswer:",
                                            "The sun is responsible for", "The sun is responsible for"]  # fmt: skip
    assert [e.answer for e in examples] == [" carbon dioxide", " plants sprouting", " plants sprouting"]
    # a suite's scored splits are named after its benchmarks: they are read as test rows, by task.format
    scored = get_family("commonsense").format_row(ARC_ROW, "arc_e", cfg)
    assert scored.prompt.startswith("Below is an instruction") and scored.reference == 1
    # the default format still trains the LLM-Adapters template on the same (tagged) rows
    cfg.train_format, cfg.train_benchmarks = None, None
    assert [e.answer for e in train_examples(cfg)] == [" the correct answer is answer2"] * 3


def test_winogrande_trains_lm_eval_partial_form():
    item_example = get_family("commonsense").format_row(WINO_ROW, "train", task_cfg("winogrande", train_format="lm_eval_query"))
    assert item_example.prompt == "Sarah was a much better surgeon than Maria so Sarah"
    assert item_example.answer == " always got the harder cases."


def test_bad_settings_are_refused(tmp_path):
    files = [write(tmp_path, "arc.json", [ARC_ROW]), write(tmp_path, "obqa.json", [OBQA_ROW])]
    suite = task_cfg("commonsense_suite", source="files", train_format="lm_eval_query", **{"data.train": files})
    with pytest.raises(ValueError, match="needs each row's benchmark: set task.train_benchmarks"):
        train_examples(suite)
    suite.train_benchmarks = ["arc_e"]
    with pytest.raises(ValueError, match=r"names 1 benchmarks but task.data.train lists 2 files"):
        train_examples(suite)
    suite.train_benchmarks = ["arc_e", "openbook"]
    with pytest.raises(ValueError, match="unknown commonsense task 'openbook'"):
        train_examples(suite)
    generation = task_cfg("arc_e", train_format="lm_eval_query", **{"eval.protocol": "generation"})
    with pytest.raises(ValueError, match="use task.eval.protocol=loglikelihood"):
        get_family("commonsense").check_ready(generation)
    with pytest.raises(ValueError, match="is a training format"):
        get_family("commonsense").format_row(ARC_ROW, "test", task_cfg("arc_e", format="lm_eval_query"))


def test_train_benchmarks_without_the_format_is_refused(compose_cfg):
    cfg = compose_cfg(["task=commonsense_suite", "task.train_benchmarks=[arc_e]"])
    with pytest.raises(ConfigError, match="task.train_benchmarks is given but takes effect only with "
                                          "task.train_format=lm_eval_query"):  # fmt: skip
        check_dependent_settings(cfg, ["task.train_benchmarks=[arc_e]"])
    cfg = compose_cfg(["task=commonsense_suite", "task.train_benchmarks=[arc_e]", "task.train_format=lm_eval_query"])
    check_dependent_settings(cfg, [])
