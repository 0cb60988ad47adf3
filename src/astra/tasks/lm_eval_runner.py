"""Score multiple-choice items with lm-eval's zero-shot log-likelihood protocol on an in-memory model.

``score_multiple_choice(model, tokenizer, benchmark, items, work_dir)`` writes the items (see
``commonsense_data``) as JSONL into ``work_dir``, builds lm-eval's task config for the benchmark from its row in
``commonsense_benchmarks`` (``lm_eval_config``: no task YAML restates the table) pointed at that file, wraps the
given model object (a ``PreTrainedModel`` or a ``PeftModel``, left on its device) and tokenizer in lm-eval's
``HFLM`` and runs lm-eval's evaluator in process. Offline and cheap to call repeatedly:

- ``TaskManager(include_defaults=False)`` indexes nothing (the defaults would index ~14,700 tasks, ~23 s); the
  task is built from the config dict plus ``dataset_kwargs`` naming the JSONL and a datasets cache inside
  ``work_dir`` (never the home folder). The ``json`` builder of ``datasets`` reads local files and makes no
  network call. For the lm_eval CLI, dump ``lm_eval_config`` (with ``dataset_kwargs``) to a YAML.
- The JSONL is named by a hash of its content: a re-used name always holds the same items, so the Arrow cache of
  an earlier call is reused safely (the same test set scored at every checkpoint is converted once).
- ``lm_eval.evaluator.evaluate`` is called directly, with ``bootstrap_iters=0`` and ``log_samples=True``.
  ``simple_evaluate`` would run the same ``evaluate`` but adds, per call, torch's ``collect_env`` (subprocesses,
  measured 0.35-0.6 s here, more than scoring 8 items), ``git describe`` and a reseeding of the caller's global
  Python/NumPy/torch RNGs, which must not happen in the middle of training.

The model is put in eval mode and its previous mode restored; a pad token lm-eval adds to a tokenizer without
one is removed again. ``acc_norm`` is lm-eval's (log-likelihood / number of characters of the choice); it is
``None`` for WinoGrande, whose partial-scoring form has no meaningful length normalisation (lm-eval reports acc).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from astra.tasks.commonsense_benchmarks import CommonsenseBenchmark, benchmark, lm_eval_config

TASK_PREFIX = "astra_"

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hflm_session(model: Any, tokenizer: Any, **hflm_kwargs: Any):
    """lm-eval's HFLM around the in-memory model, in eval mode; on exit the model's mode comes back and a pad
    token that lm-eval added to a tokenizer without one is removed again."""
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    had_pad_token = getattr(tokenizer, "pad_token", None) is not None
    model.eval()
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    level = hf_logger.level
    try:
        hf_logger.setLevel(logging.ERROR)  # its warnings about a model object passed as `pretrained` are expected
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, **hflm_kwargs)
        finally:
            hf_logger.setLevel(level)
        yield lm
    finally:
        model.train(was_training)
        if not had_pad_token and getattr(tokenizer, "pad_token", None) is not None:
            tokenizer.pad_token = None


def lm_eval_task_name(task_name: str) -> str:
    """``piqa`` or ``astra_piqa`` -> ``astra_piqa`` (the lm-eval task's name)."""
    return task_name if task_name.startswith(TASK_PREFIX) else TASK_PREFIX + task_name


def check_items(items: list[dict[str, Any]], task: str, partial: bool = False) -> None:
    """Items lm-eval can score; ``partial``: WinoGrande's form, which needs the ``continuation`` after the blank."""
    if not items:
        raise ValueError(f"{task}: no items to score")
    for position, item in enumerate(items, 1):
        choices, gold = item.get("choices"), item.get("gold")
        where = f"{task}: item {position} (id {item.get('id')!r})"
        if not isinstance(item.get("query"), str) or not isinstance(item.get("id"), str):
            raise ValueError(f"{where}: needs string 'id' and 'query'")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least 2 strings, got {choices!r:.200}")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise ValueError(f"{where}: gold {gold!r} is not an index into its {len(choices)} choices")
        if partial and not isinstance(item.get("continuation"), str):
            raise ValueError(f"{where}: WinoGrande items need the 'continuation' after the blank")


def write_items_jsonl(items: list[dict[str, Any]], work_dir: str | Path, task: str) -> Path:
    """``items`` as JSONL in ``work_dir``, named ``<task>-<content hash>.jsonl``; returns its path."""
    text = "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
    path = Path(work_dir) / f"{task}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")  # concurrent writers never share a temp file
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def score_multiple_choice(
    model: Any,
    tokenizer: Any,
    task_name: str | CommonsenseBenchmark,
    items: Iterable[dict[str, Any]],
    work_dir: str | Path,
    batch_size: int = 8,
    max_length: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Zero-shot multiple-choice scores of ``model`` on ``items`` (the first ``limit`` of them).

    Returns ``{"metrics": {"acc", "acc_norm", "n_eval"}, "records": [{"id", "gold", "loglikelihoods",
    "predicted", "correct"}, ...]}``; ``loglikelihoods[k]`` is lm-eval's summed log-probability of choice k's
    continuation (``" " + choice``; for WinoGrande ``" " + continuation`` after ``query + choice``).
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (not 'auto': it probes for seconds), got {batch_size!r}")
    try:
        spec = benchmark(task_name if isinstance(task_name, CommonsenseBenchmark) else task_name.removeprefix(TASK_PREFIX))
    except ValueError as error:
        raise ValueError(f"no lm-eval task {lm_eval_task_name(str(task_name))!r}: {error}") from None
    task = lm_eval_task_name(spec.name)
    items = list(items)[:limit] if limit is not None else list(items)
    check_items(items, task, partial=spec.layout == "option")
    task_manager = TaskManager(include_defaults=False)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_file = write_items_jsonl(items, work_dir, task)
    config = lm_eval_config(spec, task)
    config["dataset_kwargs"] = {
        "data_files": {"test": str(data_file.resolve())},
        "cache_dir": str((work_dir / "hf_datasets_cache").resolve()),
    }

    with hflm_session(model, tokenizer, batch_size=batch_size, max_length=max_length) as lm:
        results = evaluate(lm=lm, task_dict=task_manager.load([config]), bootstrap_iters=0, log_samples=True)

    scores = results["results"][task]
    records = []
    for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"]):
        doc = sample["doc"]
        lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        predicted = max(range(len(lls)), key=lls.__getitem__)  # first maximum, as np.argmax
        records.append(
            {
                "id": doc["id"],
                "gold": doc["gold"],
                "loglikelihoods": lls,
                "predicted": predicted,
                "correct": predicted == doc["gold"],
            }
        )
    metrics = {
        "acc": float(scores["acc,none"]),
        "acc_norm": float(scores["acc_norm,none"]) if "acc_norm,none" in scores else None,
        "n_eval": int(results["n-samples"][task]["effective"]),
    }
    log.info("%s: acc=%.4f acc_norm=%s on %d items", task, metrics["acc"], metrics["acc_norm"], metrics["n_eval"])
    return {"metrics": metrics, "records": records}
