"""Write the shipped GLUE smoke-test samples (``src/astra/data/samples/glue/<task>/``): `python -m astra.data.build_glue_samples`.

Seven tasks get template sentences written for this project (NOT GLUE data: they only let every GLUE code path run
offline, in each task's exact TSV layout, labels balanced, a literal ``"`` in some rows). QNLI's sample is the first
56 data rows of the real QNLI dev file when a data root with ``qnli/dev.tsv`` is given (SQuAD-derived, CC BY-SA 4.0;
see SOURCES.md). The output is deterministic: rerunning gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

OUT = Path(__file__).parent / "samples" / "glue"
NOUNS = ["cat", "teacher", "river", "robot", "farmer", "city", "pilot", "garden", "child", "storm"]
VERBS = ["watches", "follows", "paints", "helps", "finds", "visits", "draws", "carries"]
GOOD = ["wonderful", "moving", "clever", "delightful", "warm", "gripping"]
BAD = ["dull", "clumsy", "tedious", "shallow", "messy", "forgettable"]
N_TRAIN, N_DEV = 40, 16


def _pairs(rng: random.Random, n: int, labels: list) -> list[tuple[str, str, object]]:
    """Sentence pairs whose label follows from how the second sentence was built."""
    rows = []
    for k in range(n):
        a, b, verb = rng.sample(NOUNS, 2) + [rng.choice(VERBS)]
        first = f'The {a} {verb} the {b} near the old "{rng.choice(NOUNS)}" sign.' if k % 7 == 0 else f"The {a} {verb} the {b}."
        label = labels[k % len(labels)]
        if label in ("entailment", 1, "1"):
            second = f"A {a} {verb} a {b}."
        elif label == "neutral":
            second = f"The {a} {verb} the {b} every morning."
        else:
            second = f"The {rng.choice([x for x in NOUNS if x != a])} never {verb.removesuffix('s')}s anything."
        rows.append((first, second, label))
    return rows


def _write(task: str, split: str, lines: list[str]) -> None:
    folder = OUT / task
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def build(data_root: Path | None) -> None:
    rng = random.Random(0)
    for split, n in (("train", N_TRAIN), ("dev", N_DEV)):
        sentences = []
        for k in range(n):
            good = k % 2 == 0
            adjectives = rng.sample(GOOD if good else BAD, 2)
            quote = ' "as promised"' if k % 9 == 0 else ""
            sentences.append((f"the {rng.choice(NOUNS)} story was {adjectives[0]} and {adjectives[1]}{quote} .", int(good)))
        _write("sst2", split, ["sentence\tlabel", *(f"{s}\t{label}" for s, label in sentences)])

        cola = []
        for k in range(n):
            a, b, verb = rng.sample(NOUNS, 2) + [rng.choice(VERBS)]
            if k % 2 == 0:
                cola.append(f"gj04\t1\t\tThe {a} {verb} the {b}.")
            else:
                cola.append(f"gj04\t0\t*\t{a.capitalize()} the the {verb} {b}.")
        _write("cola", split, cola)

        pairs = _pairs(rng, n, ["entailment", "not_entailment"])
        _write("rte", split, ["index\tsentence1\tsentence2\tlabel", *(f"{k}\t{a}\t{b}\t{label}" for k, (a, b, label) in enumerate(pairs))])

        pairs = _pairs(rng, n, [1, 0])
        _write("mrpc", split, ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                               *(f"{label}\t{1000 + 2 * k}\t{1001 + 2 * k}\t{a}\t{b}" for k, (a, b, label) in enumerate(pairs))])  # fmt: skip

        pairs = _pairs(rng, n, [1, 0])
        _write("qqp", split, ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                              *(f"{k}\t{2 * k}\t{2 * k + 1}\tWhy does the {a.split()[1]} matter?\t"
                                f"{'Why is the ' + a.split()[1] + ' important?' if label else 'How tall is the ' + b.split()[1] + '?'}\t{label}"
                                for k, (a, b, label) in enumerate(pairs))])  # fmt: skip

        pairs = _pairs(rng, n, [1, 0])
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        _write("stsb", split, [header, *(f"{k}\tmain-news\tastra\t2026\t{k}\tnone\tnone\t{a}\t{b}\t"
                                         f"{4.0 + (k % 3) * 0.4 if label else 0.4 + (k % 4) * 0.5:.3f}"
                                         for k, (a, b, label) in enumerate(pairs))])  # fmt: skip

    mnli_columns = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"
    for split, n, labels in (("train", N_TRAIN, ["label1"]), ("dev_matched", N_DEV, [f"label{i}" for i in range(1, 6)]),
                             ("dev_mismatched", N_DEV, [f"label{i}" for i in range(1, 6)])):  # fmt: skip
        pairs = _pairs(rng, n, ["entailment", "neutral", "contradiction"])
        lines = ["\t".join([mnli_columns, *labels, "gold_label"])]
        for k, (a, b, label) in enumerate(pairs):
            lines.append("\t".join([str(k), str(k), f"{k}e", "fiction", f"( {a} )", f"( {b} )", f"(ROOT {a})", f"(ROOT {b})",
                                    a, b, *[label] * len(labels), label]))  # fmt: skip
        _write("mnli", split, lines)

    qnli = (data_root / "qnli" / "dev.tsv") if data_root else None
    if qnli and qnli.is_file():
        lines = qnli.read_text(encoding="utf-8").split("\n")
        _write("qnli", "train", [lines[0], *lines[1 : 1 + N_TRAIN]])
        _write("qnli", "dev", [lines[0], *lines[1 + N_TRAIN : 1 + N_TRAIN + N_DEV]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, default=None, help="a folder with qnli/dev.tsv (e.g. ../shared/data)")
    args = parser.parse_args()
    build(args.data_root)
    for path in sorted(OUT.rglob("*.tsv")):
        print(f"{path.relative_to(OUT)}  {hashlib.sha256(path.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
