"""Cache faults: the calibration cache is keyed by content (calibration batches, model files or recipe), so a run
on a different training file, other labels, another batch size or changed weights never reuses stale statistics,
while an identical run does reuse them."""

from __future__ import annotations

import json
import shutil
import time
from functools import partial

import torch
from conftest import compose_config
from torch.utils.data import DataLoader

from astra.calibration.identity import (
    calibration_cache_identity,
    calibration_data_digest,
    checkpoint_fingerprint,
    model_fingerprint,
)
from astra.data.batches import IGNORE_INDEX, collate

PAD = 0


def _features(n_rows: int = 6) -> list[dict]:
    rows = []
    for row in range(n_rows):
        ids = [1 + (7 * row + j) % 50 for j in range(4 + row % 3)]
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX, IGNORE_INDEX, *ids[2:]]})
    return rows


def _loader(features: list[dict], batch_size: int = 2) -> DataLoader:
    """Like TaskDataModule.calibration_dataloader: no shuffle, every row padded to one length."""
    return DataLoader(
        features, batch_size=batch_size, shuffle=False, collate_fn=partial(collate, pad_token_id=PAD, pad_to=8)
    )


def _batches(features: list[dict], batch_size: int = 2) -> list[dict[str, torch.Tensor]]:
    """The loader's batches as a list (any iterable of batch mappings is a loader), to edit one tensor."""
    return [{key: value.clone() for key, value in batch.items()} for batch in _loader(features, batch_size)]


# --------------------------------------------------------------------------------------------- data digest


def test_data_digest_is_equal_for_equal_data():
    assert calibration_data_digest(_loader(_features())) == calibration_data_digest(_loader(_features()))
    assert calibration_data_digest(_loader(_features())) == calibration_data_digest(_batches(_features()))


def test_data_digest_changes_with_one_token():
    features = _features()
    features[3]["input_ids"][1] += 1
    assert calibration_data_digest(_loader(features)) != calibration_data_digest(_loader(_features()))


def test_data_digest_changes_with_attention_mask():
    batches = _batches(_features())
    batches[1]["attention_mask"][0, 0] = 0  # the same tokens, one position masked
    assert calibration_data_digest(batches) != calibration_data_digest(_batches(_features()))


def test_data_digest_changes_with_labels():
    batches = _batches(_features())
    batches[2]["labels"][1, 2] = IGNORE_INDEX  # LoRA-GA's loss reads the labels
    assert calibration_data_digest(batches) != calibration_data_digest(_batches(_features()))


def test_data_digest_changes_with_batch_size_over_the_same_rows():
    # LoRA-GA averages per-batch mean losses: the same rows in other batches give another gradient.
    assert calibration_data_digest(_loader(_features(), 2)) != calibration_data_digest(_loader(_features(), 3))


def test_data_digest_ignores_the_integer_dtype():
    narrow = [{key: value.to(torch.int32) for key, value in batch.items()} for batch in _batches(_features())]
    assert calibration_data_digest(narrow) == calibration_data_digest(_batches(_features()))


# --------------------------------------------------------------------------------------------- model fingerprint


def _fake_checkpoint(directory, weight_bytes: int = 3 << 20):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"hidden_size": 128, "model_type": "llama"}))
    generator = torch.Generator().manual_seed(0)
    payload = torch.randint(0, 256, (weight_bytes,), dtype=torch.uint8, generator=generator).numpy().tobytes()
    (directory / "model.safetensors").write_bytes(payload)
    (directory / "tokenizer.json").write_text("{}")  # not a weight file: tokens are in the data digest
    return directory


