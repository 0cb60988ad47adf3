"""Reading and scoring final answers for GSM8K and MATH, following the Astra (MetaMath-style) protocol.

The model answers an Alpaca prompt ending in "Let's think step by step." and states its result after
"The answer is:"; only the LAST such marker counts (a model may restate the template earlier on).
A generation without a readable answer scores 0 -- scoring never raises on model output.
This module stands alone (no astra imports) so evaluation workers can import it cheaply.
"""

from __future__ import annotations

import logging
import math
import re
import threading

log = logging.getLogger(__name__)

ANSWER_MARKER = "The answer is:"
MATH_TIMEOUT_SECONDS = 5  # math-verify's own default per parse / comparison (main thread only)
# Sign, digits with thousands commas, optional decimals (or a bare ".5"), optional "/denominator".
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d[\d,]*(?:\.\d+)?)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_ABS_TOL = 1e-4
_mv_error_logged = False


def _answer_tail(generation: str) -> str | None:
    if not isinstance(generation, str) or ANSWER_MARKER not in generation:
        return None
    return generation.rsplit(ANSWER_MARKER, 1)[1]


def _number_value(text: str) -> float | None:
    """'1,234.00' -> 1234.0; '5/2' -> 2.5; None when it is not a finite number (e.g. '3/0')."""
    numerator, _, denominator = text.replace(",", "").partition("/")
    try:
        value = float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def gsm8k_reference(answer_field: str) -> str:
    """The number after the last '####' of a GSM8K answer, normalised ('#### 1,450,000' -> '1450000')."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: ...{answer_field[-80:]!r}")
    after = answer_field.rsplit("####", 1)[1].strip()
    match = _NUMBER.search(after)
    value = _number_value(match.group()) if match else None
    if value is None:
        raise ValueError(f"GSM8K answer has '####' but no number after it: {after[:80]!r}")
    return _format_number(value)


def extract_gsm8k_answer(generation: str, fallback_last_number: bool = False) -> str | None:
    """The first number after the last 'The answer is:', normalised ('1,234.00' -> '1234'), else None.

    fallback_last_number=False is the reference behaviour (no marker -> no answer); True reads the last
    number anywhere in the text when the marker is missing (lenient, NOT comparable with the reference).
    """
    tail = _answer_tail(generation)
    if tail is not None:
        candidates = _NUMBER.findall(tail)[:1]
    elif fallback_last_number and isinstance(generation, str):
        candidates = _NUMBER.findall(generation)[-1:]
    else:
        return None
    value = _number_value(candidates[0]) if candidates else None
    return None if value is None else _format_number(value)


def gsm8k_correct(
    generation: str, reference: str, *, fallback_last_number: bool = False, reference_rounding: bool = False
) -> bool:
    """Numeric match within an absolute 1e-4 (exact for GSM8K's integer references, absorbs float noise).

    The reference code instead rounds the prediction to the nearest integer, so '17.6' counts for 18 there;
    reference_rounding=True reproduces that. A malformed *reference* raises ValueError (a data bug).
    """
    ref = _number_value(str(reference).strip())
    if ref is None:
        raise ValueError(f"GSM8K reference {reference!r} is not a number")
    pred = extract_gsm8k_answer(generation, fallback_last_number=fallback_last_number)
    if pred is None:
        return False
    value = float(pred)
    if reference_rounding:
        value = float(round(value))
    return abs(value - ref) <= _GSM8K_ABS_TOL


def last_boxed(solution: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (nested braces kept), or of '\\boxed 5'; else None."""
    if not isinstance(solution, str):
        return None
    starts = [m.end() for m in _BOXED.finditer(solution)]
    if not starts:
        return None
    rest = solution[starts[-1] :]
    body = rest.lstrip()
    if not body.startswith("{"):
        # Hendrycks' convention for '\boxed 5': the content runs to the closing '$' (or line end).
        content = re.split(r"[$\n]", body, maxsplit=1)[0].strip()
        return content or None
    depth, i = 0, 0
    while i < len(body):
        if body[i] == "\\":
            i += 2  # a control symbol such as \{ or \} is text, not structure
            continue
        if body[i] == "{":
            depth += 1
        elif body[i] == "}":
            depth -= 1
            if depth == 0:
                return body[1:i].strip()
        i += 1
    return None  # unbalanced: the box never closes


def _strip_math_answer(text: str) -> str:
    text = text.strip()
    for _ in range(2):  # '$\frac12$.' needs the period and then the dollars removed
        text = text.rstrip(" .\t")
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : -len(right)].strip()
                break
    return text


def extract_math_answer(generation: str) -> str | None:
    """Text after the last 'The answer is:' up to the end of that line, without trailing '.' and $...$."""
    tail = _answer_tail(generation)
    if tail is None:
        return None
    # First line only: a generation that runs past its answer (e.g. into '### Instruction:') is not
    # part of the answer; MetaMath-format answers are always one line.
    tail = tail.lstrip().split("\n", 1)[0]
    answer = _strip_math_answer(tail)
    return answer or None


def _drop_percent(latex: str) -> str:
    # MATH's convention (Hendrycks' strip_string) ignores '%', so '10\%' == 10. It also avoids a bug in
    # latex2sympy2_extended 1.11 with antlr 4.9.3 (kept for Hydra): a percent number raises
    # AttributeError(FUNC_GAMMA) and the gold would fall back to plain string comparison.
    return latex.replace("\\%", "").replace("%", "")


def math_equivalent(prediction: str | None, reference: str) -> bool:
    """Whether a MATH prediction equals the reference answer (boxed content) according to math-verify.

    math-verify times out with signal.alarm, which only works in the main thread; elsewhere it runs
    without a timeout (a pathological expression can then take long: bound it at the caller).
    """
    global _mv_error_logged
    if prediction is None or reference is None:
        return False
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        timeout = MATH_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
        gold_text = _drop_percent(_strip_math_answer(reference))
        pred_text = _drop_percent(_strip_math_answer(prediction))
        if not gold_text or not pred_text:
            return False
        # math-verify's LaTeX extractor needs delimiters: the gold is boxed (its normalisation then
        # applies boxed="last"), the prediction is tried as LaTeX and as a plain expression ('3/4').
        gold = parse(f"$\\boxed{{{gold_text}}}$", [LatexExtractionConfig()], parsing_timeout=timeout)
        pred = parse(f"${pred_text}$", [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=timeout)
        if verify(gold, pred, timeout_seconds=timeout):
            return True
        # Identical texts (spacing aside) are equal even where math-verify cannot parse or compare them.
        return re.sub(r"\s+", "", gold_text) == re.sub(r"\s+", "", pred_text)
    except Exception:
        if not _mv_error_logged:
            _mv_error_logged = True
            log.warning("math-verify failed; scoring as wrong (logged once)", exc_info=True)
        else:
            log.debug("math-verify failed on %r vs %r", prediction, reference, exc_info=True)
        return False


def math_correct(generation: str, reference_solution: str) -> bool:
    """Whether the generation's stated answer matches the last boxed answer of a MATH solution."""
    reference = last_boxed(reference_solution)
    if reference is None:
        raise ValueError(f"MATH solution has no \\boxed{{...}} answer: ...{str(reference_solution)[-80:]!r}")
    return math_equivalent(extract_math_answer(generation), reference)
