"""Training FLOPs per token, MFU, and the device peak-FLOPs table.

FLOPs per token = 6 * (active matmul parameters) + 12 * layers * heads * head_dim * seq_len
(PaLM appendix B: forward + backward of every weight matmul, plus attention scores and
values counted over the full sequence). For a mixture of experts only the router and the
``experts_per_token`` experts a token visits count. Embedding lookups are not matmuls and
do not count; the LM head does.
"""

from __future__ import annotations

import time

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


def device_peak_flops(dtype=None) -> tuple[float, str]:
    """(peak FLOP/s, where the figure came from) for the current device."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name().upper()
        for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_BF16_TFLOPS[key] * 1e12, f"table:{key}"
        return measure_matmul_peak(dtype), f"measured:{name}"
    return measure_matmul_peak(dtype), "measured:cpu"


def measure_matmul_peak(dtype=None, n: int = 1024, seconds: float = 1.0) -> float:
    """Best observed FLOP/s of an n x n matmul on the current device."""
    import torch

    dtype = dtype or torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best