def _flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoint_fingerprint_is_equal_for_an_identical_copy(tmp_path):
    original = _fake_checkpoint(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    assert checkpoint_fingerprint(original) == checkpoint_fingerprint(copy)
    assert [entry["name"] for entry in checkpoint_fingerprint(original)["weights"]] == ["model.safetensors"]


def test_checkpoint_fingerprint_changes_with_one_byte_in_the_middle_of_a_weight_file(tmp_path):
    checkpoint = _fake_checkpoint(tmp_path / "a")
    before = checkpoint_fingerprint(checkpoint)
    _flip_byte(checkpoint / "model.safetensors", (3 << 20) // 2)
    assert checkpoint_fingerprint(checkpoint) != before


def test_checkpoint_fingerprint_changes_with_config_json(tmp_path):
    checkpoint = _fake_checkpoint(tmp_path / "a")
    before = checkpoint_fingerprint(checkpoint)
    _flip_byte(checkpoint / "config.json", 5)
    assert checkpoint_fingerprint(checkpoint) != before


def test_checkpoint_fingerprint_of_a_13_gb_file_is_fast(tmp_path):
    checkpoint = _fake_checkpoint(tmp_path / "a")
    with open(checkpoint / "model-00001-of-00002.safetensors", "wb") as handle:
        handle.truncate(13 << 30)  # sparse: nothing is written, so only the sampled reads cost time
    start = time.perf_counter()
    fingerprint = checkpoint_fingerprint(checkpoint)
    assert time.perf_counter() - start < 1.0
    sizes = {entry["name"]: entry["size"] for entry in fingerprint["weights"]}
    assert sizes["model-00001-of-00002.safetensors"] == 13 << 30


def test_model_fingerprint_of_a_checkpoint_holds_its_directory_and_files(tmp_path):
    checkpoint = _fake_checkpoint(tmp_path / "a")
    model_cfg = {"name": "x", "hub_id": "org/x", "path": None, "dtype": "bfloat16"}
    fingerprint = model_fingerprint(model_cfg, seed=1, directory=checkpoint)
    assert fingerprint["path"] == str(checkpoint.resolve())
    assert fingerprint == model_fingerprint(model_cfg, seed=2, directory=checkpoint)  # the seed changes no weight
    assert model_fingerprint({**model_cfg, "path": str(checkpoint)}, seed=1) == fingerprint
    assert model_fingerprint({**model_cfg, "dtype": "float32"}, seed=1, directory=checkpoint) != fingerprint
    json.dumps(fingerprint)


def test_model_fingerprint_from_config_changes_with_seed_and_architecture(tmp_path):
    model_cfg = compose_config(tmp_path).model
    assert model_cfg.hub_id is None
    base = model_fingerprint(model_cfg, seed=42)
    json.dumps(base)  # plain containers, not DictConfig
    assert base == model_fingerprint(model_cfg, seed=42)
    assert base != model_fingerprint(model_cfg, seed=43)
    wider = compose_config(tmp_path, ["model.architecture.intermediate_size=256"]).model
    assert base != model_fingerprint(wider, seed=42)
    assert model_fingerprint(compose_config(tmp_path, ["model.name=renamed"]).model, seed=42) == base


def test_cache_identity_is_decided_by_content_not_labels(tmp_path):
    model_cfg = compose_config(tmp_path).model
    labels = {"task": "gsm8k", "task_source": "files"}
    key = calibration_cache_identity(model_cfg, 42, _loader(_features()), model_cfg.target_modules, labels)
    json.dumps(key)
    changed = _features()
    changed[0]["input_ids"][0] += 1
    other = calibration_cache_identity(model_cfg, 42, _loader(changed), model_cfg.target_modules, labels)
    assert key != other and key["labels"] == other["labels"]
    assert key == calibration_cache_identity(model_cfg, 42, _loader(_features()), model_cfg.target_modules, labels)


# --------------------------------------------------------------------------------------------- end to end


def _gsm8k_rows(offset: int, n_rows: int) -> str:
    rows = []
    for i in range(offset, offset + n_rows):
        a, b = i + 2, 3 * i + 1
        question = f"Sam has {a} pens and buys {b} more. How many pens does Sam have?"
        rows.append(json.dumps({"question": question, "answer": f"{a}+{b}=<<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}))
    return "\n".join(rows) + "\n"


def test_second_train_file_does_not_reuse_the_first_files_statistics(tmp_path):
    from astra.run import runner

    files = {"A": (0, 24), "B": (100, 24), "T": (500, 4)}
    for name, (offset, n_rows) in files.items():
        (tmp_path / f"{name}.jsonl").write_text(_gsm8k_rows(offset, n_rows), encoding="utf-8")

    def cache_status(train: str, index: int) -> dict:
        run_root = tmp_path / f"run{index}"
        overrides = [
            "method=astra", "task.source=files", f"task.data.train={tmp_path / train}",
            f"task.data.test={tmp_path / 'T.jsonl'}", "method.calibration.n_samples=8",
            f"paths.cache_dir={tmp_path / 'cache'}", "trainer=debug", "logger=none", "callbacks=none",
            "trainer.eval_limit=2", "task.eval.max_new_tokens=4",
        ]  # fmt: skip
        runner.train(compose_config(run_root, overrides), overrides=[])
        result = json.loads((run_root / "run" / "result.json").read_text())
        assert result["status"] == "ok", result["error"]
        return {**result["init"], "losses": result["train_loss"]["per_step"]}

    first = cache_status("A.jsonl", 1)
    second = cache_status("B.jsonl", 2)
    third = cache_status("A.jsonl", 3)
    # A miss iterates the calibration loader (a DataLoader iterator draws from the global generator); training must
    # not depend on it: the run that read the cache trains exactly as the run that computed it.
    assert third["losses"] == first["losses"]
    assert first["cache"] == "miss"
    assert second["cache"] == "miss", "a different training file reused the first file's statistics"
    assert second["cache_file"] != first["cache_file"]
    assert third["cache"] == "hit" and third["cache_file"] == first["cache_file"]


def test_training_is_the_same_whether_init_read_the_cache_or_computed_it(tmp_path):
    """A cache miss iterates the calibration loader, and each DataLoader iterator draws its base seed from the global
    generator; training after a miss must still see the random state a hit sees (tiny BERT: dropout is live)."""
    from astra.run import runner

    def run(index: int) -> dict:
        overrides = ["model=tiny_bert", "task=qnli", "method=astra", "method.calibration.n_samples=8",
                     f"paths.cache_dir={tmp_path / 'cache'}", "trainer=debug", "logger=none", "callbacks=none",
                     "trainer.eval_limit=2"]  # fmt: skip
        runner.train(compose_config(tmp_path / f"run{index}", overrides), overrides=[])
        result = json.loads((tmp_path / f"run{index}" / "run" / "result.json").read_text())
        assert result["status"] == "ok", result["error"]
        return result

    miss, hit = run(1), run(2)
    assert (miss["init"]["cache"], hit["init"]["cache"]) == ("miss", "hit")
    assert len(miss["train_loss"]["per_step"]) > 1
    assert hit["train_loss"]["per_step"] == miss["train_loss"]["per_step"]
