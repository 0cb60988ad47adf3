"""The code family (HumanEval, MBPP): row formats, truncation, the opt-in before generation, pass@1 of fixed
generations executed in subprocesses, EvalPlus plus tests, loaders of the real files, shipped samples."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR
from omegaconf import OmegaConf

from astra.data.sources import SAMPLES_DIR, load_split, read_rows
from astra.tasks import code
from astra.tasks.base import EvalSettings, get_family
from astra.tasks.code import CodeFamily, extract_code, mbpp_entry_point

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HUMANEVAL_GZ = SHARED / "humaneval" / "HumanEval.jsonl.gz"
MBPP_JSONL = SHARED / "mbpp" / "mbpp.jsonl"
MBPP_PLUS = SHARED / "mbpp" / "MbppPlus.jsonl"
ENV_VAR = "ASTRA_ALLOW_CODE_EXECUTION"


def task_cfg(task: str, allow: bool = False, **eval_overrides):
    cfg = OmegaConf.load(CONF_DIR / "task" / f"{task}.yaml")
    cfg.eval.allow_code_execution = allow
    cfg.eval.timeout_s = 20  # generous: the two cores are shared with other jobs
    for key, value in eval_overrides.items():
        cfg.eval[key] = value
    return cfg


def sample_rows(folder: str, split: str = "test") -> list[dict]:
    return read_rows(next((SAMPLES_DIR / folder).glob(f"{split}.jsonl")))


def examples(task: str, n: int = 3, fmt: str | None = None):
    cfg = task_cfg(task)
    rows = sample_rows(task)[:n]
    family = CodeFamily()
    if fmt:
        cfg.format = fmt
    return [family.format_row(row, "test", cfg) for row in rows]


def patch_generation(monkeypatch, outputs):
    calls = []

    def fake(model, tokenizer, prompts, max_new_tokens, batch_size, device, **options):
        calls.append(prompts)
        return outputs(prompts) if callable(outputs) else list(outputs)

    monkeypatch.setattr(code, "greedy_generate", fake)
    return calls


def settings(tmp_path, limit=None):
    return EvalSettings(limit=limit, device=torch.device("cpu"), records_path=tmp_path / "eval" / "code.jsonl")


def records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "eval" / "code.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ formats
def test_family_is_registered_and_names_its_formats():
    family = get_family("code")
    assert isinstance(family, CodeFamily)
    assert set(family.row_formats()) == {"humaneval", "mbpp", "mbpp_plus", "codefeedback"}


def test_humaneval_row_format():
    row = sample_rows("humaneval")[0]
    example = CodeFamily().format_row(row, "test", task_cfg("humaneval"))
    assert example.prompt.startswith("Below is an instruction")
    assert "### Instruction:\nComplete the following python code:\n" + row["prompt"] in example.prompt
    assert example.prompt.endswith("### Response:")
    assert example.reference == {"benchmark": "humaneval", "task_id": "HumanEval/0", "prompt": row["prompt"],
                                 "test": row["test"], "entry_point": "has_close_elements"}  # fmt: skip
    assert example.answer.startswith(" ```python\n" + row["prompt"])


def test_mbpp_row_format():
    row = sample_rows("mbpp")[0]
    example = CodeFamily().format_row(row, "test", task_cfg("mbpp"))
    instruction = example.prompt.split("### Instruction:\n")[1]
    assert instruction.startswith("You are an expert Python programmer, and here is your task: Write a python "
                                  "function to remove first and last occurrence")  # fmt: skip
    assert "Your code should pass these tests:\n\n" + "\n".join(row["test_list"]) + "\n\n### Response:" in instruction
    assert example.reference["entry_point"] == "remove_Occ" and example.reference["test_list"] == row["test_list"]
    assert example.answer == " ```python\n" + row["code"].replace("\r\n", "\n").rstrip() + "\n```"
    # DeepSeek-Coder's mbpp_test.jsonl schema {prompt, test, code, task_id}
    alias = {"prompt": row["text"], "test": row["test_list"], "code": row["code"], "task_id": 11}
    assert CodeFamily().format_row(alias, "test", task_cfg("mbpp")).prompt == example.prompt


def test_codefeedback_training_rows_and_their_limits():
    cfg = task_cfg("humaneval")
    family = CodeFamily()
    example = family.format_row({"instruction": "Write hello.", "output": "```python\nprint(1)\n```"}, "train", cfg)
    assert example.prompt.endswith("Write hello.\n\n### Response:") and example.answer == " ```python\nprint(1)\n```"
    assert family.format_row({"query": "q", "answer": "a"}, "train", cfg).answer == " a"  # CodeFeedback-Filtered
    assert family.instruction_and_output({"instruction": "i", "output": "o"}, cfg) == ("i", "o")
    with pytest.raises(KeyError, match="CodeFeedback row lacks field 'instruction'"):
        family.format_row({"text": "x"}, "train", cfg)
    cfg.format = "codefeedback"
    with pytest.raises(ValueError, match="training format"):
        family.format_row({"instruction": "i", "output": "o"}, "test", cfg)


@pytest.mark.parametrize(
    "task,row,message",
    [("humaneval", {"task_id": "H/0", "prompt": "def f():\n", "entry_point": "f"}, "lacks field 'test'"),
     ("humaneval", {"task_id": "H/0", "prompt": 3, "test": "", "entry_point": "f"}, "'prompt' must be a string"),
     ("mbpp", {"task_id": 1, "text": "t", "code": "c"}, "lacks field 'test_list'"),
     ("mbpp", {"task_id": 1, "text": "t", "test_list": "assert f()"}, "non-empty list")],
)  # fmt: skip
def test_bad_rows_say_what_is_wrong(task, row, message):
    with pytest.raises((KeyError, TypeError), match=message):
        CodeFamily().format_row(row, "test", task_cfg(task))


def test_mbpp_entry_point_skips_wrapping_builtins():
    assert mbpp_entry_point(["assert set(similar_elements((3, 4), (4, 5))) == set((4,))"]) == "similar_elements"
    assert mbpp_entry_point(["assert math.isclose(area(2), 12.56, rel_tol=0.001)"]) == "area"
    assert mbpp_entry_point(["assert sum(10,15) == 6"], "def sum(a, b):\n    pass") == "sum"  # MBPP task 126


# --------------------------------------------------------------------------------------------- truncation
FULL_FUNCTION = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    "generation,entry_point,expected",
    [
        # CodeFeedback style: prose, a fenced program with example usage, more prose
        (" Here is the function:\n\n```python\ndef add(a, b):\n    return a + b\n\n# Example usage\nprint(add(1, 2))\n"
         "```\n\nThis adds two numbers.", "add", FULL_FUNCTION),
        # prose, then a fence without a language tag
        ("Here it is:\n```\ndef add(a, b):\n    return a + b\n```", "add", FULL_FUNCTION),
        # a fence without a language tag, closed
        ("```\ndef add(a, b):\n    return a + b\n```\n```python\nprint(3)\n```", "add", FULL_FUNCTION),
        # a HumanEval body continuation, then a new top-level function
        ("    for x in xs:\n        if x:\n            return True\n    return False\n\n\ndef main():\n    pass\n",
         "f", "    for x in xs:\n        if x:\n            return True\n    return False\n"),
        # the Alpaca separator's space before a body continuation, cut at a closing fence
        ("     return a + b\n```\nDone.", "add", "    return a + b\n"),
        # a leading space before the def; driver code after the function
        (" def add(a, b):\n    return a + b\n\nif __name__ == \"__main__\":\n    print(add(1, 2))\n", "add", FULL_FUNCTION),
        # imports and helpers before the function are kept; a call of it and a new def after are cut
        ("import math\n\ndef helper(x):\n    return x\n\ndef add(a, b):\n    return helper(a) + b\n\nresult = add(1, 2)\n"
         "def other():\n    pass\n", "add",
         "import math\n\ndef helper(x):\n    return x\n\ndef add(a, b):\n    return helper(a) + b\n"),
        # decorators and classes after the function end it too; asserts anywhere
        ("def add(a, b):\n    return a + b\n@dataclass\nclass X:\n    pass\n", "add", FULL_FUNCTION),
        ("def add(a, b):\n    return a + b\nassert add(1, 2) == 3\n", None, FULL_FUNCTION),
        # a helper defined after the function is kept when the function is unknown ...
        ("def add(a, b):\n    return helper(a) + b\n\ndef helper(x):\n    return x\n", None,
         "def add(a, b):\n    return helper(a) + b\n\ndef helper(x):\n    return x\n"),
        # ... and cut after the named function (the Codex-style stop at a new top-level def)
        ("def add(a, b):\n    return a + b\n\ndef helper(x):\n    return x\n", "add", FULL_FUNCTION),
        ("\r\n```python\r\ndef add(a, b):\r\n    return a + b\r\n```", "add", FULL_FUNCTION),
        (" ```````", "add", ""),
        ("print(add(1, 2))\ndef add(a, b):\n    return a + b\n", "add", ""),
        ("", "add", ""),
    ],
)  # fmt: skip
def test_truncation_of_realistic_generations(generation, entry_point, expected):
    assert extract_code(generation, entry_point) == expected


# ------------------------------------------------------------------------------------------------- opt-in
@pytest.mark.parametrize(
    "allow,env,missing",
    [(False, "1", ["task.eval.allow_code_execution=true"]), (True, None, ["ASTRA_ALLOW_CODE_EXECUTION=1"]),
     (False, None, ["task.eval.allow_code_execution=true", "ASTRA_ALLOW_CODE_EXECUTION=1"]), (True, "0", [ENV_VAR])],
)  # fmt: skip
@pytest.mark.parametrize("task", ["humaneval", "mbpp"])
def test_without_both_switches_nothing_is_generated(monkeypatch, tmp_path, task, allow, env, missing):
    def forbidden(*args, **kwargs):
        raise AssertionError("generation started without the opt-in")

    monkeypatch.setattr(code, "greedy_generate", forbidden)
    if env is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env)
    with pytest.raises(PermissionError) as error:
        CodeFamily().evaluate(None, None, examples(task), task_cfg(task, allow=allow), settings(tmp_path))
    message = str(error.value)
    assert "task.eval.allow_code_execution=true" in message and "ASTRA_ALLOW_CODE_EXECUTION=1" in message
    assert all(name in message.split("missing:")[1] for name in missing)
    assert not (tmp_path / "eval").exists()


def test_yaml_default_is_no_execution():
    for task in ("humaneval", "mbpp"):
        cfg = OmegaConf.load(CONF_DIR / "task" / f"{task}.yaml")
        assert cfg.eval.allow_code_execution is False and cfg.eval.primary_metric == "pass@1"


# ------------------------------------------------------------------------------------------- pass@1 (runs)
@pytest.fixture
def opted_in(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")


def test_humaneval_canonical_passes_and_wrong_fails(monkeypatch, tmp_path, opted_in):
    rows = sample_rows("humaneval")[:3]
    cfg = task_cfg("humaneval", allow=True)
    # one rewritten whole function in a fence (with prose and example usage), two bare body continuations
    right = [f" ```python\n{rows[0]['prompt']}{rows[0]['canonical_solution']}\n\nprint(1)\n```\nExplained.",
             rows[1]["canonical_solution"] + "\n\ndef unrelated():\n    pass\n", rows[2]["canonical_solution"]]  # fmt: skip
    calls = patch_generation(monkeypatch, right)
    result = CodeFamily().evaluate(None, None, examples("humaneval"), cfg, settings(tmp_path))
    assert result["metrics"]["pass@1"] == 1.0 and result["metrics"]["n_eval"] == 3.0
    assert result["metrics"]["isolated"] in (0.0, 1.0)
    assert len(calls) == 1 and calls[0][0].endswith("### Response:")
    written = records(tmp_path)
    assert [r["task_id"] for r in written] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(r["status"] == "passed" and r["correct"] and r["detail"] == "" for r in written)
    assert written[0]["generation"] == right[0] and "print(1)" not in written[0]["completion"]
    assert {r["isolation"] for r in written} <= {"bwrap", "unshare-pid-net", "none"}
    assert result["metrics"]["isolated"] == float(all(r["isolation"] != "none" for r in written))

    patch_generation(monkeypatch, ["    return None\n", "    return []\n", "    raise ValueError\n"])
    result = CodeFamily().evaluate(None, None, examples("humaneval"), cfg, settings(tmp_path))
    assert result["metrics"]["pass@1"] == 0.0
    written = records(tmp_path)
    assert all(r["status"] == "failed" and not r["correct"] for r in written)
    assert "AssertionError" in written[0]["detail"] and "ValueError" in written[2]["detail"]


def test_mbpp_canonical_passes_and_wrong_fails(monkeypatch, tmp_path, opted_in):
    rows = sample_rows("mbpp")[:3]
    cfg = task_cfg("mbpp", allow=True)
    patch_generation(monkeypatch, [f" ```python\n{row['code']}\n```" for row in rows])
    result = CodeFamily().evaluate(None, None, examples("mbpp"), cfg, settings(tmp_path))
    assert result["metrics"]["pass@1"] == 1.0 and result["metrics"]["n_eval"] == 3.0
    assert [r["task_id"] for r in records(tmp_path)] == [11, 12, 13]

    half_right = [rows[0]["code"], "def sort_matrix(M):\n    return M", "while True:\n    pass"]
    patch_generation(monkeypatch, half_right)
    result = CodeFamily().evaluate(None, None, examples("mbpp"), task_cfg("mbpp", allow=True, timeout_s=2),
                                   settings(tmp_path))  # fmt: skip
    assert result["metrics"]["pass@1"] == pytest.approx(1 / 3)
    assert [r["status"] for r in records(tmp_path)] == ["passed", "failed", "timeout"]


def test_eval_limit_scores_the_first_problems(monkeypatch, tmp_path, opted_in):
    rows = sample_rows("humaneval")[:2]
    patch_generation(monkeypatch, [row["canonical_solution"] for row in rows])
    result = CodeFamily().evaluate(None, None, examples("humaneval", n=20), task_cfg("humaneval", allow=True),
                                   settings(tmp_path, limit=2))  # fmt: skip
    assert result["metrics"] == {"pass@1": 1.0, "n_eval": 2.0, "isolated": result["metrics"]["isolated"]}


# ------------------------------------------------------------------------------------------ EvalPlus plus
PLUS_ADD = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "entry_point": "add",
            "canonical_solution": "    return a + b\n", "base_input": [[1, 2]], "plus_input": [[-1, 1], [0.1, 0.2]],
            "atol": 0, "test": "def check(f):\n    assert f(1, 2) == 3\n"}  # fmt: skip


def test_humaneval_plus_file_adds_pass_at_1_plus(monkeypatch, tmp_path, opted_in):
    plus_file = tmp_path / "HumanEvalPlus.jsonl.gz"
    plus_file.write_bytes(gzip.compress((json.dumps(PLUS_ADD) + "\n").encode()))
    cfg = task_cfg("humaneval", allow=True, plus_file=str(plus_file))
    example = CodeFamily().format_row(PLUS_ADD, "test", cfg)
    # right on the base test, wrong on a plus input (negative numbers), right on both
    for completion, base, plus in [("    return abs(a) + b\n", True, False), ("    return b + a\n", True, True)]:
        patch_generation(monkeypatch, [completion])
        result = CodeFamily().evaluate(None, None, [example], cfg, settings(tmp_path))
        assert result["metrics"]["pass@1"] == float(base) and result["metrics"]["pass@1_plus"] == float(plus)
        record = records(tmp_path)[0]
        assert record["plus_status"] == ("passed" if plus else "failed") and record["correct_plus"] is plus
        if not plus:
            assert "EvalPlus input #1 [-1, 1]: expected 0, got 2" in record["plus_detail"]


def test_plus_float_tolerance_and_special_oracle(opted_in):
    from astra.tasks.code_execution import ExecutionPolicy, run_program

    policy = ExecutionPolicy(allowed=True, timeout_s=20)
    float_task = {**PLUS_ADD, "plus_input": [[0.1, 0.2]]}
    rounding = code.plus_program(float_task, "    return round(a + b, 9)\n", "humaneval")  # within 1e-6
    assert run_program(rounding, policy).passed
    assert not run_program(code.plus_program(float_task, "    return round(a + b, 3) + 0.01\n", "humaneval"), policy).passed
    set_task = {"task_id": "Mbpp/2", "prompt": "'''\nShared.\n'''", "entry_point": "similar_elements", "atol": 0,
                "canonical_solution": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
                "base_input": [[[3, 4, 5], [5, 4, 9]]], "plus_input": []}  # fmt: skip
    reversed_order = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
    assert run_program(code.plus_program(code.deserialized(set_task, "mbpp"), reversed_order, "mbpp"), policy).passed


@pytest.mark.skipif(not MBPP_PLUS.is_file(), reason="no MbppPlus.jsonl in /work/shared/data")
def test_mbpp_plus_format_on_the_real_file(monkeypatch, tmp_path, opted_in):
    cfg = task_cfg("mbpp", allow=True, plus_timeout_s=60)
    cfg.format, cfg.source, cfg.data.test = "mbpp_plus", "files", str(MBPP_PLUS)
    loaded = load_split(cfg, "test", reader=CodeFamily().read_file)
    assert len(loaded) == 399
    family = CodeFamily()
    chosen = [family.format_row(row, "test", cfg) for row in loaded.rows[:3]]  # Mbpp/2, 3, 4
    assert "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)" in chosen[0].prompt
    canonical = [row["canonical_solution"] for row in loaded.rows[:3]]
    patch_generation(monkeypatch, canonical)
    result = family.evaluate(None, None, chosen, cfg, settings(tmp_path))
    assert result["metrics"]["pass@1"] == 1.0 and result["metrics"]["pass@1_plus"] == 1.0
    assert result["metrics"]["n_plus"] == 3.0
    patch_generation(monkeypatch, [c.replace("return", "return None and", 1) for c in canonical])
    assert family.evaluate(None, None, chosen, cfg, settings(tmp_path))["metrics"]["pass@1_plus"] == 0.0


@pytest.mark.skipif(not MBPP_PLUS.is_file(), reason="no MbppPlus.jsonl in /work/shared/data")
def test_mbpp_plus_file_after_the_original_prompt(monkeypatch, tmp_path, opted_in):
    rows = sample_rows("mbpp")
    chosen = [CodeFamily().format_row(row, "test", task_cfg("mbpp")) for row in (rows[0], rows[2])]  # 11 (in MBPP+), 13 (not)
    patch_generation(monkeypatch, [rows[0]["code"], rows[2]["code"]])
    cfg = task_cfg("mbpp", allow=True, plus_file=str(MBPP_PLUS))
    result = CodeFamily().evaluate(None, None, chosen, cfg, settings(tmp_path))
    assert result["metrics"]["pass@1"] == 1.0 and result["metrics"]["n_plus"] == 1.0
    assert result["metrics"]["pass@1_plus"] == 1.0
    assert "plus_status" in records(tmp_path)[0] and "plus_status" not in records(tmp_path)[1]


# ------------------------------------------------------------------------------------------------ loaders
@pytest.mark.skipif(not HUMANEVAL_GZ.is_file(), reason="no HumanEval.jsonl.gz in /work/shared/data")
def test_reads_the_real_humaneval_gz():
    cfg = task_cfg("humaneval")
    cfg.source, cfg.data.test = "files", str(HUMANEVAL_GZ)
    loaded = load_split(cfg, "test", reader=CodeFamily().read_file)
    assert len(loaded) == 164 and loaded.locations[163] == f"file {HUMANEVAL_GZ} line 164"
    formatted = [CodeFamily().format_row(row, "test", cfg) for row in loaded.rows]
    assert formatted[163].reference["task_id"] == "HumanEval/163"
    assert loaded.rows[:20] == sample_rows("humaneval")  # the shipped sample is the first 20, unchanged


@pytest.mark.skipif(not MBPP_JSONL.is_file(), reason="no mbpp.jsonl in /work/shared/data")
def test_reads_the_real_mbpp_and_the_training_sample_is_its_training_split():
    cfg = task_cfg("mbpp")
    cfg.source, cfg.data.test = "files", str(MBPP_JSONL)
    loaded = load_split(cfg, "test", reader=CodeFamily().read_file)
    assert len(loaded) == 974
    formatted = [CodeFamily().format_row(row, "test", cfg) for row in loaded.rows]
    assert sum(e.reference["entry_point"] is None for e in formatted) == 0
    by_id = {row["task_id"]: row for row in loaded.rows}
    assert sample_rows("mbpp") == [by_id[task_id] for task_id in range(11, 31)]
    rebuilt = [{"instruction": code.mbpp_instruction(by_id[i]), "output": code._fenced(by_id[i]["code"]),
                "source": f"mbpp task {i}"} for i in range(601, 975)]  # fmt: skip
    assert sample_rows("codefeedback", "train") == rebuilt  # the recipe in codefeedback/SOURCES.md


def test_training_sample_does_not_overlap_the_test_ranges():
    task_ids = [int(row["source"].removeprefix("mbpp task ")) for row in sample_rows("codefeedback", "train")]
    assert len(task_ids) == 374 and min(task_ids) == 601 and max(task_ids) == 974
    entry_points = {e.reference["entry_point"] for e in examples("mbpp", n=20)}
    assert not any(f"def {name}(" in row["output"] for row in sample_rows("codefeedback", "train") for name in entry_points)


def test_malformed_gz_names_the_file_and_the_line(tmp_path):
    good = json.dumps(sample_rows("humaneval")[0])
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress(f"{good}\n{{\"task_id\": \"HumanEval/1\", \n".encode()))
    cfg = task_cfg("humaneval")
    cfg.source, cfg.data.test = "files", str(path)
    with pytest.raises(ValueError, match=re.escape(f"{path} line 2: malformed JSON row")):
        load_split(cfg, "test", reader=CodeFamily().read_file)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable gzip file")):
        load_split(cfg, "test", reader=CodeFamily().read_file)


def test_a_row_missing_a_field_names_the_file_and_the_line(tmp_path):
    from astra.data.datamodule import TaskDataModule
    from astra.models.build import load_tiny_tokenizer

    rows = sample_rows("mbpp")[:3]
    del rows[2]["test_list"]
    path = tmp_path / "mbpp_test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = task_cfg("mbpp")
    cfg.source, cfg.data.test, cfg.train_limit = "files", str(path), 4
    cfg.data.train = str(next((SAMPLES_DIR / "codefeedback").glob("train.jsonl")))
    datamodule = TaskDataModule(cfg, get_family(cfg.family), load_tiny_tokenizer(), batch_size=2, seed=0)
    with pytest.raises(ValueError, match=re.escape(f"test file {path} line 3: MBPP row lacks field 'test_list'")):
        datamodule.setup()


# ------------------------------------------------------------------------------------------------ samples
@pytest.mark.parametrize("folder", ["humaneval", "mbpp", "codefeedback"])
def test_shipped_samples_match_their_sources_md(folder):
    sources = (SAMPLES_DIR / folder / "SOURCES.md").read_text()
    assert "Licence" in sources
    for data in sorted((SAMPLES_DIR / folder).glob("*.jsonl")):
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
        listed = re.search(rf"\| {re.escape(data.name)} \| (\d+) \| ([0-9a-f]{{64}}) \|", sources)
        assert listed, f"{data.name} is not listed in {folder}/SOURCES.md"
        assert listed.group(2) == digest and int(listed.group(1)) == len(read_rows(data))
