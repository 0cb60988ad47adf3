"""Data: formatting, prompt-masked labels, padding-aware batches, calibration loader, bad input errors."""

from __future__ import annotations

import json

import pytest
import torch

from astra.data.batches import IGNORE_INDEX, collate, tokenize_example
from astra.data.datamodule import TaskDataModule
from astra.data.sources import read_rows
from astra.models.build import load_tiny_tokenizer
from astra.tasks.base import get_family
from astra.tasks.math import gsm8k_example

ROW = {"question": "Tom has 3 apples and buys 4,000 more. How many?", "answer": "3+4000=<<3+4000=4003>>4003\n#### 4,003"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def test_gsm8k_format():
    example = gsm8k_example(ROW)
    assert example.prompt.endswith("### Response:") and ROW["question"] in example.prompt
    assert "<<" not in example.answer and example.answer.endswith("The answer is: 4003")
    assert example.reference == "4003"


def test_labels_masked_on_prompt(tokenizer):
    example = gsm8k_example(ROW)
    feature = tokenize_example(example, tokenizer, max_length=512)
    prompt_len = 1 + len(tokenizer(example.prompt, add_special_tokens=False)["input_ids"])
    assert feature["input_ids"][0] == tokenizer.bos_token_id and feature["input_ids"][-1] == tokenizer.eos_token_id
    assert all(label == IGNORE_INDEX for label in feature["labels"][:prompt_len])
    assert feature["labels"][prompt_len:] == feature["input_ids"][prompt_len:]
    assert tokenizer.decode(feature["input_ids"][prompt_len:-1]) == example.answer
    assert len(tokenize_example(example, tokenizer, max_length=20)["input_ids"]) == 20


def test_collate_pads_and_masks():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert collate([{"input_ids": [1], "labels": [1]}], pad_token_id=0, pad_to=4)["input_ids"].shape == (1, 4)


def test_malformed_jsonl_row_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROW) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: malformed JSON"):
        read_rows(path)


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        read_rows(tmp_path / "nowhere.jsonl")


def _datamodule(compose_cfg, tokenizer, overrides=()):
    cfg = compose_cfg(list(overrides))
    return TaskDataModule(cfg.task, get_family(cfg.task.family), tokenizer, batch_size=4, seed=cfg.seed, val_size=cfg.trainer.val_size)


def test_row_without_fields_names_the_row(compose_cfg, tokenizer, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(ROW) + "\n" + json.dumps({"question": "no answer"}) + "\n")
    datamodule = _datamodule(compose_cfg, tokenizer, ["task.source=files", f"task.data.train={bad}", f"task.data.test={bad}"])
    with pytest.raises(ValueError, match=r"train file .*train\.jsonl line 2: .*'answer'"):
        datamodule.setup()


def test_files_source_and_validation_split(compose_cfg, tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(ROW) + "\n" for _ in range(10)))
    datamodule = _datamodule(compose_cfg, tokenizer, ["task.source=files", f"task.data.train={path}", f"task.data.test={path}", "trainer.val_size=3"])
    datamodule.setup()
    assert len(datamodule.train_set) == 7 and len(datamodule.val_set) == 3 and len(datamodule.test_examples) == 10
    assert sorted(datamodule.train_set.ids + datamodule.val_set.ids) == list(range(10))


def test_hub_source_fails_fast_offline(compose_cfg, tokenizer):
    datamodule = _datamodule(compose_cfg, tokenizer, ["task.source=hub"])
    with pytest.raises(RuntimeError, match="task.source=files"):
        datamodule.setup()


def test_calibration_loader_exact_size_padded_and_seeded(compose_cfg, tokenizer):
    datamodule = _datamodule(compose_cfg, tokenizer)
    datamodule.setup()
    loader = datamodule.calibration_dataloader(n_samples=10, batch_size=4)
    batches = list(loader)
    assert sum(b["input_ids"].shape[0] for b in batches) == 10
    assert all(b["input_ids"].shape[1] == datamodule.max_length for b in batches)
    assert len(set(loader.dataset.ids)) == 10
    assert loader.dataset.ids == datamodule.calibration_dataloader(n_samples=10, batch_size=2).dataset.ids
    with pytest.raises(ValueError, match="n_samples=100000"):
        datamodule.calibration_dataloader(n_samples=100000, batch_size=4)


def test_train_loader_batches(compose_cfg, tokenizer):
    datamodule = _datamodule(compose_cfg, tokenizer)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].dtype == torch.long
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_row_ids_select_a_published_split_of_one_file(compose_cfg, tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"question": f"What is {i} plus 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(10)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ids = tmp_path / "split.json"
    ids.write_text(json.dumps({"train": [0, 2, 4, 6, 8], "validation": [1, 3], "test": [9, 5]}))
    files = ["task.source=files", f"task.data.train={path}", f"task.data.test={path}", f"+task.row_ids.file={ids}"]
    datamodule = _datamodule(compose_cfg, tokenizer, [*files, "+task.row_ids.train=train", "+task.row_ids.test=test"])
    datamodule.setup()
    assert [row["question"] for row in datamodule.train_rows] == [rows[i]["question"] for i in (0, 2, 4, 6, 8)]
    assert [example.reference for example in datamodule.test_examples] == ["10", "6"]  # in the listed order
    bad = _datamodule(compose_cfg, tokenizer, [*files, "+task.row_ids.train=nope"])
    with pytest.raises(ValueError, match=r"task.row_ids.train='nope' is not a key of .*split.json; its keys: \['test', 'train', 'validation'\]"):
        bad.setup()
    ids.write_text(json.dumps({"train": [0, 10]}))
    out_of_range = _datamodule(compose_cfg, tokenizer, [*files, "+task.row_ids.train=train"])
    with pytest.raises(ValueError, match=r"ids \[10\] are not row positions of file .*rows.jsonl \(0..9\)"):
        out_of_range.setup()


def test_a_list_of_training_files_is_their_rows_in_order(compose_cfg, tokenizer, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.json"
    first.write_text(json.dumps(ROW) + "\n")
    second.write_text(json.dumps([{**ROW, "question": "Second file?"}, {**ROW, "question": "Third row?"}]))
    datamodule = _datamodule(compose_cfg, tokenizer, ["task.source=files", f"task.data.train=[{first},{second}]",
                                                      f"task.data.test={first}"])  # fmt: skip
    datamodule.setup()
    assert [row["question"] for row in datamodule.train_rows] == [ROW["question"], "Second file?", "Third row?"]
