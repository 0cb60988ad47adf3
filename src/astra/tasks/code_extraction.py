"""Cutting a model's generation down to the code to run: the first fenced block, then the entry function
(with the imports and helpers before it), stopping at test or driver code the model appended."""

from __future__ import annotations

import re

_FENCE_OPEN = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*(?:\n|$)", re.IGNORECASE)
_TOP_LEVEL_CODE = ("def ", "async def ", "class ", "import ", "from ", "@")
# Top-level lines that end the code wherever they stand: driver code, never part of a solution.
_ALWAYS_STOP = re.compile(r"(if\s+__name__\b|print\s*\(|print\s|assert\b|#\s*(example|test|usage|driver))", re.I)
# Top-level lines that end the code once the function's body has ended (a superset of the Codex stop
# sequences "\ndef", "\nclass", "\nif", "\nprint", "\n#").
_AFTER_FUNCTION_STOP = re.compile(r"(def\s|async\s+def\s|class\s|@|if\b|for\b|while\b|with\b|try\b|#)")


def extract_code(generation: str, entry_point: str | None = None) -> str:
    """The code to run from a generation (the one truncation rule of this family).

    1. Markdown: the code inside the first ```` ```python ```` fence (or bare ```` ``` ```` one that starts the
       text or is paired), up to the closing "\\n```"; without one, everything up to the first "\\n```".
    2. Body mode (the first code line is indented by a tab or 4+ spaces, or by 1-3 spaces and is no
       def/class/import: the model continued the HumanEval prompt's function): kept as is (one stray leading
       space from the Alpaca separator is dropped), up to the first top-level line, where the body has ended.
    3. Program mode (a whole program; a leading space before its first line is dropped): cut at the first
       top-level ``if __name__``, ``print``, ``assert`` or "# Example/# Test" line anywhere, and, once the body of ``def <entry_point>`` has ended,
       at the first top-level def/class/decorator/if/for/while/with/try/comment or any line that uses the
       function's name (a call of it). Imports and helpers before the function, and plain top-level lines after
       it, are kept; with no ``entry_point`` (or none defined in the code) only the first rule cuts.
    """
    text = generation.replace("\r\n", "\n").replace("\r", "\n")
    opened = _FENCE_OPEN.search(text)
    # An untagged fence opens a block when it comes first or the fences pair up; a lone one closes a body.
    if opened and (opened.group(0).strip() != "```" or not text[: opened.start()].strip() or text.count("```") % 2 == 0):
        text = text[opened.end() :]
    closed = text.find("\n```") if not text.startswith("```") else 0
    if closed >= 0:
        text = text[:closed]
    lines = text.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return ""
    first = lines[0]
    indent = len(first) - len(first.lstrip())
    if first.startswith("\t") or indent >= 4 or (indent and not first.lstrip().startswith(_TOP_LEVEL_CODE)):
        return _body_mode(lines)
    return _program_mode([first.lstrip(), *lines[1:]], entry_point)


def _is_top_level(line: str) -> bool:
    return bool(line.strip()) and not line[0].isspace()


def _body_mode(lines: list[str]) -> str:
    first = lines[0]
    indent = len(first) - len(first.lstrip(" "))
    if first.startswith(" ") and indent % 4 == 1:  # " " + "    return x": the separator after "### Response:"
        lines = [first[1:], *lines[1:]]
    kept = []
    for line in lines:
        if _is_top_level(line):
            break
        kept.append(line)
    code = "\n".join(kept).rstrip()
    return code + "\n" if code else ""


def _program_mode(lines: list[str], entry_point: str | None) -> str:
    defines = re.compile(r"(async\s+)?def\s+" + re.escape(entry_point) + r"\s*\(") if entry_point else None
    uses = re.compile(r"\b" + re.escape(entry_point) + r"\b") if entry_point else None
    kept, state = [], "before"  # before the function, inside it, after its body
    for line in lines:
        if _is_top_level(line):
            if _ALWAYS_STOP.match(line):
                break
            if state == "inside":
                state = "after"
            if state == "after" and (_AFTER_FUNCTION_STOP.match(line) or (uses and uses.search(line))):
                break
            if state == "before" and defines is not None and defines.match(line):
                state = "inside"
        kept.append(line)
    code = "\n".join(kept).rstrip()
    return code + "\n" if code else ""
