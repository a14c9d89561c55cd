"""Training FLOPs per token, MFU, and the device peak-FLOPs table.

FLOPs per token = 6 * (active matmul parameters) + 12 * layers * heads * head_dim * seq_len
(PaLM appendix B: forward + backward of every weight matmul, plus attention scores and
values counted over the full sequence). For a mixture of experts only the router and the
``experts_per_token`` experts a token visits count. Embedding lookups are not matmuls and
do not count; the LM head does.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' datasheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIE": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "A6000": 154.8,
    "L4": 121.0,
    "RTX 4090": 165.2,
    "MI300X": 1307.4,
}


def active_matmul_params(config) -> int:
    h = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o, k, v
    inter = config.intermediate_size
    experts = getattr(config, "num_local_experts", 0)
    if experts:
        mlp = h * experts + config.num_experts_per_tok * 3 * h * inter
    else:
        mlp = 3 * h * inter
    return layers * (attn + mlp) + h * config.vocab_size


def flops_per_token(config, seq_len: int) -> float:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 6.0 * active_matmul_params(config) + 12.0 * config.num_hidden_layers * heads * head_dim * seq_len


@dataclass(frozen=True)
class Peak:
    """The device peak MFU divides by: FLOP/s, where it came from, and for a measurement the spread
    of its samples (TFLOP/s)."""

    flops: float
    source: str
    spread_tflops: dict | None = None

    def record(self) -> dict:
        """What a run logs once at its start."""
        out = {"peak_tflops": self.flops / 1e12, "peak_source": self.source}
        if self.spread_tflops:
            out["peak_spread_tflops"] = self.spread_tflops
        return out


def run_peak(override_tflops: float | None = None, dtype=None) -> Peak:
    """The peak for MFU: ``logging.peak_tflops`` when set, the datasheet table on a known GPU, else
    a matmul measurement on this device (median of several samples; measured once per process)."""
    if override_tflops:
        return Peak(override_tflops * 1e12, "config")
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name().upper()
        for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
            if key in name:
                return Peak(PEAK_BF16_TFLOPS[key] * 1e12, f"table:{key}")
        where = name
    else:
        where = "cpu"
    stats = measure_matmul_flops(dtype)
    return Peak(stats["median"], f"measured:{where}:{str(dtype or torch.float32).removeprefix('torch.')}",
                {k: round(v / 1e12, 4) if k != "n" else v for k, v in stats.items()})


def device_peak_flops(dtype=None) -> tuple[float, str]:
    """(peak FLOP/s, where the figure came from) for the current device."""
    peak = run_peak(None, dtype)
    return peak.flops, peak.source


@functools.lru_cache(maxsize=None)
def _measure(dtype, sizes: tuple[int, ...], samples: int, min_seconds: float) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    mats = {n: (torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device))
            for n in sizes}
    reps = {}
    for n, (a, b) in mats.items():  # warm-up; size each sample to take about min_seconds
        sync()
        t0 = time.perf_counter()
        for _ in range(2):
            a @ b
        sync()
        reps[n] = max(1, math.ceil(min_seconds / max((time.perf_counter() - t0) / 2, 1e-9)))
    rates = []
    for i in range(samples):
        for n in (sizes if i % 2 == 0 else sizes[::-1]):  # sizes interleaved, like the benchmarks
            a, b = mats[n]
            sync()
            t0 = time.perf_counter()
            for _ in range(reps[n]):
                a @ b
            sync()
            rates.append(reps[n] * 2 * n**3 / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "n": len(rates)}


def measure_matmul_flops(dtype=None, sizes: tuple[int, ...] = (1024, 2048), samples: int = 5,
                         min_seconds: float = 0.25) -> dict:
    """FLOP/s of square matmuls on the current device: median, min and max over ``samples`` rounds of
    every size in ``sizes`` (each sample at least ``min_seconds`` of work). Cached per process."""
    import torch

    return _measure(dtype or torch.float32, tuple(sizes), samples, min_seconds)


def measure_matmul_peak(dtype=None, **kwargs) -> float:
    """Median FLOP/s of :func:`measure_matmul_flops`."""
    return measure_matmul_flops(dtype, **kwargs)["median"]
