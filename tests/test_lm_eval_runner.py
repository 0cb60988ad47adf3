"""lm-eval multiple-choice scoring of an in-memory model, checked against log-likelihoods computed by hand."""

from __future__ import annotations

import socket

import pytest
import torch

from astra.models.build import load_tiny_tokenizer, tiny_llama
from astra.tasks.commonsense_data import TASKS, parse_llm_adapters_row
from astra.tasks.lm_eval_runner import score_multiple_choice

CHOOSE = "Please choose the correct answer to the question: "


def row(instruction: str, answer: str) -> dict:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


ROWS = {
    "piqa": [
        row(
            f"Please choose the correct solution to the question: {goal}\n\nSolution1: {a}\n\nSolution2: {b}\n\n"
            "Answer format: solution1/solution2",
            "solution1",
        )
        for goal, a, b in [
            ("How do I dry wet shoes?", "Stuff them with newspaper.", "Put them in the freezer."),
            ("To open a jar", "twist the lid.", "shake the jar hard "),
            ("Keep bread fresh", "store it in a bag.", "leave it in the sun."),
            ("Cool a drink fast", "put it in ice water.", "warm it on the stove."),
        ]
    ],
    "winogrande": [
        row(
            "Please choose the correct answer to fill in the blank to complete the given sentence: "
            f"{sentence}\n\nOption1: {a} Option2: {b} Answer format: option1/option2",
            "option1",
        )
        for sentence, a, b in [
            ("The cup did not fit in the box because the _ was too big.", "cup", "box"),
            ("Sarah helped Maria because _ was kind.", "Sarah", "Maria"),
        ]
    ],
    "arc_e": [
        row(
            CHOOSE + "Which is a liquid?\n\nAnswer1: ice Answer2: water Answer3: steam\n\n"
            "Answer format: answer1/answer2/answer3",
            "answer2",
        ),
        row(
            CHOOSE + "What do plants need?\n\nAnswer1: light Answer2: noise Answer3: plastic Answer4: rock\n\n"
            "Answer format: answer1/answer2/answer3/answer4",
            "answer1",
        ),
    ],
}


def items_for(task: str) -> list[dict]:
    return [parse_llm_adapters_row(task, r, f"fixture item {i}", i) for i, r in enumerate(ROWS[task], 1)]


def requests(item: dict) -> list[tuple[str, str]]:
    """lm-eval's (context, continuation) pairs: target delimiter " "; WinoGrande puts the options in the context."""
    if "continuation" in item:
        return [(item["query"] + choice, " " + item["continuation"]) for choice in item["choices"]]
    return [(item["query"], " " + choice) for choice in item["choices"]]


@torch.no_grad()
def reference_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Summed log p(continuation | context) from one plain forward pass, tokenised as lm-eval's HFLM does:
    trailing whitespace of the context moves to the continuation, the pair is encoded whole and split after the
    context's own tokens."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    logprobs = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logprobs[n_context - 1 + i, token].item() for i, token in enumerate(whole[n_context:]))


def argmax(values) -> int:
    return max(range(len(values)), key=values.__getitem__)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def test_every_benchmark_has_a_derived_lm_eval_task():
    """lm-eval's task configs come from the benchmark table (no task file restates it); lm-eval scores each one in
    the tests below. Only WinoGrande's layout uses the partial (multiple-input) form, scored by acc alone."""
    from astra.tasks.commonsense_benchmarks import BENCHMARKS, lm_eval_config

    for task in TASKS:
        config = lm_eval_config(BENCHMARKS[task], f"astra_{task}")
        assert config["task"] == f"astra_{task}" and config["output_type"] == "multiple_choice"
        partial = task == "winogrande"
        assert (config["doc_to_text"] == "gold") == partial
        assert [m["metric"] for m in config["metric_list"]] == (["acc"] if partial else ["acc", "acc_norm"])


