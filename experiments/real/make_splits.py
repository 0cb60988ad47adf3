"""Write the row-id splits of the real comparison (issue 11): which rows of a real file are train / validation /
test. Ids, not text, are shipped; the text is read from the data files at run time (``task.row_ids``).

    python experiments/real/make_splits.py --data-root ../shared/data

QNLI: the 5463 pairs of GLUE's QNLI dev file (sha256 ac19409d...f4fd) shuffled with seed 0: test = the first 1000,
validation = the next 1000, train = the other 3463 (runs take a prefix of train with task.train_limit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, required=True, help="a folder with qnli/dev.tsv")
    args = parser.parse_args()
    split = qnli_split(args.data_root / "qnli" / "dev.tsv")
    (HERE / "qnli_split.json").write_text(json.dumps(split) + "\n", encoding="utf-8")
    print({key: len(value) for key, value in split.items() if isinstance(value, list)})


if __name__ == "__main__":
    main()
