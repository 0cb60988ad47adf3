"""Train the tiny model's byte-level BPE tokenizer from the shipped GSM8K training sample.

    python -m astra.run.build_tokenizer            # rewrites src/astra/assets/tiny_bpe_tokenizer.json
    python -m astra.run.build_tokenizer --out x.json

Byte-level, so any text encodes (no unknown tokens); deterministic, so the committed file is reproducible
(a test rebuilds it and compares).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from astra.data.sources import SAMPLES_DIR, read_rows
from astra.models.build import SPECIAL_TOKENS, TINY_TOKENIZER_FILE
from astra.tasks.math import gsm8k_example

VOCAB_SIZE = 2048


def training_texts() -> list[str]:
    rows = read_rows(SAMPLES_DIR / "gsm8k" / "train.jsonl")
    return [example.prompt + example.answer for example in map(gsm8k_example, rows)]


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [SPECIAL_TOKENS[key] for key in ("pad_token", "bos_token", "eos_token", "unk_token")]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts(), trainer=trainer)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_FILE)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
