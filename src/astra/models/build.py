"""Model and tokenizer construction: tiny seeded models for offline work (LLaMA; BERT for GLUE), real checkpoints
from wherever ``astra.models.sources`` finds them, with the head the task family asks for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from astra.models.sources import resolve_model_location

log = logging.getLogger(__name__)

TINY_TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "assets" / "tiny_bpe_tokenizer.json"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_tiny_tokenizer(tokenizer_file: Path = TINY_TOKENIZER_FILE) -> PreTrainedTokenizerFast:
    if not Path(tokenizer_file).is_file():
        raise FileNotFoundError(
            f"tiny tokenizer file {tokenizer_file} is missing; rebuild it with "
            "`python -m astra.run.build_tokenizer`"
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **SPECIAL_TOKENS)
    tokenizer.padding_side = "right"
    return tokenizer


def load_tiny_encoder_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny BPE tokenizer with BERT's framing: ``<s> a </s>`` and ``<s> a </s> b </s>`` (segment ids 0/1), so a
    tiny encoder sees sentence pairs the way BERT sees ``[CLS] a [SEP] b [SEP]``."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = load_tiny_tokenizer()
    bos, eos = SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos)), (eos, tokenizer.convert_tokens_to_ids(eos))],
    )
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tokenizer


def build_llama_from_config(seed: int, dtype: torch.dtype = torch.float32, **config: Any) -> LlamaForCausalLM:
    """A randomly initialised LLaMA-architecture model; ``config`` are ``LlamaConfig`` fields."""
    llama_config = LlamaConfig(**config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config)
    return model.to(dtype)


def tiny_llama(seed: int = 0, vocab_size: int | None = None, **overrides: Any) -> LlamaForCausalLM:
    """The default test/offline model: LLaMA architecture, ~2M parameters, expanding MLP like LLaMA."""
    config = dict(
        vocab_size=vocab_size or len(load_tiny_tokenizer()),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    config.update(overrides)
    return build_llama_from_config(seed, **config)


def build_tokenizer(model_cfg: Any):
    """The tokenizer of a ``conf/model/*.yaml`` node (loaded before the data, which it tokenises)."""
    if is_pretrained(model_cfg):
        location = resolve_model_location(model_cfg)
        tokenizer = AutoTokenizer.from_pretrained(location)
        if tokenizer.pad_token is None:  # LLaMA ships without one; the reference code pads with EOS
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tiny_encoder_tokenizer() if model_kind(model_cfg) == "encoder" else load_tiny_tokenizer()


MODEL_KINDS = ("decoder", "encoder")
HEADS = ("causal_lm", "sequence_classification")


def is_pretrained(model_cfg: Any) -> bool:
    return bool(model_cfg.get("hub_id") or model_cfg.get("path") or model_cfg.get("package"))


def model_kind(model_cfg: Any) -> str:
    kind = model_cfg.get("kind", "decoder")
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind={kind!r} is not valid; expected one of {list(MODEL_KINDS)}")
    return kind


def head_class_and_kwargs(model_cfg: Any, head: dict) -> tuple[Any, dict]:
    """The transformers auto class for the task family's head, refusing a causal-LM task on an encoder."""
    kind = head.get("kind")
    if kind == "causal_lm":
        if model_kind(model_cfg) == "encoder":
            raise ValueError(
                f"model={model_cfg.name} is an encoder (model.kind=encoder) but this task trains a causal LM "
                "(next-token loss, generation); use a decoder model (tiny_llama, smollm2_135m, llama2_7b, llama3_8b)"
            )
        return AutoModelForCausalLM, {}
    if kind == "sequence_classification":
        return AutoModelForSequenceClassification, {"num_labels": int(head["num_labels"]),
                                                    "problem_type": head["problem_type"]}  # fmt: skip
    raise ValueError(f"model head {kind!r} is unknown; expected one of {list(HEADS)}")


def vocabulary_size(given: Any, tokenizer) -> int:
    """A built model's vocabulary: the tokenizer's, or ``model.architecture.vocab_size`` when given (a rehearsal at
    a real model's width, e.g. LLaMA-2's 32000 rows with the 2048-token test tokenizer; the extra rows are never
    read). Fewer rows than the tokenizer has tokens would fail at the first unseen id, so that is refused."""
    if given is None:
        return len(tokenizer)
    if not isinstance(given, int) or isinstance(given, bool) or given < len(tokenizer):
        raise ValueError(f"model.architecture.vocab_size={given!r} is not valid: expected an integer >= the "
                         f"tokenizer's {len(tokenizer)} tokens, or null for exactly the tokenizer's")
    return given


def build_model(model_cfg: Any, seed: int, tokenizer, head: dict | None = None):
    """The model of a ``conf/model/*.yaml`` node with the head the task family asks for (default: causal LM),
    in train mode. A new head (a classifier) is initialised from ``seed``."""
    dtype = resolve_dtype(model_cfg.dtype)
    auto_class, head_kwargs = head_class_and_kwargs(model_cfg, head or {"kind": "causal_lm"})
    if is_pretrained(model_cfg):
        location = resolve_model_location(model_cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto_class.from_pretrained(location, dtype=dtype, **head_kwargs)
    elif auto_class is AutoModelForCausalLM and model_cfg.architecture.get("model_type", "llama") == "llama":
        architecture = dict(model_cfg.architecture)
        vocab_size = vocabulary_size(architecture.pop("vocab_size", None), tokenizer)
        model = build_llama_from_config(seed=seed, dtype=dtype, vocab_size=vocab_size, **architecture)
    else:
        architecture = dict(model_cfg.architecture)
        vocab_size = vocabulary_size(architecture.pop("vocab_size", None), tokenizer)
        config = AutoConfig.for_model(architecture.pop("model_type", "llama"), vocab_size=vocab_size,
                                      **architecture, **head_kwargs)  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto_class.from_config(config)
        model = model.to(dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.train()  # from_pretrained returns eval mode; dropout must be live for training
    return model


def build_model_and_tokenizer(model_cfg: Any, seed: int, head: dict | None = None):
    """Build ``(model, tokenizer)`` from a ``conf/model/*.yaml`` node. The model is in train mode."""
    tokenizer = build_tokenizer(model_cfg)
    return build_model(model_cfg, seed, tokenizer, head), tokenizer
