"""Data faults: every error about a row names its file and 1-based line; empty splits, bytes that are not
UTF-8 and a model.path without config.json fail with a message saying what is wrong and what would do."""

from __future__ import annotations

import json

import pytest

from astra.data.datamodule import TaskDataModule
from astra.data.sources import read_rows, read_rows_with_lines
from astra.models.build import build_tokenizer, load_tiny_tokenizer
from astra.tasks.base import get_family

ROW = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"}
GOOD = json.dumps(ROW)
NO_ANSWER = json.dumps({"question": "no answer here"})
MISSING_ANSWER = "GSM8K row lacks field 'answer'; expected fields 'question' and 'answer'"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


@pytest.fixture
def setup_with(compose_cfg, tokenizer, tmp_path):
    """``setup_with(train=text, test=text)`` writes the files (bytes or str) and runs the data module's setup."""

    def setup(train, test=None, train_name="train.jsonl", test_name="test.jsonl", overrides=()):
        paths = {}
        for split, content, name in (("train", train, train_name), ("test", test, test_name)):
            paths[split] = tmp_path / name
            if isinstance(content, bytes):
                paths[split].write_bytes(content)
            else:
                paths[split].write_text(GOOD + "\n" if content is None else content, encoding="utf-8")
        files = ["task.source=files", f"task.data.train={paths['train']}", f"task.data.test={paths['test']}"]
        cfg = compose_cfg([*files, *overrides])
        datamodule = TaskDataModule(cfg.task, get_family(cfg.task.family), tokenizer, batch_size=2, seed=cfg.seed, val_size=cfg.trainer.val_size)
        datamodule.setup()
        return datamodule

    return setup


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------------- row locations


def test_missing_field_names_the_jsonl_line_not_the_row_index(setup_with, tmp_path):
    # line 3 is blank, so the bad row on line 5 is row index 3: the message must say line 5
    message = error_of(setup_with, f"{GOOD}\n{GOOD}\n\n{GOOD}\n{NO_ANSWER}\n{GOOD}\n")
    assert message == f"task gsm8k, train file {tmp_path / 'train.jsonl'} line 5: {MISSING_ANSWER}"


def test_missing_field_names_the_line_where_the_json_object_starts(setup_with, tmp_path):
    # lines 2-5: one object over four lines; 6: blank; 7: two objects, the second one bad
    text = "[\n" + json.dumps(ROW, indent=2) + ",\n\n" + f"{GOOD}, {NO_ANSWER}\n]\n"
    assert text.splitlines()[6] == f"{GOOD}, {NO_ANSWER}"
    message = error_of(setup_with, None, text, test_name="test.json")
    assert message == f"task gsm8k, test file {tmp_path / 'test.json'} line 7: {MISSING_ANSWER}"


def test_json_rows_carry_the_line_their_object_starts_on(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + json.dumps(ROW, indent=2) + ",\n\n" + f"{GOOD}, {GOOD}\n]\n", encoding="utf-8")
    assert [line for line, _ in read_rows_with_lines(path)] == [2, 7, 7]
    assert read_rows(path) == [ROW, ROW, ROW]


def test_jsonl_rows_carry_their_physical_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(f"\n{GOOD}\n  \n{GOOD}\r\n{GOOD}", encoding="utf-8")
    assert [line for line, _ in read_rows_with_lines(path)] == [2, 4, 5]


def test_wrong_typed_field_names_the_line_and_the_type_error(setup_with, tmp_path):
    message = error_of(setup_with, f"{GOOD}\n" + json.dumps({"question": "q", "answer": 7}) + "\n")
    assert message.startswith(f"task gsm8k, train file {tmp_path / 'train.jsonl'} line 2: TypeError")


# ------------------------------------------------------------------------------------------- malformed files


def test_malformed_jsonl_line_is_named(setup_with, tmp_path):
    message = error_of(setup_with, f"{GOOD}\n\n{GOOD}\n{{not json\n")
    assert message.startswith(f"{tmp_path / 'train.jsonl'} line 4: malformed JSON row")


def test_jsonl_line_that_is_not_an_object_is_named(setup_with, tmp_path):
    message = error_of(setup_with, f"{GOOD}\n[1, 2]\n")
    assert message == f"{tmp_path / 'train.jsonl'} line 2: expected a JSON object (one object per line), got list"


