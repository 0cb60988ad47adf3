"""The calibration cache key: what the statistics really depend on, hashed from content, never names alone.

A key made of names (``task_source=files``, a Hub id) lets a run on a different training file or another copy of
a checkpoint silently reuse stale statistics. So the key holds a hash of the calibration batches exactly as the
engines see them, a fingerprint of the model (checkpoint files, or the recipe of a model built from a config), the
target modules and, added by the engines in :func:`astra.calibration.common.cache_file_for`, every statistics
option. Names stay in the key only as labels.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

HEAD_TAIL_BYTES = 1 << 20  # the first and last 1 MiB: safetensors/GGUF headers and the end of the data
CHUNK_BYTES = 64 << 10
N_CHUNKS = 7  # odd, so one chunk sits on the middle of the file
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".index.json")


def _plain(value: Any) -> Any:
    """A DictConfig / ListConfig as plain containers (JSON-friendly); anything else unchanged."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_data_digest(loader: Any) -> str:
    """sha256 of every calibration batch, in order: each tensor's name, shape and bytes.

    The batch boundaries are hashed too (LoRA-GA averages a per-batch mean loss, so the same rows in other batch
    sizes give other gradients), and the labels (LoRA-GA's loss reads them). Integers are hashed as int64 and
    floats as float64, so a dtype change that keeps the values keeps the key. The loader must be deterministic
    (the calibration loader does not shuffle): it is iterated once here and again by the engine.
    """
    digest = hashlib.sha256()
    for index, batch in enumerate(loader):
        if not isinstance(batch, Mapping):
            raise TypeError(f"calibration batch {index} is a {type(batch).__name__}, expected a mapping of tensors")
        digest.update(f"batch {index}\n".encode())
        for name in sorted(batch):
            value = batch[name]
            if not isinstance(value, torch.Tensor):
                continue
            fixed = torch.float64 if value.is_floating_point() else torch.int64
            value = value.detach().to("cpu", fixed).contiguous()
            digest.update(f"{name} {fixed} {list(value.shape)}\n".encode())
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def _sampled_sha256(path: Path, size: int) -> str:
    """sha256 of the first and last 1 MiB and ``N_CHUNKS`` evenly spaced 64 KiB chunks between them: a few MB
    read per file however large it is. A small file is hashed whole."""
    if size <= 2 * HEAD_TAIL_BYTES + N_CHUNKS * CHUNK_BYTES:
        return _file_sha256(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        middle = size - 2 * HEAD_TAIL_BYTES
        starts = [0]
        starts += [HEAD_TAIL_BYTES + (2 * i + 1) * middle // (2 * N_CHUNKS) - CHUNK_BYTES // 2 for i in range(N_CHUNKS)]
        for start in starts:
            handle.seek(start)
            digest.update(handle.read(HEAD_TAIL_BYTES if start == 0 else CHUNK_BYTES))
        handle.seek(size - HEAD_TAIL_BYTES)
        digest.update(handle.read(HEAD_TAIL_BYTES))
    return digest.hexdigest()


def checkpoint_fingerprint(directory: str | Path) -> dict[str, Any]:
    """config.json's full sha256 and, per weight file (name, size, sampled sha256), of a checkpoint directory.

    Independent of where the directory is, so an identical copy fingerprints the same. Symlinks (the Hugging
    Face cache's snapshot folders link to blobs) are followed."""
    directory = Path(directory)
    config = directory / "config.json"
    files = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            size = path.stat().st_size
            files.append({"name": path.name, "size": size, "sha256": _sampled_sha256(path, size)})
    return {"config_sha256": _file_sha256(config) if config.is_file() else None, "weights": files}


def _checkpoint_directory(model_cfg: Any) -> Path | None:
    """The local folder the checkpoint loads from (``model.path``, a converted GGUF copy, the Hub cache)."""
    from astra.models.sources import local_checkpoint_dir

    return local_checkpoint_dir(model_cfg)


def model_fingerprint(model_cfg: Any, seed: int, directory: str | Path | None = None) -> dict[str, Any]:
    """What the base model's weights are: checkpoint files, or the recipe of a model built from a config.

    ``directory`` overrides where a checkpoint (``model_cfg.hub_id`` set) is read from. A model built from a
    config (``hub_id`` null) is its architecture, dtype, seed and the tokenizer file (its size sets the vocab),
    plus the torch/transformers versions whose init code turns the seed into weights. A checkpoint's key has no
    seed: the seed does not change its weights.
    """
    from astra.models.build import TINY_TOKENIZER_FILE

    dtype = str(model_cfg.get("dtype"))
    if not model_cfg.get("hub_id"):
        import transformers

        return {
            "kind": "config",
            "architecture": _plain(model_cfg.get("architecture")),
            "dtype": dtype,
            "seed": int(seed),
            "tokenizer_sha256": _file_sha256(TINY_TOKENIZER_FILE),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
    location = Path(directory) if directory is not None else _checkpoint_directory(model_cfg)
    if location is None or not location.is_dir():
        # Nothing to fingerprint: a key that matches no other run, so stale statistics are never reused.
        hub_id = model_cfg.get("hub_id")
        log.warning("cannot locate checkpoint %s on disk; its calibration statistics will not be reused", hub_id)
        return {"kind": "checkpoint", "hub_id": hub_id, "unresolved": uuid.uuid4().hex}
    return {
        "kind": "checkpoint",
        "hub_id": model_cfg.get("hub_id"),
        "path": str(location.resolve()),
        "dtype": dtype,
        **checkpoint_fingerprint(location),
    }


def calibration_cache_identity(
    model_cfg: Any, seed: int, loader: Any, target_modules: Any, extra: dict | None = None
) -> dict[str, Any]:
    """The ``InitContext.cache_key`` of a run: model fingerprint, calibration data digest, target modules.

    ``extra`` holds labels (task name, source) kept for people reading the key; the hashes decide. The engines
    add their statistics options when they hash this (``cache_file_for``).
    """
    return {
        "model": model_fingerprint(model_cfg, seed),
        "data_sha256": calibration_data_digest(loader),
        "target_modules": list(_plain(target_modules)),
        "labels": {str(key): _plain(value) for key, value in (extra or {}).items()},
    }
