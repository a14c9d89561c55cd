"""Export a training checkpoint (any ZeRO stage) to a transformers model directory.

Checkpoint files are pickles, and a checkpoint may come from someone else: every ``torch.load``
of an export (ours and DeepSpeed's ``zero_to_fp32``, which asks for ``weights_only=False``) runs
with ``weights_only=True`` and an allow-list of the few DeepSpeed classes its optimizer state
holds (:data:`DEEPSPEED_SAFE_GLOBALS`). A file that needs anything else is refused with
:class:`UnsafeCheckpointError` (exit 2) before any of its code can run.
"""

from __future__ import annotations

import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from patentgpt.config import ConfigError
from patentgpt.io import publish_dir
from patentgpt.train.checkpoint import COMPLETE, DS_TAG

# What DeepSpeed's ZeRO optimizer state pickles besides tensors and plain containers.
DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
)


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file that cannot be loaded without running arbitrary code."""


def _safe_globals() -> list:
    import importlib

    return [getattr(importlib.import_module(mod), name) for mod, name in DEEPSPEED_SAFE_GLOBALS]


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, ``torch.load`` always means ``weights_only=True`` (with the allow-list)."""
    original = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError:
            allowed = {f"{mod}.{name}" for mod, name in DEEPSPEED_SAFE_GLOBALS}
            try:
                unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(f) if g not in allowed]
            except Exception:  # noqa: BLE001 - only for the message
                unsafe = ["?"]
            raise UnsafeCheckpointError(
                f"refusing to load {f}: it holds more than weights and plain data (needs {', '.join(unsafe)}). "
                f"Loading it could "
                f"run arbitrary code; export only checkpoints you trust, with torch.load(..., weights_only=False) "
                f"yourself") from None

    torch.load = load
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    finally:
        torch.load = original


def consolidated_state_dict(ckpt: Path, tag: str = DS_TAG) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint directory written by this project (``tag``:
    the main engine's, or a further engine's such as PPO's ``critic``)."""
    ds_dir = ckpt / tag
    with weights_only_loads():
        from patentgpt.model.expert_parallel import expert_parallel_state_dict, is_expert_parallel_checkpoint

        if is_expert_parallel_checkpoint(ds_dir):  # DeepSpeed MoE: experts in per-expert files
            return expert_parallel_state_dict(ds_dir, torch.load)
        if list(ds_dir.glob("*optim_states.pt")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
        states = torch.load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu")
    return {k: v.float() for k, v in states["module"].items()}


def model_class(config):
    """The transformers class named by ``config.architectures`` (e.g. ``LlamaForCausalLM``, or
    ``LlamaForSequenceClassification`` for a reward model). Only transformers' own classes."""
    import transformers

    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"config names no transformers model class (architectures={names!r})")
    return cls


def load_exported(export_dir: str | Path, dtype=torch.float32):
    """An exported directory loaded with the class its config names (what the Auto classes pick)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(export_dir)
    return model_class(config).from_pretrained(export_dir, dtype=dtype)


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "fp32", tag: str = DS_TAG) -> Path:
    """Write ``out`` with safetensors weights, config and tokenizer; atomic. The model class is
    the one the checkpoint's config names (causal LM, or sequence classification for a reward model).
    ``tag``: a further engine of the stage (its config is ``hf_config_<tag>/``)."""
    from transformers import AutoConfig, AutoTokenizer

    ckpt, out = Path(ckpt), Path(out)
    if not (ckpt / COMPLETE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete PatentGPT checkpoint (no {COMPLETE} marker)")
    config = AutoConfig.from_pretrained(ckpt / ("hf_config" if tag == DS_TAG else f"hf_config_{tag}"))
    state = consolidated_state_dict(ckpt, tag)
    with torch.device("meta"):
        model = model_class(config)(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    if tied:
        model.tie_weights()
    model.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if (ckpt / "tokenizer").is_dir():
        AutoTokenizer.from_pretrained(ckpt / "tokenizer").save_pretrained(tmp)
    publish_dir(tmp, out)
    return out
