"""Answer extraction and scoring for GSM8K and MATH (astra.tasks.math_answers)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from astra.tasks import math_answers as ma
from astra.tasks.math_answers import (
    extract_gsm8k_answer,
    extract_math_answer,
    gsm8k_correct,
    gsm8k_reference,
    last_boxed,
    math_correct,
    math_equivalent,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the checkout
GSM8K_TEST = SHARED / "gsm8k" / "test.jsonl"
MATH_TEST = SHARED / "math" / "test.json"  # JSON Lines despite the name

# The first row of the official GSM8K test split, verbatim.
GSM8K_ROW = {
    "question": "Janet\u2019s ducks lay 16 eggs per day. ...",
    "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18",
}


# ----------------------------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("Step 1 ... The answer is: 1,234.00", "1234"),
        ("The answer is: -3.5.", "-3.5"),
        ("The answer is: $12", "12"),
        ("The answer is: 3 apples.\nWait, recount. The answer is: 4", "4"),
        ("The answer is: 5/2", "2.5"),
        ("The answer is: 1.5/2 hours", "0.75"),
    ],
)
def test_extract_gsm8k_answer(generation, expected):
    assert extract_gsm8k_answer(generation) == expected


def test_gsm8k_no_answer_is_wrong_not_an_error():
    for generation in ["I think it is 5 eggs", "The answer is: unknown", "", "The answer is: 3/0", None]:
        assert extract_gsm8k_answer(generation) is None
        assert gsm8k_correct(generation, "5") is False


def test_gsm8k_fallback_last_number_is_opt_in():
    generation = "She has 3 then 5 eggs"
    assert extract_gsm8k_answer(generation) is None
    assert extract_gsm8k_answer(generation, fallback_last_number=True) == "5"
    assert gsm8k_correct(generation, "5", fallback_last_number=True)
    # With a marker the fallback changes nothing: the first number after the last marker wins.
    assert extract_gsm8k_answer("7 then The answer is: 2 or 9", fallback_last_number=True) == "2"


def test_gsm8k_reference_on_real_row_format():
    assert gsm8k_reference(GSM8K_ROW["answer"]) == "18"
    assert gsm8k_reference("so...\n#### 1,450,000") == "1450000"
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("no final line 18")
    with pytest.raises(ValueError, match="no number"):
        gsm8k_reference("#### eighteen")


def test_gsm8k_correct_numeric_comparison():
    assert gsm8k_correct("The answer is: 18.0", "18")
    assert gsm8k_correct("The answer is: 1,450,000 dollars", "1450000")
    assert not gsm8k_correct("The answer is: 17", "18")
    # Default: no rounding; reference_rounding reproduces the reference code's round().
    assert not gsm8k_correct("The answer is: 17.6", "18")
    assert gsm8k_correct("The answer is: 17.6", "18", reference_rounding=True)
    with pytest.raises(ValueError, match="not a number"):
        gsm8k_correct("The answer is: 1", "eighteen")


# ------------------------------------------------------------------------------------------------ MATH


def test_last_boxed_nested_multiple_and_variants():
    assert last_boxed(r"so $\boxed{\frac{\sqrt{3}}{2}}$.") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"$\boxed{2}$ or $\boxed{\{1, 2\}}$") == r"\{1, 2\}"
    assert last_boxed(r"the result is \fbox{7}") == "7"
    assert last_boxed(r"so $\boxed 5$.") == "5"
    assert last_boxed(r"\boxed{\text{(A)}}") == r"\text{(A)}"
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{\frac{1}{2}") is None  # never closes


def test_extract_math_answer():
    assert extract_math_answer(r"... The answer is: $\frac{1}{2}$.") == r"\frac{1}{2}"
    assert extract_math_answer("The answer is: 3\nThe answer is:  (1, 2) .") == "(1, 2)"
    assert extract_math_answer("The answer is: 7.\n\n### Instruction: more") == "7"
    assert extract_math_answer(r"it is \boxed{3}") is None  # reference protocol: marker only
    assert extract_math_answer("The answer is:   ") is None


EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"),
    ("3/4", r"\dfrac{3}{4}"),
    (r"\frac{\sqrt{3}}{2}", last_boxed(r"$\boxed{\frac{\sqrt{3}}{2}}$")),
    ("10", r"10\%"),  # decision: percent signs are ignored (MATH convention), so 10\% == 10
    (r"10\%", "10"),
    ("5", r"5 \text{ cm}"),  # units are dropped
    (r"(-\infty,3]", r"(-\infty, 3]"),
    ("x=2", "2"),
    ("2", "x=2"),
    ("(1, 2)", "(1,2)"),
    (r"\text{(A)}", r"\text{(A)}"),
    (r"3\sqrt{2}", r"\sqrt{18}"),
]
NOT_EQUIVALENT = [
    (r"(-\infty, 3)", r"(-\infty, 3]"),
    ("0.1", r"10\%"),  # consequence of ignoring '%'
    ("(2, 1)", "(1,2)"),
    ("7", "8"),
    (r"\text{Monday}", r"\text{Tuesday}"),
    ("garbage ((", "5"),
    (None, "5"),
    ("", "5"),
]


@pytest.mark.parametrize(("prediction", "reference"), EQUIVALENT)
def test_math_equivalent_pairs(prediction, reference):
    assert math_equivalent(prediction, reference)


@pytest.mark.parametrize(("prediction", "reference"), NOT_EQUIVALENT)
def test_math_not_equivalent_pairs(prediction, reference):
    assert not math_equivalent(prediction, reference)


def test_math_correct_end_to_end():
    solution = r"Thus $x = \boxed{\dfrac{9}{7}}$."
    assert math_correct("Let's think. The answer is: $\\frac{9}{7}$.", solution)
    assert not math_correct("The answer is: 9/8", solution)
    assert not math_correct("no marker, x = 9/7", solution)
    with pytest.raises(ValueError, match="boxed"):
        math_correct("The answer is: 1", "a solution without a box")


def test_math_correct_in_worker_thread():
    # math-verify's signal.alarm timeout only works in the main thread; we must switch it off elsewhere.
    results, errors = [], []

    def work():
        try:
            results.append(math_correct(r"The answer is: \frac{1}{2}", r"\boxed{0.5}"))
            results.append(math_correct("The answer is: 3", r"\boxed{0.5}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=60)
    assert not errors and results == [True, False]


def test_math_verify_errors_score_false_and_log_once(monkeypatch, caplog):
    import math_verify

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(math_verify, "verify", boom)
    monkeypatch.setattr(ma, "_mv_error_logged", False)
    with caplog.at_level(logging.WARNING, logger=ma.__name__):
        assert not math_equivalent("1", "1")
        assert not math_equivalent("2", "2")
    assert len([r for r in caplog.records if r.name == ma.__name__ and r.levelno >= logging.WARNING]) == 1


# ------------------------------------------------------------------------------------ real data checks


def _rows(path: Path, n: int) -> list[dict]:
    with path.open() as handle:
        return [json.loads(line) for _, line in zip(range(n), handle)]


@pytest.mark.skipif(not MATH_TEST.exists(), reason="shared MATH data not available")
def test_math_self_consistency_on_real_data():
    rows = _rows(MATH_TEST, 200)
    start = time.perf_counter()
    hits = [
        math_correct(f"Let's think step by step. The answer is: {last_boxed(r['solution'])}", r["solution"])
        for r in rows
    ]
    elapsed = time.perf_counter() - start
    rate = sum(hits) / len(hits)
    print(f"MATH self-consistency {rate:.3f} over {len(rows)} rows, {elapsed / len(rows) * 1000:.1f} ms/row")
    assert rate >= 0.98


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="shared GSM8K data not available")
def test_gsm8k_self_consistency_on_real_data():
    for row in _rows(GSM8K_TEST, 200):
        reference = gsm8k_reference(row["answer"])
        assert gsm8k_correct("The answer is: " + reference, reference), row["answer"]
