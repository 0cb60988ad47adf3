"""The task seam, whole: every family's ``evaluate`` hands over per-item outcomes equal to what its records file
says, and a benchmark of an existing family is one YAML (composed from a conf dir of its own, run end to end)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from astra.data.examples import Example
from astra.data.sources import SAMPLES_DIR, read_rows
from astra.tasks.base import EvalSettings, get_family, item_outcomes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUICK = ["logger=none", "callbacks=none", "trainer=debug", "trainer.eval_limit=3"]


def outcomes_from_file(path: Path) -> dict | None:
    """What the pipeline read back from the records file before ``evaluate`` returned ``items`` (its rules, verbatim)."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records or not all("correct" in record for record in records):
        return None

    def item_id(position: int, record: dict) -> str:
        for key in ("id", "task_id", "index"):
            if record.get(key) is not None:
                return str(record[key])
        if record.get("idx") is not None:
            return f"{record.get('split', '')}:{record['idx']}"
        return str(position)

    return {"ids": [item_id(k, r) for k, r in enumerate(records)], "correct": [int(bool(r["correct"])) for r in records]}


def task_cfg(name: str, **changes):
    cfg = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def settings(tmp_path, limit=None) -> EvalSettings:
    return EvalSettings(limit=limit, device=torch.device("cpu"), records_path=tmp_path / "eval" / "records.jsonl")


def formatted(cfg, folder: str, n: int, split: str = "test") -> list[Example]:
    path = SAMPLES_DIR / folder if (SAMPLES_DIR / folder).is_file() else next((SAMPLES_DIR / folder).glob("test.json*"))
    family = get_family(cfg.family)
    return [family.format_row(row, split, cfg) for row in read_rows(path)[:n]]


def fake_generate(answers):
    def generate(model, tokenizer, prompts, *args, **kwargs):
        return [answers[k % len(answers)] for k in range(len(prompts))]

    return generate


def check_items(result: dict, tmp_path) -> dict | None:
    """``items`` equals the records file read back, and ``item_outcomes`` of the file's records."""
    path = tmp_path / "eval" / "records.jsonl"
    expected = outcomes_from_file(path)
    assert result["items"] == expected
    assert item_outcomes([json.loads(line) for line in path.read_text().splitlines()]) == expected
    return expected


def test_math_items(tmp_path, monkeypatch):
    from astra.tasks import math

    cfg = task_cfg("gsm8k")
    examples = formatted(cfg, "gsm8k", 3)
    monkeypatch.setattr(math, "greedy_generate", fake_generate([f"The answer is: {examples[0].reference}", "no idea"]))
    items = check_items(math.MathFamily().evaluate(None, None, examples, cfg, settings(tmp_path)), tmp_path)
    assert items == {"ids": ["0", "1", "2"], "correct": [1, 0, int(examples[2].reference == examples[0].reference)]}


@pytest.mark.parametrize("protocol", ["generation", "loglikelihood"])
def test_commonsense_items(tmp_path, monkeypatch, protocol):
    from astra.models.build import load_tiny_tokenizer, tiny_llama
    from astra.tasks import commonsense

    cfg = task_cfg("arc_e", **{"eval.protocol": protocol, "eval.batch_size": 4})
    examples = formatted(cfg, "arc_e", 4)
    monkeypatch.setattr(commonsense, "greedy_generate", fake_generate(["answer1", "answer2 is it"]))
    model, tokenizer = (tiny_llama(seed=0), load_tiny_tokenizer()) if protocol == "loglikelihood" else (None, None)
    result = commonsense.CommonsenseFamily().evaluate(model, tokenizer, examples, cfg, settings(tmp_path))
    items = check_items(result, tmp_path)
    assert items["ids"] == [f"arc_e-{k}" for k in range(1, 5)]


def test_commonsense_suite_items(tmp_path, monkeypatch):
    from astra.tasks import commonsense

    cfg = task_cfg("commonsense_suite", **{"eval.protocol": "generation", "benchmarks": ["piqa", "boolq"]})
    examples = formatted(cfg, "piqa/test.json", 2, "piqa") + formatted(cfg, "boolq/test.json", 2, "boolq")
    monkeypatch.setattr(commonsense, "greedy_generate", fake_generate(["solution1 true"]))
    items = check_items(commonsense.CommonsenseFamily().evaluate(None, None, examples, cfg, settings(tmp_path)), tmp_path)
    assert items["ids"] == ["piqa-1", "piqa-2", "boolq-1", "boolq-2"]


def test_code_items(tmp_path, monkeypatch):
    from astra.tasks import code

    monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    cfg = task_cfg("humaneval", **{"eval.allow_code_execution": True, "eval.timeout_s": 20})
    examples = formatted(cfg, "humaneval", 2)
    monkeypatch.setattr(code, "greedy_generate", fake_generate(["    return None\n"]))
    items = check_items(code.CodeFamily().evaluate(None, None, examples, cfg, settings(tmp_path)), tmp_path)
    assert items["ids"] == [e.reference["task_id"] for e in examples] and items["correct"] == [0, 0]


