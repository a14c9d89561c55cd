"""Export a training checkpoint (any ZeRO stage) to a transformers model directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from patentgpt.io import publish_dir
from patentgpt.train.checkpoint import COMPLETE, DS_TAG


def consolidated_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint directory written by this project.

    These files are our own (written by ``save_checkpoint``); DeepSpeed's format needs pickle.
    """
    ds_dir = ckpt / DS_TAG
    if list(ds_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=DS_TAG)
    states = torch.load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
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


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    """Write ``out`` with safetensors weights, config and tokenizer; atomic. The model class is
    the one the checkpoint's config names (causal LM, or sequence classification for a reward model)."""
    from transformers import AutoConfig, AutoTokenizer

    ckpt, out = Path(ckpt), Path(out)
    if not (ckpt / COMPLETE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete PatentGPT checkpoint (no {COMPLETE} marker)")
    config = AutoConfig.from_pretrained(ckpt / "hf_config")
    state = consolidated_state_dict(ckpt)
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
