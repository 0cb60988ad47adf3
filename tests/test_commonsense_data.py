"""Readers of the commonsense benchmark files: small fixtures in each exact format, real files when present."""

from __future__ import annotations

import bz2
import json
import os
import re
from pathlib import Path

import pytest

from astra.tasks.commonsense_data import (
    DATA_FILES,
    EXPECTED_COUNTS,
    TASKS,
    CommonsenseDataError,
    answer_word,
    hellaswag_preprocess,
    read_hellaswag,
    read_llm_adapters,
    read_task,
)

SHARED_DATA = Path(os.environ.get("ASTRA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def row(instruction: str, answer: str) -> dict:
    """A row as LLM-Adapters writes it."""
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


CHOOSE = "Please choose the correct answer to the question: "
FIXTURES = {
    "boolq": [
        row(
            "Please answer the following question with true or false, question: is the sun a star?\n\n"
            "Answer format: true/false",
            "true",
        )
    ],
    "piqa": [
        row(
            "Please choose the correct solution to the question: How do I dry wet shoes?\n\n"
            "Solution1: Stuff them with newspaper.\n\nSolution2: Put them in the freezer. \n\n"
            "Answer format: solution1/solution2",
            "solution1",
        )
    ],
    "siqa": [
        row(
            CHOOSE + "Kai gave Ash a gift. How would Ash feel?\n\nAnswer1: grateful Answer2: angry "
            "Answer3: bored\n\nAnswer format: answer1/answer2/answer3",
            "answer1",
        )
    ],
    "winogrande": [
        row(
            "Please choose the correct answer to fill in the blank to complete the given sentence: "
            "The cup did not fit in the box because the _ was too big.\n\nOption1: cup Option2: box "
            "Answer format: option1/option2",
            "option1",
        )
    ],
    "arc_e": [
        row(
            CHOOSE + "Which is a liquid?\n\nAnswer1: ice Answer2: water Answer3: steam Answer4: rock "
            "Answer5: sand\n\nAnswer format: answer1/answer2/answer3/answer4/answer5",
            "answer2",
        )
    ],
    "arc_c": [
        row(
            CHOOSE + "What do plants need?\n\nAnswer1: light Answer2: noise Answer3: plastic\n\n"
            "Answer format: answer1/answer2/answer3",
            "answer1",
        )
    ],
    "obqa": [
        row(
            CHOOSE + "The moon orbits\n\nAnswer1: the sun Answer2: the earth Answer3: mars "
            "Answer4: a comet\n\nAnswer format: answer1/answer2/answer3/answer4",
            "answer2",
        )
    ],
}
EXPECTED = {  # (query, choices, gold, answer_word)
    "boolq": ("Question: is the sun a star?\nAnswer:", ["no", "yes"], 1, "true"),
    "piqa": (
        "Question: How do I dry wet shoes?\nAnswer:",
        ["Stuff them with newspaper.", "Put them in the freezer. "],
        0,
        "solution1",
    ),
    "siqa": ("Q: Kai gave Ash a gift. How would Ash feel?\nA:", ["grateful", "angry", "bored"], 0, "answer1"),
    "winogrande": ("The cup did not fit in the box because the ", ["cup", "box"], 0, "option1"),
    "arc_e": ("Question: Which is a liquid?\nAnswer:", ["ice", "water", "steam", "rock", "sand"], 1, "answer2"),
    "arc_c": ("Question: What do plants need?\nAnswer:", ["light", "noise", "plastic"], 0, "answer1"),
    "obqa": ("The moon orbits", ["the sun", "the earth", "mars", "a comet"], 1, "answer2"),
}
HELLASWAG_TEXT = (
    "Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap to wrap a pair of skis.\n"
    "is ripping level tiles off.\nis holding a rubik's cube.\nstarts pulling up roofing on a roof.\n"
    "Home and Garden: How to grow basil. Pick a sunny spot.\n0\nWater it daily [title] Keep the soil moist.\n"
    "Visit [www.example.org] for  seeds.\nPlant it in the dark.\nNever water it.\n"
)


def write_json(tmp_path: Path, name: str, rows: list) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_llm_adapters_fixture_per_task(tmp_path, task):
    items = read_task(task, write_json(tmp_path, f"{task}.json", FIXTURES[task]))
    query, choices, gold, word = EXPECTED[task]
    assert len(items) == 1
    item = items[0]
    assert (item["query"], item["choices"], item["gold"], item["answer_word"]) == (query, choices, gold, word)
    assert item["id"] == f"{task}-1" and item["task"] == task and answer_word(item) == word
    if task == "winogrande":
        assert item["continuation"] == "was too big."
    else:
        assert "continuation" not in item


@pytest.mark.parametrize("compress", [False, True])
def test_hellaswag_fixture(tmp_path, compress):
    path = tmp_path / ("hs.txt.bz2" if compress else "hs.txt")
    path.write_bytes(bz2.compress(HELLASWAG_TEXT.encode()) if compress else HELLASWAG_TEXT.encode())
    first, second = read_hellaswag(path)
    # lm-eval: activity_label + ": " + ctx_a + " " + ctx_b.capitalize(); the file's ctx_b "he" is lower case.
    assert first["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert first["choices"][3] == "starts pulling up roofing on a roof."
    assert (first["gold"], first["answer_word"], first["id"]) == (3, "ending4", "hellaswag-1")
    assert second["query"] == "Home and Garden: How to grow basil. Pick a sunny spot."  # full sentence: unchanged
    assert second["choices"][:2] == ["Water it daily. Keep the soil moist.", "Visit for seeds."]
    assert (second["gold"], second["answer_word"]) == (0, "ending1")


def test_hellaswag_preprocess_matches_lm_eval():
    from lm_eval.tasks.hellaswag.utils import preprocess

    for text in [" [header] How to x [title] Do y. [step] z  w ", "plain text", "a [b] c  [title] d"]:
        assert hellaswag_preprocess(text) == preprocess(text)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (
            row(
                "Please choose the correct solution to the question: q\n\nSolution1: a\n\nAnswer format: "
                "solution1/solution2",
                "solution1",
            ),
            "does not match the piqa format",
        ),
        (
            row(
                "Please choose the correct solution to the question: q\n\nSolution1: a\n\nSolution2: b\n\n"
                "Answer format: solution1/solution2",
                "solution3",
            ),
            "answer 'solution3' is not one of",
        ),
        ({"instruction": 3}, "string 'instruction' and 'answer'"),
    ],
)
def test_malformed_llm_adapters_item_names_file_and_position(tmp_path, bad_row, message):
    path = write_json(tmp_path, "piqa.json", FIXTURES["piqa"] + [bad_row])
    with pytest.raises(CommonsenseDataError, match=re.escape(message)) as err:
        read_llm_adapters("piqa", path)
    assert f"{path}: item 2:" in str(err.value)


def test_malformed_options_and_blank(tmp_path):
    arc = row(CHOOSE + "q\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2/answer3", "answer1")
    with pytest.raises(CommonsenseDataError, match=r"arc\.json: item 1: cannot split"):
        read_llm_adapters("arc_e", write_json(tmp_path, "arc.json", [arc]))
    wino = row(
        "Please choose the correct answer to fill in the blank to complete the given sentence: no blank."
        "\n\nOption1: a Option2: b Answer format: option1/option2",
        "option1",
    )
    with pytest.raises(CommonsenseDataError, match=r"wg\.json: item 1: expected one '_' blank"):
        read_llm_adapters("winogrande", write_json(tmp_path, "wg.json", [wino]))
    with pytest.raises(CommonsenseDataError, match="expected a JSON array"):
        read_llm_adapters("boolq", write_json(tmp_path, "b.json", {"rows": []}))


def test_malformed_hellaswag_names_file_item_and_line(tmp_path):
    lines = HELLASWAG_TEXT.split("\n")
    bad_label = "\n".join(lines[:7] + ["4"] + lines[8:])
    path = tmp_path / "hs.txt"
    path.write_text(bad_label)
    with pytest.raises(CommonsenseDataError, match=re.escape(f"{path}: item 2 (line 7): gold label on line 8")):
        read_hellaswag(path)
    path.write_text(HELLASWAG_TEXT + "Extra: context\n1\nonly one ending\n")
    with pytest.raises(CommonsenseDataError, match=re.escape(f"{path}: item 3 (line 13): incomplete, 3 of 6")):
        read_hellaswag(path)
    path.write_text("\n".join(lines[:4] + [""] + lines[5:]))
    with pytest.raises(CommonsenseDataError, match=re.escape("item 1 (line 1): ending 3 (line 5) is empty")):
        read_hellaswag(path)


def test_unknown_task_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown commonsense task"):
        read_task("mmlu", tmp_path / "x.json")


def _sources_rows(task: str) -> int:
    """The row count SOURCES.md gives for the task's file."""
    folder, name = DATA_FILES[task].split("/")
    for line in (SHARED_DATA / folder / "SOURCES.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1] == name:
            return int(cells[4])
    raise AssertionError(f"{name} not in {folder}/SOURCES.md")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real benchmark files not present at {SHARED_DATA}")
@pytest.mark.parametrize("task", TASKS)
def test_real_file_parses_completely(task):
    path = SHARED_DATA / DATA_FILES[task]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    items = read_task(task, path)
    assert len(items) == EXPECTED_COUNTS[task] == _sources_rows(task)
    assert len({item["id"] for item in items}) == len(items)
    for item in items:
        assert 0 <= item["gold"] < len(item["choices"]) and len(item["choices"]) >= 2
        assert all(isinstance(c, str) for c in item["choices"]) and item["query"]
        assert item["answer_word"] == answer_word(item)
    if task != "hellaswag":  # the answer word is what the file says
        rows = json.loads(path.read_text())
        assert [r["answer"] for r in rows] == [item["answer_word"] for item in items]
