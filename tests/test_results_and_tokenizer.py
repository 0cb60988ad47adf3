"""Result files are atomic and never overwrite; the tiny tokenizer file is reproducible."""

from __future__ import annotations

import json

import pytest

from astra.run.results import REQUIRED_KEYS, write_result


def _result(**changes):
    result = {key: None for key in REQUIRED_KEYS}
    result.update(method="lora", task="gsm8k", model="tiny_llama", seed=1, experiment="grid/a b", status="ok")
    result.update(changes)
    return result


def test_results_never_overwrite(tmp_path):
    first = write_result(_result(metrics={"accuracy": 0.1}), tmp_path / "run", tmp_path / "results")
    second = write_result(_result(metrics={"accuracy": 0.2}), tmp_path / "run", tmp_path / "results")
    assert len({*first, *second}) == 4
    assert json.loads(first[1].read_text())["metrics"]["accuracy"] == 0.1
    assert json.loads(second[1].read_text())["metrics"]["accuracy"] == 0.2
    assert first[1].parent.name == "grid-a-b"  # experiment name made path-safe
    assert not [p for p in (tmp_path / "results").rglob(".tmp-*")]


def test_result_with_missing_keys_is_refused(tmp_path):
    with pytest.raises(KeyError, match="metrics"):
        write_result({k: None for k in REQUIRED_KEYS if k != "metrics"}, tmp_path, tmp_path)


def test_tiny_tokenizer_file_is_reproducible(tmp_path):
    from astra.models.build import TINY_TOKENIZER_FILE
    from astra.run.build_tokenizer import build_tokenizer

    rebuilt = tmp_path / "tokenizer.json"
    build_tokenizer().save(str(rebuilt))
    assert rebuilt.read_bytes() == TINY_TOKENIZER_FILE.read_bytes()
