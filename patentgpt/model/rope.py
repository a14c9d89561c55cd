"""RoPE settings of a model (``model.rope_theta``, ``model.rope_scaling``) and the transformers v5
``rope_parameters`` they resolve to.

Context extension (stage 2) is one of:

* ABF (adjusted base frequency): raise ``model.rope_theta``; ``rope_scaling`` absent or
  ``rope_type: default``.
* ``linear`` (position interpolation): positions are divided by ``factor``.
* ``yarn``: NTK-by-parts interpolation plus an attention temperature (``beta_fast``,
  ``beta_slow``, ``attention_factor``; transformers' defaults 32 / 1 / 0.1 ln(factor) + 1).
* ``dynamic`` (NTK): the base grows with the sequence length at run time beyond the original length.

``linear`` / ``yarn`` / ``dynamic`` need ``original_max_position_embeddings`` (the length the
model was trained at; transformers would silently default it to the new length, i.e. no scaling)
and a ``factor`` equal to ``max_position_embeddings / original_max_position_embeddings`` (left out:
derived from the two). Imports nothing heavy: it runs inside config validation.
"""

from __future__ import annotations

from pydantic import Field

from patentgpt.config.base import Section

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn")
SCALED = ("linear", "dynamic", "yarn")
YARN_ONLY = ("beta_fast", "beta_slow", "attention_factor")
FACTOR_RTOL = 0.01  # a factor within 1% of the length ratio is accepted (e.g. 4096 -> 16000 with 3.9)
ROPE_KEYS = ("rope_theta", "rope_scaling")  # set explicitly with model.init_from: replace the model's RoPE


class RopeScaling(Section):
    """``model.rope_scaling``: how RoPE stretches beyond the length the model was trained at."""

    rope_type: str = Field(..., description="default / linear (PI) / dynamic (NTK) / yarn")
    factor: float | None = Field(None, ge=1, description="max_position_embeddings / original_max_position_embeddings "
                                 "(default: that ratio)")
    original_max_position_embeddings: int | None = Field(None, ge=16, description="the length the model was "
                                                         "trained at before this extension")
    beta_fast: float | None = Field(None, gt=0, description="yarn: extrapolation boundary (transformers: 32)")
    beta_slow: float | None = Field(None, gt=0, description="yarn: interpolation boundary (transformers: 1)")
    attention_factor: float | None = Field(None, gt=0, description="yarn: cos/sin scale (transformers: "
                                           "0.1 ln(factor) + 1)")


def check_rope(model, key: str = "model") -> None:
    """Refuse incomplete or contradictory RoPE settings of ``model`` (a ModelSection), naming the key."""
    rs = model.rope_scaling
    if rs is None:
        return
    k = f"{key}.rope_scaling"
    if rs.rope_type not in SUPPORTED_ROPE_TYPES:
        from patentgpt.config.checks import ROPE_TYPES

        known = "is a transformers rope type not offered for training here" if rs.rope_type in ROPE_TYPES \
            else "unknown rope type"
        raise ValueError(f"{k}.rope_type: {rs.rope_type!r} {known} (one of {', '.join(SUPPORTED_ROPE_TYPES)})")
    for name in YARN_ONLY:
        if getattr(rs, name) is not None and rs.rope_type != "yarn":
            raise ValueError(f"{k}.{name}: applies to rope_type yarn only (this is {rs.rope_type!r})")
    if rs.rope_type == "default":
        for name in ("factor", "original_max_position_embeddings"):
            if getattr(rs, name) is not None:
                raise ValueError(f"{k}.{name}: rope_type default does not scale (ABF changes {key}.rope_theta); "
                                 f"use linear, dynamic or yarn, or leave it out")
        return
    orig = rs.original_max_position_embeddings
    if orig is None:
        raise ValueError(f"{k}.original_max_position_embeddings: required for rope_type {rs.rope_type!r} "
                         f"(the length the model was trained at, e.g. 4096; transformers would silently use "
                         f"{key}.max_position_embeddings, i.e. no scaling)")
    ratio = model.max_position_embeddings / orig
    if ratio < 1:
        raise ValueError(f"{k}.original_max_position_embeddings: {orig} exceeds {key}.max_position_embeddings "
                         f"{model.max_position_embeddings}; scaling extends the context")
    if rs.factor is not None and abs(rs.factor - ratio) > FACTOR_RTOL * ratio:
        raise ValueError(f"{k}.factor: {rs.factor:g} does not match {key}.max_position_embeddings / "
                         f"{k}.original_max_position_embeddings = {model.max_position_embeddings} / {orig} "
                         f"= {ratio:g}; set factor: {ratio:g} (or leave it out)")
    if rs.beta_fast is not None and rs.beta_slow is not None and rs.beta_fast <= rs.beta_slow:
        raise ValueError(f"{k}.beta_fast: {rs.beta_fast:g} must exceed beta_slow {rs.beta_slow:g}")


def rope_parameters(model) -> dict:
    """transformers v5 ``rope_parameters`` of ``model`` (a validated ModelSection)."""
    rs = model.rope_scaling
    params: dict = {"rope_type": "default", "rope_theta": float(model.rope_theta)}
    if rs is None or rs.rope_type == "default":
        return params
    orig = rs.original_max_position_embeddings
    params.update(rope_type=rs.rope_type, factor=float(rs.factor or model.max_position_embeddings / orig))
    if rs.rope_type == "yarn":
        params["original_max_position_embeddings"] = orig
        params.update({name: float(getattr(rs, name)) for name in YARN_ONLY if getattr(rs, name) is not None})
    return params


def hf_max_position_embeddings(model) -> int:
    """The ``max_position_embeddings`` the HF config gets. transformers' dynamic NTK reads it as the
    original length (no scaling up to it, the base grows beyond it), the other types as the new one."""
    rs = model.rope_scaling
    if rs is not None and rs.rope_type == "dynamic":
        return rs.original_max_position_embeddings
    return model.max_position_embeddings


def apply_rope(config, model) -> bool:
    """Put ``model``'s RoPE settings on a loaded HF ``config`` (``model.init_from``) when the run sets
    ``rope_theta`` / ``rope_scaling`` / ``max_position_embeddings`` explicitly; True if it changed."""
    explicit = model.model_fields_set
    changed = False
    if "max_position_embeddings" in explicit or "rope_scaling" in explicit:
        config.max_position_embeddings = hf_max_position_embeddings(model)
        changed = True
    if explicit & set(ROPE_KEYS):
        config.rope_parameters = rope_parameters(model)
        config.validate_rope()
        changed = True
    return changed
