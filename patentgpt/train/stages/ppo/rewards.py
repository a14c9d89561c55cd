"""Programmatic rewards: Python callables named in the config (``ppo.reward_fn``), added to the
reward model's score (``ppo.reward_fn_weight`` x value).

A reward function takes a :class:`Sample` and the keyword arguments of ``ppo.reward_fn_args``
and returns a float. Register one with ``@register("name")``, or name any importable function
as ``"package.module:function"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from patentgpt.config import ConfigError


@dataclass
class Sample:
    prompt: list[dict]  # the prompt conversation
    response: str  # decoded response (special tokens removed)
    response_ids: list[int]  # generated tokens up to and including the end-of-turn token
    answer: str | None = None  # the record's reference answer, when it has one
    finished: bool = True  # ended with an end-of-turn token (not cut at max_new_tokens)
    pieces: list[str] = field(default_factory=list)  # each response token decoded alone


REWARDS: dict[str, Callable[..., float]] = {}


def register(name: str):
    def wrap(fn):
        REWARDS[name] = fn
        return fn

    return wrap


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .。")


@register("exact_answer")
def exact_answer(s: Sample, contains: bool = False) -> float:
    """1 when the response is the reference answer (case and spacing aside; or contains it), else 0."""
    if not s.answer:
        return 0.0
    a, r = _norm(s.answer), _norm(s.response)
    return float(a in r if contains else a == r)


@register("format_regex")
def format_regex(s: Sample, pattern: str) -> float:
    """1 when the whole response matches ``pattern`` (Python regex), else 0."""
    return float(re.fullmatch(pattern, s.response.strip(), flags=re.S) is not None)


@register("length_target")
def length_target(s: Sample, target: int, finished_bonus: float = 0.0) -> float:
    """``-|tokens - target| / target`` (0 at the target), plus a bonus for ending the turn."""
    return -abs(len(s.response_ids) - target) / target + (finished_bonus if s.finished else 0.0)


@register("token_fraction")
def token_fraction(s: Sample, pattern: str) -> float:
    """Share of response tokens whose text matches ``pattern`` somewhere (e.g. CJK or digits)."""
    if not s.pieces:
        return 0.0
    rx = re.compile(pattern)
    return sum(1 for p in s.pieces if rx.search(p)) / len(s.pieces)


def resolve(name: str) -> Callable[..., float]:
    """The reward function ``name`` names; ConfigError naming ``ppo.reward_fn`` otherwise."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        import importlib

        module, attr = name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"ppo.reward_fn: cannot import {name!r}: {exc}") from None
        if callable(fn):
            return fn
    raise ConfigError(f"ppo.reward_fn: unknown reward {name!r}; known: {sorted(REWARDS)} or 'module:function'")
