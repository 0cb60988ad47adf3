"""Evaluation cost: the framework's scoring paths against bare PyTorch doing the same computation.

    python experiments/bench/eval_cost.py                       # SmolLM2-135M (model=smollm2_135m), CPU or GPU
    python experiments/bench/eval_cost.py --model tiny_llama --items 40 --rounds 3

1. Multiple-choice log-likelihoods: ``astra.tasks.lm_eval_runner.score_multiple_choice`` (lm-eval's HFLM and
   evaluator, in process) against a bare batched forward that computes the same summed continuation
   log-probabilities (tokenised as HFLM does); items/s of each, and the largest difference of the two
   log-likelihoods (they must agree: otherwise the comparison is not of the same work).
2. Generation: ``astra.tasks.generation.greedy_generate`` against bare ``model.generate`` on the same left-padded
   batches, same batch size and ``max_new_tokens``; generated tokens/s of each.

Both pairs are interleaved in rounds in one process; the table gives min / median / max of the per-round
ratios (framework time / bare time). Target: both medians at most 1.2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, environment, print_table, synchronize, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def load(model_name: str, device: torch.device):
    from hydra import compose, initialize_config_dir

    from astra.models.build import build_model, build_tokenizer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model_name}"])
    tokenizer = build_tokenizer(cfg.model)
    return build_model(cfg.model, cfg.seed, tokenizer).to(device).eval(), tokenizer


def piqa_items(n: int) -> list[dict]:
    from astra.data.sources import SAMPLES_DIR, read_rows
    from astra.tasks.commonsense_data import parse_llm_adapters_row

    rows = read_rows(SAMPLES_DIR / "piqa" / "test.json")
    items = [parse_llm_adapters_row("piqa", row, "sample", i + 1) for i, row in enumerate(rows)]
    # Beyond the 40 shipped items, repeats get a distinct prefix: lm-eval scores identical requests once, which
    # would halve its work against the bare loop's and make the comparison meaningless.
    out = []
    for i in range(n):
        item = dict(items[i % len(items)], id=f"piqa-{i}")
        if i >= len(items):
            item["query"] = f"({i // len(items)}) {item['query']}"
        out.append(item)
    return out


@torch.no_grad()
def bare_loglikelihoods(model, tokenizer, items: list[dict], batch_size: int, device) -> list[list[float]]:
    """Summed log p(" " + choice | query) per choice, as a careful hand-written loop would compute it: HFLM's
    tokenisation (the pair encoded whole, cut after the query's own tokens), requests sorted by length so batches
    carry little padding, right padding without an attention mask (causal: a real token never sees a pad), and
    log-softmax only at the continuation positions."""
    requests = [(item["query"], " " + choice) for item in items for choice in item["choices"]]
    encoded = [(tokenizer.encode(ctx + cont), len(tokenizer.encode(ctx))) for ctx, cont in requests]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    scores = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(encoded[chunk[0]][0])
        batch = torch.full((len(chunk), width), pad, dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = encoded[index][0]
            batch[row, : len(ids)] = torch.tensor(ids)
        logits = model(input_ids=batch.to(device)).logits
        for row, index in enumerate(chunk):
            ids, n_context = encoded[index]
            targets = torch.tensor(ids[n_context:], device=device)
            picked = logits[row, n_context - 1 : len(ids) - 1].float().log_softmax(-1)
            scores[index] = float(picked.gather(1, targets[:, None]).sum())
    out, cursor = [], 0
    for item in items:
        out.append(scores[cursor : cursor + len(item["choices"])])
        cursor += len(item["choices"])
    return out


@torch.no_grad()
def bare_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device) -> int:
    """Plain model.generate on left-padded batches (as greedy_generate pads); returns the new tokens made."""
    tokenizer.padding_side = "left"
    made = 0
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        made += int((output[:, encoded["input_ids"].shape[1] :] != tokenizer.pad_token_id).sum())
    return made


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--items", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "eval_cost.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    from astra.tasks.generation import greedy_generate
    from astra.tasks.lm_eval_runner import score_multiple_choice

    model, tokenizer = load(args.model, device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    items = piqa_items(args.items)
    prompts = [f"Question: {item['query']}\nGive a short answer." for item in items[: args.prompts]]
    work = Path(tempfile.mkdtemp(prefix="eval-cost-"))
    score_multiple_choice(model, tokenizer, "piqa", items[:4], work, batch_size=args.batch_size)  # warm-up
    rows, ratios = [], {"mc": [], "gen": []}
    for round_index in range(args.rounds):
        t_fw, scored = timed(lambda: score_multiple_choice(model, tokenizer, "piqa", items, work, batch_size=args.batch_size), device)
        t_bare, bare = timed(lambda: bare_loglikelihoods(model, tokenizer, items, args.batch_size, device), device)
        gap = max(abs(a - b) for rec, ref in zip(scored["records"], bare) for a, b in zip(rec["loglikelihoods"], ref))
        g_fw, texts = timed(lambda: greedy_generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, device, backend="hf", work_dir=work), device)
        g_bare, made = timed(lambda: bare_generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, device), device)
        made_fw = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
        ratios["mc"].append(t_fw / t_bare)
        ratios["gen"].append(g_fw / g_bare)
        rows.append({"round": round_index, "mc_items_per_s": len(items) / t_fw, "mc_bare_items_per_s": len(items) / t_bare,
                     "mc_ratio": t_fw / t_bare, "max_loglik_gap": gap, "gen_tokens_per_s": made_fw / g_fw,
                     "gen_bare_tokens_per_s": made / g_bare, "gen_ratio": g_fw / g_bare})  # fmt: skip
    print_table(rows, list(rows[0]))
    summary = {key: {"min": min(v), "median": statistics.median(v), "max": max(v)} for key, v in ratios.items()}
    print(f"\nmultiple choice (framework / bare time): {summary['mc']}\ngeneration (framework / bare time): {summary['gen']}")
    path = write_json({"benchmark": "eval_cost", "model": args.model, "args": {k: str(v) for k, v in vars(args).items()},
                       "environment": environment(device), "rounds": rows, "ratios": summary}, args.out)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
