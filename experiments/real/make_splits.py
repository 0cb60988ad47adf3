"""Write the row-id splits of the real comparison (issue 11): which rows of a real file are train / validation /
test. Ids, not text, are shipped; the text is read from the data files at run time (``task.row_ids``).

    python experiments/real/make_splits.py --data-root ../shared/data

QNLI: the 5463 pairs of GLUE's QNLI dev file (sha256 ac19409d...f4fd) shuffled with seed 0: test = the first 1000,
validation = the next 1000, train = the other 3463 (runs take a prefix of train with task.train_limit). That split is
by row, so 325 test rows share their question with a training row; it stays for the published results only.
QNLI by question (``qnli_group_split.json``, issue 24): the pairs grouped by their normalised question, the groups
shuffled with seed 0 and dealt to test (until >= 2000 rows), validation (>= 500), then train: no question in two
splits. ``groups`` records each row's question hash, so a test checks that without the text.
Commonsense (the decoder part): see ``commonsense_split``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
QNLI_SHA256 = "ac19409dcb04631eaaa094bdebdcf621086bc352503dfb6a1a648b614986f4fd"


def qnli_split(path: Path) -> dict:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != QNLI_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not GLUE's QNLI dev file ({QNLI_SHA256})")
    n_rows = sum(1 for line in path.read_text(encoding="utf-8").split("\n")[1:] if line.strip())
    order = list(range(n_rows))
    random.Random(0).shuffle(order)
    return {"source": "GLUE QNLI dev.tsv", "sha256": digest, "seed": 0,
            "test": order[:1000], "validation": order[1000:2000], "train": order[2000:]}  # fmt: skip


GROUP_TEST_ROWS, GROUP_VALIDATION_ROWS = 2000, 500


def question_key(question: str) -> str:
    """A question as grouped: lower case, whitespace collapsed, trailing punctuation dropped."""
    return " ".join(question.lower().split()).rstrip(" ?.!")


def question_hash(question: str) -> str:
    return hashlib.sha256(question_key(question).encode()).hexdigest()[:12]


def qnli_group_split(path: Path) -> dict:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != QNLI_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not GLUE's QNLI dev file ({QNLI_SHA256})")
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n")[1:] if line.strip()]
    groups = [question_hash(row[1]) for row in rows]
    members: dict[str, list[int]] = {}
    for row_id, group in enumerate(groups):
        members.setdefault(group, []).append(row_id)
    order = sorted(members)
    random.Random(0).shuffle(order)
    split: dict = {"source": "GLUE QNLI dev.tsv", "sha256": digest, "seed": 0, "grouped_by": "question",
                   "test": [], "validation": [], "train": []}  # fmt: skip
    for group in order:
        target = ("test" if len(split["test"]) < GROUP_TEST_ROWS
                  else "validation" if len(split["validation"]) < GROUP_VALIDATION_ROWS else "train")  # fmt: skip
        split[target] += members[group]
    split["groups"] = groups
    return split


TRAIN_FILES = {"arc_e": "ARC-Easy", "arc_c": "ARC-Challenge", "obqa": "openbookqa", "boolq": "boolq"}
TEST_FILES = {**TRAIN_FILES, "piqa": "piqa", "siqa": "social_i_qa", "winogrande": "winogrande"}
VALIDATION_PER_BENCHMARK, TEST_PER_BENCHMARK = 100, 200


def commonsense_split(root: Path) -> dict:
    """The decoder part: a training mix of four LLM-Adapters training files (ARC-Easy, ARC-Challenge, OpenBookQA,
    BoolQ), concatenated in that order. Per file, shuffled with seed 0: the first 100 rows are that benchmark's
    validation set (``validation_<benchmark>``: ids into its train.json); the rest are training rows, interleaved
    round-robin across the four files (``train``: ids into the concatenation) so any prefix (task.train_limit) is
    balanced, up to the smallest file's share. Test subsets: the first 200 of each test file shuffled with seed 0
    (``test_<benchmark>``), PIQA, SIQA and WinoGrande included (scored zero-shot: not in the training mix)."""
    rng = random.Random(0)
    split: dict = {"seed": 0, "train_files": [f"{folder}/train.json" for folder in TRAIN_FILES.values()]}
    pools, offset = [], 0
    for benchmark, folder in TRAIN_FILES.items():
        n_rows = len(json.loads((root / folder / "train.json").read_text(encoding="utf-8")))
        order = list(range(n_rows))
        rng.shuffle(order)
        split[f"validation_{benchmark}"] = order[:VALIDATION_PER_BENCHMARK]
        pools.append([offset + i for i in order[VALIDATION_PER_BENCHMARK:]])
        offset += n_rows
    split["train"] = [pool[k] for k in range(min(map(len, pools))) for pool in pools]
    for benchmark, folder in TEST_FILES.items():
        n_rows = len(json.loads((root / folder / "test.json").read_text(encoding="utf-8")))
        order = list(range(n_rows))
        rng.shuffle(order)
        split[f"test_{benchmark}"] = order[:TEST_PER_BENCHMARK]
    return split


DECODER_FILES = {"arc_e": "ARC-Easy", "arc_c": "ARC-Challenge", "obqa": "openbookqa"}
DECODER_VALIDATION_PER_BENCHMARK = 100
TEMPLATE = "please choose the correct answer to the question:"


def instruction_key(instruction: str) -> str:
    """An LLM-Adapters instruction as grouped: the question alone (the answer options and the shared template
    dropped), lower case, letters and digits only."""
    question = instruction.split("\n\nAnswer1")[0].lower().removeprefix(TEMPLATE)
    return " ".join(re.findall(r"[a-z0-9]+", question))


def decoder_group_split(root: Path) -> dict:
    """The decoder comparison (issue 24): training rows from ARC-Easy, ARC-Challenge and OpenBookQA's train.json
    (ids into their concatenation, that order; interleaved round-robin, each file shuffled), ``validation_<benchmark>`` = the rows of 100 questions per benchmark
    taken out of its training rows (seed 0; ids into its train.json), ``test_<benchmark>`` (ids into its test.json) = every test item whose question appears in no training or validation row (a few dozen
    test questions repeat a training one word for word). ``*_hashes`` record each part's question hashes, so a test
    checks the separation without the text."""
    rng = random.Random(0)
    split: dict = {"seed": 0, "grouped_by": "question", "train_files": [f"{f}/train.json" for f in DECODER_FILES.values()],
                   "train": []}  # fmt: skip
    hashes: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    keys_of, held_of = {}, {}
    for benchmark, folder in DECODER_FILES.items():
        rows = json.loads((root / folder / "train.json").read_text(encoding="utf-8"))
        keys_of[benchmark] = [instruction_key(r["instruction"]) for r in rows]
        groups = sorted(set(keys_of[benchmark]))
        rng.shuffle(groups)
        held_of[benchmark] = set(groups[:DECODER_VALIDATION_PER_BENCHMARK])
    held = set().union(*held_of.values())  # a validation question leaves every file's training rows
    seen = set().union(*(set(keys) for keys in keys_of.values()))
    pools: list[list[int]] = []
    offset = 0
    for benchmark, keys in keys_of.items():
        split[f"validation_{benchmark}"] = [i for i, k in enumerate(keys) if k in held_of[benchmark]]
        pool = [offset + i for i, k in enumerate(keys) if k not in held]
        rng.shuffle(pool)
        pools.append(pool)
        hashes["validation"] += [question_hash(k) for k in held_of[benchmark]]
        hashes["train"] += [question_hash(k) for k in keys if k not in held]
        offset += len(keys)
    # round-robin over the benchmarks (each shuffled), so any prefix (task.train_limit) is balanced while it lasts
    split["train"] = [pool[k] for k in range(max(map(len, pools))) for pool in pools if k < len(pool)]
    for benchmark, folder in DECODER_FILES.items():
        rows = json.loads((root / folder / "test.json").read_text(encoding="utf-8"))
        keys = [instruction_key(r["instruction"]) for r in rows]
        split[f"test_{benchmark}"] = [i for i, k in enumerate(keys) if k not in seen]
        hashes["test"] += sorted({question_hash(k) for k in keys if k not in seen})
    split["hashes"] = {part: sorted(set(values)) for part, values in hashes.items()}
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, required=True, help="a folder with qnli/dev.tsv")
    args = parser.parse_args()
    for name, split in (("qnli", qnli_split(args.data_root / "qnli" / "dev.tsv")),
                        ("qnli_group", qnli_group_split(args.data_root / "qnli" / "dev.tsv")),
                        ("commonsense", commonsense_split(args.data_root)),
                        ("commonsense_group", decoder_group_split(args.data_root))):  # fmt: skip
        (HERE / f"{name}_split.json").write_text(json.dumps(split) + "\n", encoding="utf-8")
        print(name, {key: len(value) for key, value in split.items() if isinstance(value, (list, dict)) and key not in ("train_files", "groups", "hashes")})


if __name__ == "__main__":
    main()
