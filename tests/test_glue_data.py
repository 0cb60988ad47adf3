"""GLUE readers and metrics: every task's layout (the shipped samples are written in them), header and headerless
files, the real QNLI dev file, errors naming file and line, Hub rows, metric values computed by hand."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from astra.tasks.glue_data import GLUE_TASKS, GlueDataError, read_glue_tsv, read_hub_row
from astra.tasks.glue_metrics import compute_glue_metrics, compute_mnli_metrics

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "astra" / "data" / "samples" / "glue"
SHARED_DATA = Path(os.environ.get("ASTRA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_shipped_sample_reads_in_its_layout(task):
    spec = GLUE_TASKS[task]
    for split in ("train", *spec.dev_splits):
        rows, locations = read_glue_tsv(task, SAMPLES / task / f"{split}.tsv")
        assert len(rows) == (40 if split == "train" else 16) and len(locations) == len(rows)
        assert all(row["text_a"].strip() for row in rows)
        assert all((row["text_b"] is None) == (len(spec.text_fields) == 1) for row in rows)
        if spec.is_regression:
            assert all(isinstance(row["label"], float) and 0 <= row["label"] <= 5 for row in rows)
        else:
            assert {row["label"] for row in rows} == set(range(spec.num_labels))  # every class present
    header_line = 1 if spec.header else 0
    assert locations[0].endswith(f"line {header_line + 1}")


def test_exact_values_and_literal_quotes():
    rows, _ = read_glue_tsv("mnli", SAMPLES / "mnli" / "dev_matched.tsv")
    assert rows[0]["text_a"] == 'The robot visits the farmer near the old "farmer" sign.'  # the quote is text
    assert rows[0]["text_b"] == "A robot visits a farmer." and rows[0]["label"] == 0  # entailment
    rows, _ = read_glue_tsv("cola", SAMPLES / "cola" / "dev.tsv")
    assert (rows[0]["text_a"], rows[0]["label"]) == ("The child helps the cat.", 1)
    assert (rows[1]["text_a"], rows[1]["label"]) == ("City the the helps teacher.", 0)
    rows, _ = read_glue_tsv("mrpc", SAMPLES / "mrpc" / "train.tsv")  # its header starts with a byte-order mark
    assert rows[0]["label"] in (0, 1) and not rows[0]["text_a"].startswith("\ufeff")


@pytest.mark.parametrize("task", ["qnli", "sst2", "stsb", "mnli"])
def test_headerless_file_gives_the_same_rows(tmp_path, task):
    split = GLUE_TASKS[task].dev_splits[0]
    source = SAMPLES / task / f"{split}.tsv"
    headerless = tmp_path / "dev.tsv"
    headerless.write_text("".join(line + "\n" for line in source.read_text(encoding="utf-8").split("\n")[1:] if line))
    assert read_glue_tsv(task, headerless)[0] == read_glue_tsv(task, source)[0]


def test_real_qnli_dev_file():
    path = SHARED_DATA / "qnli" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is not here (set ASTRA_SHARED_DATA)")
    rows, locations = read_glue_tsv("qnli", path)
    assert len(rows) == 5463 and locations[-1].endswith("line 5464")
    assert sum(row["label"] == 0 for row in rows) == 2702  # entailment; the rest not_entailment
    assert rows[0]["text_a"] == "What came into force after the new constitution was herald?"


@pytest.mark.parametrize(
    "task,line,message",
    [
        ("qnli", "7\tWhat is it?\tA cat.\tmaybe", r"line 3: label 'maybe' is not one of \['entailment', 'not_entailment'\]"),
        ("qnli", "7\tWhat is it?\tA cat.", r"line 3: expected at least 4 tab-separated columns \(question, sentence, label"),
        ("qnli", "7\tWhat is it?\tA cat.\t", r"line 3: the label is blank \(GLUE's test labels are hidden"),
        ("qnli", "7\t \tA cat.\tentailment", r"line 3: the question column is empty"),
        ("stsb", "1\tg\tf\t2026\t1\ts\ts\tA.\tB.\thigh", r"line 3: score 'high' is not a number"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, task, line, message):
    source = (SAMPLES / task / "dev.tsv").read_text(encoding="utf-8").split("\n")
    bad = tmp_path / "dev.tsv"
    bad.write_text("\n".join([source[0], source[1], line, source[2]]) + "\n", encoding="utf-8")
    with pytest.raises(GlueDataError, match=rf"{bad}.*{message}"):
        read_glue_tsv(task, bad)


def test_non_utf8_byte_names_the_line(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_bytes(b"sentence\tlabel\nfine .\t1\nbad \xff byte .\t0\n")
    with pytest.raises(GlueDataError, match=r"train.tsv line 3: byte 0xff is not valid UTF-8"):
        read_glue_tsv("sst2", bad)


def test_hub_rows():
    row = read_hub_row("mrpc", {"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 4}, 5)
    assert row == {"text_a": "A.", "text_b": "B.", "label": 1, "idx": 4}
    assert read_hub_row("stsb", {"sentence1": "A.", "sentence2": "B.", "label": 3.2, "idx": 0}, 1)["label"] == 3.2
    assert read_hub_row("sst2", {"sentence": "ok .", "label": 0, "idx": 0}, 1)["text_b"] is None
    with pytest.raises(GlueDataError, match=r"row 3: label -1 is hidden"):
        read_hub_row("qnli", {"question": "q", "sentence": "s", "label": -1}, 3)
    with pytest.raises(GlueDataError, match=r"missing fields \['hypothesis'\]"):
        read_hub_row("mnli", {"premise": "p", "label": 0}, 1)


def test_metrics_against_hand_computed_values():
    predictions, references = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # confusion: TP=2 (0,4), FP=1 (1), FN=1 (3), TN=1 (2)
    accuracy = 3 / 5
    f1 = 2 * (2 / 3) * (2 / 3) / (2 / 3 + 2 / 3)  # precision 2/3, recall 2/3
    mcc = (2 * 1 - 1 * 1) / math.sqrt((2 + 1) * (2 + 1) * (1 + 1) * (1 + 1))  # (TP TN - FP FN) / sqrt(...) = 1/6
    cola = compute_glue_metrics("cola", predictions, references)
    assert cola["mcc"] == pytest.approx(mcc, abs=1e-6) and cola["accuracy"] == accuracy and cola["n_eval"] == 5
    mrpc = compute_glue_metrics("mrpc", predictions, references)
    assert mrpc["f1"] == pytest.approx(f1, abs=1e-6) and mrpc["accuracy"] == accuracy

    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    # Pearson: means 2.5 and 2.5; deviations (-1.5, -0.5, 0.5, 1.5) and (-0.5, -1.5, 1.5, 0.5); the sum of their
    # products is 0.75 + 0.75 + 0.75 + 0.75 = 3, each sum of squares 5, so r = 3 / 5 = 0.6. Spearman: the values
    # are their own ranks, so rho = 0.6 too.
    stsb = compute_glue_metrics("stsb", x, y)
    assert stsb["pearson"] == pytest.approx(0.6, abs=1e-9) and stsb["spearman"] == pytest.approx(0.6, abs=1e-6)
    # A tie: y = (1, 2, 2, 3) has ranks (1, 2.5, 2.5, 4); against x's ranks (1, 2, 3, 4): deviations (-1.5, 0, 0, 1.5)
    # and (-1.5, -0.5, 0.5, 1.5): cov 4.5, sums of squares 4.5 and 5 -> 4.5 / sqrt(22.5) = 0.948683...
    tie = compute_glue_metrics("stsb", x, [1.0, 2.0, 2.0, 3.0])
    assert tie["spearman"] == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-6)
    assert math.isnan(compute_glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"])  # undefined, not 0

    mnli = compute_mnli_metrics([0, 1, 2, 2], [0, 1, 2, 1], [2, 2], [2, 0])  # 3/4 matched, 1/2 mismatched
    assert mnli == {"accuracy_matched": 0.75, "accuracy_mismatched": 0.5, "accuracy": 0.625, "n_eval": 6.0}
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        compute_glue_metrics("qnli", [0, 1], [0, 1, 1])


def test_task_yamls_name_the_hub_splits_of_the_spec():
    from omegaconf import OmegaConf

    for task, spec in GLUE_TASKS.items():
        hub = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "task" / f"{task}.yaml").hub
        assert {split: hub[split].split for split in hub} == dict(spec.hub_splits)
        assert all(hub[split].path == "nyu-mll/glue" and hub[split].name == task for split in hub)
