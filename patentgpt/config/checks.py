"""Cheap checks of config values that would otherwise fail late, deep inside a library.

Each function raises :class:`~patentgpt.config.ConfigError` naming the key, and imports nothing
heavy, so a bad config exits 2 within a second instead of after DeepSpeed start-up with a
Hugging Face traceback about repo ids. The pure checks (names, deepspeed.extra; RoPE in patentgpt/model/rope.py) run in
the pretraining schema's validator; the filesystem checks (:func:`check_train_paths`) run
before ``--check`` prints and before training starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from patentgpt.config.base import ConfigError

# transformers' ROPE_INIT_FUNCTIONS keys plus "default" (tests/test_config_fuzz.py keeps them equal);
# importing transformers to ask would cost seconds.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what AutoTokenizer.from_pretrained reads
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_plain_name(value: str, key: str = "run.name") -> str:
    """A name used as one directory level: no path separators, no '..', not hidden, not empty."""
    if not value or not value.strip():
        raise ConfigError(f"{key}: must not be empty")
    if "/" in value or "\\" in value or value in (".", "..") or value.startswith(".") or "\0" in value:
        raise ConfigError(f"{key}: {value!r} must be a plain directory name (no '/', '\\\\', '..' or leading "
                          f"'.'): it is joined to the output directory and must not escape it")
    return value


def check_output_dir(path: str | os.PathLike, key: str = "run.output_dir") -> Path:
    """``path`` is a directory or can become one: neither it nor a parent is a regular file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == path else f"is under {p}, which is"
                raise ConfigError(f"{key}: {str(path)!r} {what} a regular file, not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}: cannot create or write {str(path)!r}: {p} is not writable")
            break
    return path


def check_deepspeed_extra(extra: dict[str, Any], *, micro_batch_size: int, grad_accum_steps: int | None,
                          global_batch_size: int | None, zero_stage: int, precision: str,
                          key: str = "deepspeed.extra") -> None:
    """``deepspeed.extra`` may add settings, not contradict the ones derived from ``train`` and
    ``deepspeed``: DeepSpeed would stop with an AssertionError after start-up."""
    derived = {
        "train_micro_batch_size_per_gpu": (micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (grad_accum_steps, "train.grad_accum_steps"),
        "train_batch_size": (global_batch_size, "train.global_batch_size"),
    }
    for name, (ours, source) in derived.items():
        if name not in extra:
            continue
        value = extra[name]
        if ours is None:
            raise ConfigError(f"{key}.{name}: batch sizes come from train.* (set {source} instead)")
        if value != ours:
            raise ConfigError(f"{key}.{name}: {value!r} contradicts {source} {ours}; set batch sizes in train.* only")
    zero = extra.get("zero_optimization")
    if isinstance(zero, dict) and "stage" in zero and zero["stage"] != zero_stage:
        raise ConfigError(f"{key}.zero_optimization.stage: {zero['stage']!r} contradicts deepspeed.zero_stage "
                          f"{zero_stage}")
    for name in ("bf16", "fp16"):
        section = extra.get(name)
        enabled = section.get("enabled") if isinstance(section, dict) else None
        if enabled is True and (name == "fp16" or precision != "bf16"):
            raise ConfigError(f"{key}.{name}.enabled: contradicts train.precision {precision!r}")


def check_tokenizer_dir(path: str | None, key: str = "data.tokenizer") -> Path:
    """An HF tokenizer directory (what ``AutoTokenizer.from_pretrained`` reads), not a repo id."""
    if not path or not str(path).strip():
        raise ConfigError(f"{key}: must name a tokenizer directory (got {path!r})")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key}: {str(p)!r} not found (a local HF tokenizer directory is expected; "
                          f"`patentgpt tokenizer merge` or `patentgpt demo` writes one)")
    if not p.is_dir():
        raise ConfigError(f"{key}: {str(p)!r} is a file; give the directory holding it "
                          f"(tokenizer.json / tokenizer_config.json)")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"{key}: {str(p)!r} is not a tokenizer directory (none of {', '.join(TOKENIZER_FILES)})")
    return p


def check_hf_model_dir(path: str | None, key: str = "model.init_from") -> Path:
    """An HF model directory: config.json and weights."""
    if path is None:
        raise ConfigError(f"{key}: must name a model directory")
    if not str(path).strip():
        raise ConfigError(f"{key}: empty; leave it out to train from scratch")
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{key}: {str(p)!r} " + ("is a file, not a model directory" if p.exists() else
                                                   "not found (a local HF model directory is expected)"))
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key}: {str(p)!r} is not an HF model directory (no config.json)")
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(f"{key}: {str(p)!r} has no weights ({' / '.join(WEIGHT_FILES)})")
    return p


def check_train_static(cfg) -> None:
    """The checks of a training config (any stage) that need no filesystem (run from its validator)."""
    check_plain_name(cfg.run.name, "run.name")
    from patentgpt.train.sequence_parallel import check_sequence_parallel

    check_sequence_parallel(cfg)
    t = cfg.train
    check_deepspeed_extra(cfg.deepspeed.extra, micro_batch_size=t.micro_batch_size, grad_accum_steps=t.grad_accum_steps,
                          global_batch_size=t.global_batch_size, zero_stage=cfg.deepspeed.zero_stage,
                          precision=t.precision)


def check_train_paths(cfg) -> None:
    """The filesystem checks of a training config, any stage (before ``--check`` prints, before
    start-up): output directory, tokenizer, ``model.init_from``, data files."""
    check_output_dir(cfg.run.output_dir)
    check_output_dir(Path(cfg.run.output_dir) / cfg.run.name, "run.name")
    if cfg.model.init_from is not None:
        check_hf_model_dir(cfg.model.init_from)
    if cfg.data.tokenizer is not None or cfg.model.init_from is None:
        check_tokenizer_dir(cfg.data.tokenizer)
    else:
        check_tokenizer_dir(cfg.model.init_from, "model.init_from (its tokenizer; or set data.tokenizer)")
    for src in getattr(cfg.data, "sources", None) or []:
        kind = Path(src.path)
        if not kind.exists():
            raise ConfigError(f"data.sources[{src.name}].path: {src.path} not found")