@pytest.mark.parametrize("task", ["sst2", "mnli", "stsb"])
def test_glue_items(tmp_path, monkeypatch, task):
    from astra.tasks.glue import GlueFamily, task_spec

    cfg = task_cfg(task, **{"source": "sample"})
    spec = task_spec(cfg)
    family = GlueFamily()
    examples = []
    for split in spec.dev_splits:
        rows, _ = family.read_file(SAMPLES_DIR / cfg.sample_dir / f"{split}.tsv", cfg)
        examples += [family.format_row(row, split, cfg) for row in rows[:3]]

    def predict(self, model, tokenizer, rows, *args):  # class 0 / score 2.5, whatever the input
        return [2.5 + k if spec.is_regression else 0 for k in range(len(rows))]

    monkeypatch.setattr(GlueFamily, "predict", predict)
    items = check_items(family.evaluate(None, None, examples, cfg, settings(tmp_path)), tmp_path)
    if spec.is_regression:
        assert items is None  # STS-B scores no item as right or wrong
    else:
        assert items["ids"][:3] == [f"{spec.dev_splits[0]}:{k}" for k in range(3)]


# --------------------------------------------------------------------------- a new benchmark is one YAML
def compose_in(conf_dir: Path, tmp_path: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - registers the resolvers run.py registers

    paths = [f"paths.output_dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path / 'logs'}",
             f"paths.results_dir={tmp_path / 'results'}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="config", overrides=[*paths, *overrides])


def conf_with(tmp_path: Path, name: str, task: dict) -> Path:
    """A copy of conf/ with one more task YAML; the package's code is not touched."""
    conf_dir = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf_dir)
    (conf_dir / "task" / f"{name}.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(task)))
    return conf_dir


MCQ = [("Which of these is a colour?", ["blue", "seven", "quickly"], 1),
       ("What do bees make?", ["honey", "bricks", "clouds"], 1),
       ("Which animal barks?", ["cat", "dog", "fish"], 2),
       ("What is frozen water?", ["steam", "sand", "ice"], 3)]  # fmt: skip


@pytest.mark.parametrize("protocol", ["loglikelihood", "generation"])
def test_a_new_commonsense_benchmark_is_one_yaml(tmp_path, protocol):
    from astra.run import runner

    rows = [{"instruction": f"Please choose the correct answer to the question: {q}\n\n"
                            + " ".join(f"Answer{k + 1}: {c}" for k, c in enumerate(choices))
                            + "\n\nAnswer format: answer1/answer2/answer3",
             "input": "", "output": f"the correct answer is answer{gold}", "answer": f"answer{gold}"}
            for q, choices, gold in MCQ]  # fmt: skip
    (tmp_path / "quiz.json").write_text(json.dumps(rows))
    task = OmegaConf.to_container(task_cfg("arc_e"))
    task.update(name="quiz", benchmark="quiz", source="files",
                benchmark_facts={"quiz": {"layout": "answer", "max_choices": 3, "query": "Q: {}\nA:"}},
                data={"train": str(SAMPLES_DIR / "commonsense" / "train.json"), "test": str(tmp_path / "quiz.json")})
    conf_dir = conf_with(tmp_path, "quiz", task)
    cfg = compose_in(conf_dir, tmp_path, ["task=quiz", "method=lora", *QUICK, f"task.eval.protocol={protocol}",
                                          "task.eval.max_new_tokens=4", "task.train_limit=40"])  # fmt: skip
    runner.train(cfg, overrides=["task=quiz"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["task"] == "quiz" and result["metrics"]["n_eval"] == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "eval" / "quiz.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["quiz-1", "quiz-2", "quiz-3"]
    if protocol == "generation":
        assert [r["expected"] for r in records] == ["answer1", "answer1", "answer2"]
    else:
        assert [r["gold"] for r in records] == [0, 0, 1] and all(len(r["loglikelihoods"]) == 3 for r in records)


def test_a_new_glue_task_is_one_yaml(tmp_path):
    from astra.run import runner

    lines = ["id\tfirst\tsecond\tverdict"] + [
        f"{k}\tThe {w} is here number {k}.\tA {w} is {'here' if k % 2 else 'gone'}.\t{'same' if k % 2 else 'different'}"
        for k, w in enumerate(["cat", "dog", "cup", "box", "sun", "car", "pen", "hat", "map", "key"] * 2)
    ]  # fmt: skip
    (tmp_path / "train.tsv").write_text("\n".join(lines[:17]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(lines[:1] + lines[17:]) + "\n")
    task = OmegaConf.to_container(task_cfg("rte"))
    task.update(name="pairs", benchmark="pairs", source="files", validation_size=0,
                data={"train": str(tmp_path / "train.tsv"), "dev": str(tmp_path / "dev.tsv")},
                benchmark_facts={"pairs": {"text_fields": ["first", "second"], "label_names": ["different", "same"],
                                           "metrics": ["accuracy", "f1"], "header": ["id", "first", "second", "verdict"],
                                           "columns": ["first", "second", "verdict"]}})  # fmt: skip
    task["eval"]["primary_metric"] = "f1"
    conf_dir = conf_with(tmp_path, "pairs", task)
    cfg = compose_in(conf_dir, tmp_path, ["task=pairs", "model=tiny_bert", "method=lora", *QUICK])
    metric = runner.train(cfg, overrides=["task=pairs"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["task"] == "pairs" and 0.0 <= metric <= 1.0
    assert set(result["metrics"]) >= {"accuracy", "f1", "n_eval"} and result["metrics"]["n_eval"] == 3
    assert result["items"]["ids"] == ["dev:0", "dev:1", "dev:2"]
