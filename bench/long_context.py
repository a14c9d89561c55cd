"""Long-context training step (issue #10): tokens/s and peak memory of one training step (forward,
backward, AdamW) of a small LLaMA at 1k, 2k and 4k tokens, for

* ``causal``: plain causal packing (no position_ids: sdpa runs its ``is_causal`` kernel),
* ``causal_ckpt``: the same with activation checkpointing (``activation_checkpointing_enable``),
* ``doc_masked``: document masking (position_ids restarting per document: transformers builds a
  block-diagonal mask, which sdpa gets as a dense boolean mask on CPU).

Rows are packed real documents when the demo corpus is tokenized with the run's tokenizer; here the
document lengths are drawn like patents (log-normal, median ~600 tokens) over random token ids,
which is all the step's cost depends on. Peak memory: on GPU ``torch.cuda.max_memory_allocated``;
on CPU the peak process RSS (sampled every millisecond by a thread, psutil) above the RSS before
the step, and, exact on any device, the bytes autograd saves for the backward pass. Also runs the loader micro-benchmark (bench/loader_take.py) unless ``--no-loader``.

    python bench/long_context.py [--lengths 1024 2048 4096] [--repeats 3] [--no-loader]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from harness import compare, emit  # noqa: E402

from patentgpt.data.loader import segment_positions  # noqa: E402

VOCAB = 4096


class SavedActivations:
    """Bytes autograd keeps for the backward pass (tensors saved by the forward, each storage once):
    exact and deterministic, unlike RSS on CPU, where the allocator reuses freed memory."""

    def __enter__(self):
        self.storages: dict[int, int] = {}

        def pack(t):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                self.storages[st.data_ptr()] = st.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self.storages.values()) / 2**20


class PeakMemory:
    """Peak memory of a block above its start: CUDA allocator stats, or sampled process RSS."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak = interval, 0

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def model(ckpt: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
    m = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if ckpt:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    m.config.use_cache = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return m.to(device).train(), device


def packed_row(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, position ids restarting per document) of one row of patent-like document lengths."""
    rng = np.random.default_rng(seed)
    starts, at = [], 0
    while at < length:
        starts.append(at)
        at += max(16, int(rng.lognormal(np.log(600), 0.8)))
    ids = torch.from_numpy(rng.integers(3, VOCAB, size=(1, length)))
    return ids, torch.from_numpy(segment_positions(starts, length))[None]


def step_variant(m, device, length: int, masked: bool, memory: dict, saved: dict):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    ids, pos = packed_row(length, length)
    batch = {"input_ids": ids.to(device), "labels": ids.to(device)}
    if masked:
        batch["position_ids"] = pos.to(device)

    def run():
        with PeakMemory() as peak:
            t0 = time.perf_counter()
            with SavedActivations() as acts:
                loss = m(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        memory.setdefault(length, []).append(peak.mib)
        saved[length] = acts.mib
        return length, seconds
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-loader", action="store_true", help="skip the loader micro-benchmark")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    (plain, device), (ckpt, _) = model(False), model(True)
    results = {}
    for length in args.lengths:
        names = ("causal", "causal_ckpt", "doc_masked")
        memory, saved = {name: {} for name in names}, {name: {} for name in names}
        variants = {"causal": step_variant(plain, device, length, False, memory["causal"], saved["causal"]),
                    "causal_ckpt": step_variant(ckpt, device, length, False, memory["causal_ckpt"],
                                                saved["causal_ckpt"]),
                    "doc_masked": step_variant(plain, device, length, True, memory["doc_masked"],
                                               saved["doc_masked"])}
        res = compare(variants, baseline="causal", repeats=args.repeats, warmup=1, unit="tokens")
        # the warm-up round's peak is dropped like its time
        res["peak_memory_mib"] = {n: round(float(np.median(v[length][1:])), 1) for n, v in memory.items()}
        res["saved_activations_mib"] = {n: round(v[length], 1) for n, v in saved.items()}
        results[f"{length}_tokens"] = res
    extra = {"model": "LLaMA 4 layers, hidden 256, 8 heads (4 kv), sdpa; batch 1 x length; AdamW step",
             "memory": "CUDA max allocated" if device == "cuda" else "peak RSS above the step's start (psutil; "
                       "noisy: the allocator reuses freed memory)",
             "saved_activations": "bytes autograd saved for backward (exact)",
             "results": results}
    if not args.no_loader:
        out = subprocess.run([sys.executable, str(REPO / "bench" / "loader_take.py")], capture_output=True,
                             text=True, check=True)
        import json

        extra["loader_take"] = json.loads(out.stdout)["results"]
    emit({"bench": "long_context"}, extra=extra, out=args.out)


if __name__ == "__main__":
    main()