def test_json_syntax_error_names_its_line(setup_with, tmp_path):
    text = f"[\n  {GOOD},\n  {GOOD}\n  {GOOD}\n]\n"  # the comma after line 3 is missing
    message = error_of(setup_with, text, train_name="train.json")
    assert message.startswith(f"{tmp_path / 'train.json'} line 4: malformed JSON (Expecting ',' delimiter")


def test_json_file_that_is_not_an_array_says_what_is_expected(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('"just a string"', encoding="utf-8")
    assert error_of(read_rows, path).startswith(f"{path}: expected a JSON array of objects")


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path):
    """MATH's published test.json is JSON Lines: an object where an array would start says so."""
    path = tmp_path / "test.json"
    path.write_text(f"{GOOD}\n{GOOD}\n", encoding="utf-8")
    assert len(read_rows(path)) == 2


def test_json_array_element_that_is_not_an_object_names_its_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(f'[\n{GOOD},\n\n  "text"\n]', encoding="utf-8")
    assert error_of(read_rows, path) == f"{path} line 4: expected a JSON object (each array element), got str"


def test_non_utf8_byte_names_line_and_offsets(setup_with, tmp_path):
    # 'é' is two bytes, so byte and character positions differ on line 3
    lines = [GOOD.encode(), GOOD.encode(), b'{"question": "caf\xc3\xa9 cr\xff", "answer": "#### 1"}']
    data = b"\n".join(lines) + b"\n"
    column = 23  # 1-based: '{"question": "caf' is 17 bytes, 'é' 2, ' cr' 3
    offset = 2 * (len(GOOD) + 1) + column - 1
    assert data[offset] == 0xFF
    message = error_of(setup_with, data)
    assert message == (
        f"{tmp_path / 'train.jsonl'} line 3: byte 0xff at file offset {offset} (byte {column} of the line) "
        "is not valid UTF-8 (invalid start byte); save the file as UTF-8"
    )


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    assert read_rows(path) == [ROW]


# ------------------------------------------------------------------------------------------- empty splits


def test_empty_train_file_is_named(setup_with, tmp_path):
    message = error_of(setup_with, "\n  \n\n")
    path = tmp_path / "train.jsonl"
    assert message.startswith(f"task gsm8k: the train split (file {path}) has no rows; training needs at least one row")


def test_empty_test_file_is_named(setup_with, tmp_path):
    message = error_of(setup_with, None, "")
    assert message.startswith(
        f"task gsm8k: the test split (file {tmp_path / 'test.jsonl'}) has no rows; "
        "evaluation would report a score from 0 examples"
    )


@pytest.mark.parametrize("text", [" [ ] ", "\n \n"])
def test_empty_json_file_or_array_is_an_empty_split(setup_with, tmp_path, text):
    message = error_of(setup_with, text, train_name="train.json")
    assert f"the train split (file {tmp_path / 'train.json'}) has no rows" in message


def test_validation_split_that_takes_every_training_row_is_refused(setup_with):
    message = error_of(setup_with, f"{GOOD}\n{GOOD}\n", overrides=["trainer.val_size=2"])
    assert message.startswith("trainer.val_size=2 must be in [0, 1]: task gsm8k has 2 training rows")


# ------------------------------------------------------------------------------------------- model.path


def test_model_path_without_config_json_is_named(compose_cfg, tmp_path):
    checkpoint = tmp_path / "Llama-2-7b-hf"
    checkpoint.mkdir()
    (checkpoint / "README.md").write_text("weights go here\n")
    cfg = compose_cfg(["model=llama2_7b", f"model.path={checkpoint}"])
    message = error_of(build_tokenizer, cfg.model)
    assert f"model.path={str(checkpoint)!r}" in message and str(checkpoint.resolve()) in message
    assert "has no config.json" in message and "it holds: README.md" in message


def test_model_path_that_does_not_exist_keeps_its_message(compose_cfg, tmp_path):
    cfg = compose_cfg(["model=llama2_7b", f"model.path={tmp_path / 'nowhere'}"])
    assert "does not exist or is not a directory" in error_of(build_tokenizer, cfg.model)
