"""Rollouts: batched generation by the actor (chat template, sampling settings from the config)
and the forwards that score it: the actor's own log-probs (recomputed by the training forward),
the frozen reference's log-probs, the critic's per-token values and the reward model's score.

Layout of a batch of sequences: ``[prompt, left-padded to P | response, right-padded to R]``.
The response token at column ``P + t`` is action ``t``; its log-prob and the critic's value of
the state before it come from the output at column ``P + t - 1``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from patentgpt.train.stages.ppo.losses import token_logprobs


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens (left padding does not shift them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask(response: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first stop token of each row (all of a row without one)."""
    is_stop = torch.isin(response, torch.tensor(stop_ids, dtype=response.dtype, device=response.device))
    after_stop = (is_stop.long().cumsum(-1) - is_stop.long()) > 0
    return (~after_stop).long()


def gather_ctx(module, zero3: bool):
    """Under ZeRO-3, the full parameters for the duration of a generate() call."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()))


@torch.no_grad()
def generate(module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
             temperature: float, top_p: float, pad_id: int, stop_ids: list[int], zero3: bool = False,
             return_logprobs: bool = False) -> dict[str, torch.Tensor]:
    """Sample responses: {"response" [B, R], "response_mask" [B, R]} (+ "gen_logprobs" of the
    sampled tokens under the generation's own logits / temperature, for checks)."""
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                               max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stop_ids,
                               repetition_penalty=1.0, use_cache=True, return_dict_in_generate=True,
                               output_logits=return_logprobs)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    with gather_ctx(module, zero3):
        out = module.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                              generation_config=gen_cfg)
    module.train(was_training)
    response = out.sequences[:, prompt_ids.shape[1]:].cpu()
    result = {"response": response, "response_mask": response_mask(response, stop_ids)}
    if return_logprobs:
        logits = torch.stack(out.logits, dim=1).cpu()
        result["gen_logprobs"] = token_logprobs(logits, response, temperature)
    return result


def sequence_inputs(prompt_ids, prompt_mask, response, resp_mask) -> dict[str, torch.Tensor]:
    ids = torch.cat([prompt_ids, response], dim=1)
    mask = torch.cat([prompt_mask, resp_mask], dim=1)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}


def action_logits(module, inputs: dict, prompt_len: int) -> torch.Tensor:
    """[B, R, V] logits that predict the response tokens."""
    device = next(module.parameters()).device
    out = module(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False)
    return out.logits[:, prompt_len - 1:-1]


def backbone_scores(module, inputs: dict) -> torch.Tensor:
    """A sequence-classification model's one-label head read at every position: [B, L].
    (The critic: a reward model's score head gives a value per token.)"""
    device = next(module.parameters()).device
    backbone = getattr(module, module.base_model_prefix)
    hidden = backbone(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).last_hidden_state
    return module.score(hidden).squeeze(-1).float()


def action_values(module, inputs: dict, prompt_len: int) -> torch.Tensor:
    """[B, R] critic values of the states before each response token."""
    return backbone_scores(module, inputs)[:, prompt_len - 1:-1]


@torch.no_grad()
def end_scores(module, inputs: dict) -> torch.Tensor:
    """[B] reward-model scores at each row's last attended token (right-padded rows)."""
    scores = backbone_scores(module, inputs)
    last = inputs["attention_mask"].sum(-1) - 1
    return scores[torch.arange(scores.shape[0]), last.to(scores.device)].cpu()


def chunk_seed(seed: int, iteration: int, chunk: int) -> int:
    """The torch seed of one generation chunk: the same chunk samples the same on any world size."""
    return int(np.random.SeedSequence([seed, iteration, chunk]).generate_state(1)[0])


def pad_cat(tensors: list[torch.Tensor], left: bool, value: int | float = 0) -> torch.Tensor:
    """Concatenate [b_i, w_i] tensors along rows, padding to the widest (on the left or right)."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)
        out.append(torch.cat([pad, t] if left else [t, pad], dim=1))
    return torch.cat(out, dim=0)
