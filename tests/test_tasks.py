"""The task seam: every task YAML runs end to end on the tiny model; calibration text choices; row formats."""

from __future__ import annotations

import json

import pytest
from conftest import CONF_DIR, compose_config
from omegaconf import OmegaConf

from astra.data.datamodule import TaskDataModule
from astra.models.build import load_tiny_tokenizer
from astra.run import runner
from astra.tasks.base import REFERENCE_CALIBRATION_PROMPT, get_family
from astra.tasks.math import math_example, metamath_example

TASKS = sorted(path.stem for path in (CONF_DIR / "task").glob("*.yaml"))
QUICK = ["logger=none", "callbacks=none", "trainer=debug", "trainer.eval_limit=3"]


PROTOCOLS = [(task, None) for task in TASKS] + [("piqa", "generation"), ("hellaswag", "generation")]


@pytest.mark.parametrize("task,protocol", PROTOCOLS, ids=[f"{t}-{p}" if p else t for t, p in PROTOCOLS])
def test_every_task_runs_end_to_end(tmp_path, monkeypatch, task, protocol):
    extra = [f"task.eval.protocol={protocol}"] if protocol else []
    task_yaml = OmegaConf.load(CONF_DIR / "task" / f"{task}.yaml")
    if task_yaml.family == "code":  # generated code runs only on opt-in
        extra.append("task.eval.allow_code_execution=true")
        monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    # GLUE classifies on an encoder; every other family generates or scores text with a causal LM.
    extra += ["model=tiny_bert"] if task_yaml.family == "glue" else ["task.eval.max_new_tokens=8"]
    cfg = compose_config(tmp_path, [f"task={task}", "method=lora", *QUICK, *extra])
    metric = runner.train(cfg, overrides=[f"task={task}"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["task"] == task
    # Evaluation splits: MNLI's matched and mismatched dev; a suite's benchmarks; otherwise one test split.
    splits = len(task_yaml.get("benchmarks") or []) or (len(task_yaml.data) - 1 if task_yaml.family == "glue" else 1)
    assert -1.0 <= metric <= 1.0 and result["metrics"]["n_eval"] == 3 * splits  # MCC, Pearson: in [-1, 1]
    records = [json.loads(line) for line in (tmp_path / "run" / "eval" / f"{task}.jsonl").read_text().splitlines()]
    assert len(records) == 3 * splits
    assert all(("correct" in record) != (task == "stsb") for record in records)  # STS-B is a regression


def _datamodule(tmp_path, task):
    cfg = compose_config(tmp_path, [f"task={task}"])
    datamodule = TaskDataModule(cfg.task, get_family(cfg.task.family), load_tiny_tokenizer(), batch_size=4, seed=0)
    datamodule.setup()
    return cfg, datamodule


def test_reference_calibration_text_is_the_reference_codes(tmp_path):
    cfg, datamodule = _datamodule(tmp_path, "gsm8k")
    tokenizer = datamodule.tokenizer
    train = datamodule.calibration_dataloader(4, 4, "train").dataset
    reference = datamodule.calibration_dataloader(4, 4, "reference").dataset
    assert train.ids == reference.ids  # the same rows, another text
    first_row = datamodule.train_rows[reference.ids[0]]
    text = tokenizer.decode(reference.features[0]["input_ids"], skip_special_tokens=True)
    assert text.startswith(REFERENCE_CALIBRATION_PROMPT.format(instruction=first_row["question"]))
    assert "Below is an instruction" not in text
    assert "Below is an instruction" in tokenizer.decode(train.features[0]["input_ids"], skip_special_tokens=True)
    with pytest.raises(ValueError, match="method.calibration.text='both'"):
        datamodule.calibration_dataloader(4, 4, "both")


def test_math_rows_and_metamath_rows():
    task_cfg = compose_config_like_math()
    example = math_example({"problem": "What is 1/2 + 1/2?", "solution": "It is $\\boxed{1}$."}, "test", task_cfg)
    assert example.prompt.endswith("### Response: Let's think step by step.") and example.reference.endswith("$\\boxed{1}$.")
    with pytest.raises(ValueError, match="boxed"):
        math_example({"problem": "p", "solution": "no box"}, "test", task_cfg)
    for row in ({"query": "q?", "response": "so 2.\nThe answer is: 2"}, {"instruction": "q?", "output": "so 2.\nThe answer is: 2"}):
        example = metamath_example(row, "train", task_cfg)
        assert example.answer.endswith("The answer is: 2") and example.reference == "2"
        assert example.prompt.endswith("### Response:")  # the evaluation suffix is for test prompts only


def compose_config_like_math():
    return OmegaConf.load(CONF_DIR / "task" / "math.yaml")


def test_unknown_family_and_format_are_named(tmp_path):
    with pytest.raises(ValueError, match="task.family='poetry' is unknown; valid families"):
        get_family("poetry")
    cfg = compose_config(tmp_path, ["task=gsm8k", "task.format=haiku"])
    with pytest.raises(ValueError, match="task.format='haiku' is not a math row format"):
        TaskDataModule(cfg.task, get_family(cfg.task.family), load_tiny_tokenizer(), batch_size=4, seed=0).setup()


@pytest.mark.parametrize(
    "benchmark,text,expected",
    [("piqa", "The correct answer is solution2.", "solution2"), ("boolq", "the correct answer is TRUE", "true"),
     ("arc_c", "answer3 because answer1 is wrong", "answer3"), ("hellaswag", "I cannot tell", None)],
)  # fmt: skip
def test_generation_protocol_reads_the_first_option_word(benchmark, text, expected):
    from astra.tasks.commonsense import first_answer_word

    assert first_answer_word(benchmark, text) == expected


def test_commonsense_items_have_unique_ids(tmp_path):
    _, datamodule = _datamodule(tmp_path, "piqa")
    ids = [example.meta["id"] for example in datamodule.test_examples]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_lm_eval_scores_the_in_memory_residual_model_as_trained(tmp_path):
    """Astra changes the base weight: lm-eval must score the model as it is in memory (never reloaded as base +
    adapter). At init its log-likelihoods equal the base model's; a few training steps change them."""
    import torch

    from astra.models.build import build_model
    from astra.run import steps
    from astra.tasks.lm_eval_runner import score_multiple_choice

    cfg = compose_config(tmp_path, ["task=piqa", "method=astra", "method.calibration.n_samples=8", "logger=none",
                                    "callbacks=none", "trainer=debug", "optim.lr=1e-2"])  # fmt: skip
    datamodule = TaskDataModule(cfg.task, get_family(cfg.task.family), load_tiny_tokenizer(), batch_size=4, seed=0)
    datamodule.setup()
    items = [example.meta for example in datamodule.test_examples[:6]]
    base = build_model(cfg.model, cfg.seed, datamodule.tokenizer)

    def loglikelihoods(model):
        scored = score_multiple_choice(model, datamodule.tokenizer, "piqa", items, tmp_path / "lm_eval", batch_size=6)
        return torch.tensor([record["loglikelihoods"] for record in scored["records"]])

    before = loglikelihoods(base)
    model, _ = steps.apply_method(cfg, build_model(cfg.model, cfg.seed, datamodule.tokenizer), datamodule.family, datamodule, torch.device("cpu"))
    at_init = loglikelihoods(model)
    torch.testing.assert_close(at_init, before, rtol=1e-4, atol=1e-3)
    trainer = steps.build_trainer(cfg, torch.device("cpu"), [], [], tmp_path / "run")
    steps.fit(steps.build_module(cfg, model, torch.device("cpu")), datamodule, trainer)
    assert (loglikelihoods(model) - at_init).abs().max() > 0.1


def test_train_limit_takes_the_first_rows(tmp_path):
    cfg = compose_config(tmp_path, ["task=gsm8k", "task.train_limit=10"])
    datamodule = TaskDataModule(cfg.task, get_family(cfg.task.family), load_tiny_tokenizer(), batch_size=4, seed=0)
    datamodule.setup()
    assert len(datamodule.train_set) == 10 and datamodule.train_rows[0]["question"].startswith("Natalia")


def test_code_task_without_opt_in_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("ASTRA_ALLOW_CODE_EXECUTION", raising=False)
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail("the model was loaded without the opt-in"))
    with pytest.raises(PermissionError, match="task.eval.allow_code_execution=true.*ASTRA_ALLOW_CODE_EXECUTION=1"):
        runner.train(compose_config(tmp_path, ["task=humaneval", *QUICK]), overrides=[])


SHARED = CONF_DIR.parents[1] / "shared" / "data"  # ../shared beside the checkout (absent in other clones)
REAL_FILES = [("gsm8k", "gsm8k", "gsm8k/test.jsonl", 1319), ("gsm8k", "gsm8k", "gsm8k/GSM8K_test.jsonl", 1319),
              ("gsm8k", "llm_adapters", "gsm8k/test.json", 1319), ("math", "math", "math/test.json", 5000),
              ("math", "math", "math/test_ori.jsonl", 500)]  # fmt: skip


@pytest.mark.parametrize("task,fmt,path,rows", REAL_FILES, ids=[f[2] for f in REAL_FILES])
def test_math_loaders_read_every_real_file(tmp_path, task, fmt, path, rows):
    if not (SHARED / path).is_file():
        pytest.skip(f"{SHARED / path} is not here")
    overrides = [f"task={task}", "task.source=files", f"task.format={fmt}", f"task.data.train={SHARED / 'gsm8k/train.jsonl'}",
                 f"task.data.test={SHARED / path}", "task.train_limit=8", "task.train_format=gsm8k"]  # fmt: skip
    cfg = compose_config(tmp_path, overrides)
    datamodule = TaskDataModule(cfg.task, get_family(cfg.task.family), load_tiny_tokenizer(), batch_size=4, seed=0)
    datamodule.setup()
    assert len(datamodule.test_examples) == rows
    assert all(example.reference not in (None, "") for example in datamodule.test_examples)


def test_lm_eval_generation_equals_the_plain_loop(tmp_path):
    """backend=hf (lm-eval generate_until, HFLM on the in-memory model) gives the tokens the plain loop gives."""
    import torch

    from astra.models.build import tiny_llama
    from astra.tasks.generation import greedy_generate

    tokenizer, model = load_tiny_tokenizer(), tiny_llama(seed=0)
    prompts = ["Below is an instruction. ### Response:", "What is 2+2? The answer is:", "Hello there"]
    cpu = torch.device("cpu")
    through_lm_eval = greedy_generate(model, tokenizer, prompts, 12, 2, cpu, backend="hf", work_dir=tmp_path)
    assert through_lm_eval == greedy_generate(model, tokenizer, prompts, 12, 2, cpu, backend="loop")
    with pytest.raises(ValueError, match="task.eval.backend='tpu' is not valid"):
        greedy_generate(model, tokenizer, prompts, 12, 2, cpu, backend="tpu")


def test_math_training_rows_are_recognised_by_their_fields():
    from astra.tasks.math import MathFamily

    task_cfg = compose_config_like_math()
    assert task_cfg.train_format == "auto"
    family = MathFamily()
    metamath = family.format_row({"query": "q?", "response": "so 2.\nThe answer is: 2"}, "train", task_cfg)
    gsm8k = family.format_row({"question": "q?", "answer": "1+1=2\n#### 2"}, "train", task_cfg)
    assert metamath.reference == "2" and gsm8k.answer.endswith("The answer is: 2") and gsm8k.reference == "2"


def test_a_suite_trains_once_and_scores_every_benchmark(tmp_path):
    cfg = compose_config(tmp_path, ["task=commonsense_suite", "method=lora", *QUICK, "trainer.eval_limit=2",
                                    "task.eval.protocol=generation", "task.eval.max_new_tokens=4"])  # fmt: skip
    runner.train(cfg, overrides=[])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    benchmarks = list(cfg.task.benchmarks)
    metrics = result["metrics"]
    assert {f"accuracy_{b}" for b in benchmarks} <= set(metrics) and metrics["n_eval"] == 2 * len(benchmarks)
    assert metrics["accuracy"] == pytest.approx(sum(metrics[f"accuracy_{b}"] for b in benchmarks) / len(benchmarks))
    assert result["steps_done"] == 5  # one training for all eight
    assert [item.split("-")[0] for item in result["items"]["ids"]] == [b for b in benchmarks for _ in range(2)]


def test_the_log_likelihood_column_scores_the_same_items_as_a_log_likelihood_run(tmp_path):
    """``also_loglikelihood``: the generation run's second column equals, item for item, what a run scored by
    log-likelihood gives for the same training (same seed, CPU-deterministic), and the first column is unchanged."""
    common = ["task=commonsense_suite", "task.benchmarks=[arc_e,obqa]", "method=lora", *QUICK, "trainer.eval_limit=3"]
    runs = {}
    for name, extra in (("both", ["task.eval.protocol=generation", "task.eval.max_new_tokens=4",
                                  "task.eval.also_loglikelihood=true"]),
                        ("generation", ["task.eval.protocol=generation", "task.eval.max_new_tokens=4"]),
                        ("loglikelihood", [])):  # fmt: skip
        runner.train(compose_config(tmp_path / name, [*common, *extra]), overrides=[])
        runs[name] = json.loads((tmp_path / name / "run" / "result.json").read_text())
    both, ll = runs["both"], runs["loglikelihood"]
    for key in ("accuracy", "accuracy_arc_e", "accuracy_obqa"):
        assert both["metrics"][f"loglikelihood_{key}"] == ll["metrics"][key]
        assert both["metrics"][key] == runs["generation"]["metrics"][key]
    assert both["secondary_items"]["loglikelihood_accuracy"] == ll["items"]
    assert both["items"] == runs["generation"]["items"] and "secondary_items" not in runs["generation"]
    assert len(both["items"]["ids"]) == 6