@pytest.mark.parametrize("task", sorted(ROWS))
def test_scores_match_hand_computed_loglikelihoods(tmp_path, tokenizer, task):
    model = tiny_llama(seed=0)
    items = items_for(task)
    expected = [[reference_loglikelihood(model, tokenizer, c, x) for c, x in requests(item)] for item in items]
    # Golds chosen so the hand-computed accuracy is neither 0 nor 1: first item right, the others wrong.
    for k, (item, lls) in enumerate(zip(items, expected, strict=True)):
        item["gold"] = argmax(lls) if k == 0 else (argmax(lls) + 1) % len(lls)
    acc = sum(argmax(lls) == item["gold"] for item, lls in zip(items, expected, strict=True)) / len(items)
    norm = [
        [ll / len(c) for ll, c in zip(lls, item["choices"], strict=True)]
        for item, lls in zip(items, expected, strict=True)
    ]
    acc_norm = sum(argmax(n) == item["gold"] for item, n in zip(items, norm, strict=True)) / len(items)

    result = score_multiple_choice(model, tokenizer, task, items, tmp_path / "work", batch_size=3)

    metrics, records = result["metrics"], result["records"]
    assert metrics["acc"] == pytest.approx(acc) and 0 < acc < 1
    assert metrics["n_eval"] == len(items)
    if task == "winogrande":
        assert metrics["acc_norm"] is None  # partial scoring: lm-eval reports acc only
    else:
        assert metrics["acc_norm"] == pytest.approx(acc_norm)
    assert [r["id"] for r in records] == [item["id"] for item in items]
    for record, item, lls in zip(records, items, expected, strict=True):
        assert record["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert record["gold"] == item["gold"]
        assert record["predicted"] == argmax(lls) and record["correct"] == (argmax(lls) == item["gold"])
    assert (tmp_path / "work" / "hf_datasets_cache").is_dir()  # the datasets cache stays in the work dir


def test_limit_and_offline(tmp_path, tokenizer, monkeypatch):
    def no_network(self, address):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = score_multiple_choice(tiny_llama(seed=1), tokenizer, "astra_piqa", items_for("piqa"), tmp_path, limit=2)
    assert result["metrics"]["n_eval"] == 2 and [r["id"] for r in result["records"]] == ["piqa-1", "piqa-2"]


def test_peft_model_is_scored_in_memory(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(seed=0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.train()
    tokenizer.pad_token = None  # lm-eval would add one; the runner removes it again
    items = items_for("piqa")
    try:
        before = score_multiple_choice(model, tokenizer, "piqa", items, tmp_path)
        assert tokenizer.pad_token is None
    finally:
        tokenizer.pad_token = "<pad>"
    assert model.training, "the model's train mode is restored"
    base = tiny_llama(seed=0)  # B = 0 at init: the adapted model equals the base model
    first = items[0]
    assert before["records"][0]["loglikelihoods"] == pytest.approx(
        [reference_loglikelihood(base, tokenizer, c, x) for c, x in requests(first)], abs=1e-4
    )

    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.eval()
    after = score_multiple_choice(model, tokenizer, "piqa", items, tmp_path)
    assert not model.training
    changed = [
        abs(a - b)
        for r0, r1 in zip(before["records"], after["records"], strict=True)
        for a, b in zip(r0["loglikelihoods"], r1["loglikelihoods"], strict=True)
    ]
    assert max(changed) > 1e-2, "perturbing LoRA B must change the scores"
    assert after["records"][0]["loglikelihoods"] == pytest.approx(
        [reference_loglikelihood(model, tokenizer, c, x) for c, x in requests(first)], abs=1e-4
    )


def test_bad_arguments(tmp_path, tokenizer):
    model = tiny_llama(seed=0)
    items = items_for("piqa")
    with pytest.raises(ValueError, match="no lm-eval task 'astra_mmlu'"):
        score_multiple_choice(model, tokenizer, "mmlu", items, tmp_path)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        score_multiple_choice(model, tokenizer, "piqa", items, tmp_path, batch_size="auto")
    with pytest.raises(ValueError, match=r"item 1 \(id 'piqa-1'\): gold 5 is not an index"):
        score_multiple_choice(model, tokenizer, "piqa", [{**items[0], "gold": 5}], tmp_path)
    with pytest.raises(ValueError, match="no items"):
        score_multiple_choice(model, tokenizer, "piqa", [], tmp_path)
