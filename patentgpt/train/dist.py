"""Process-group set-up for DeepSpeed on GPU (nccl) or CPU (gloo), single process included."""

from __future__ import annotations

import os
import socket
import sys


# The rendezvous variables a launcher sets (and init_distributed sets for a plain process).
RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def env_without_rendezvous(env: dict | None = None) -> dict:
    """A copy of ``env`` (default: this process's) for launching another job: a process that
    trained in-process has RANK, MASTER_PORT... set, and a child inheriting them would try to
    join (or bind) this process's rendezvous port."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in RENDEZVOUS_ENV}


def venv_torch_extensions_dir(env: dict | None = None) -> str | None:
    """Point ``TORCH_EXTENSIONS_DIR`` at ``<venv>/torch_extensions`` unless the user set it.

    DeepSpeed JIT-builds its CPU shm comm op into torch's extension cache, by default one per
    user (~/.cache/torch_extensions); two checkouts with different venvs (different torch or
    DeepSpeed builds) then rebuild it on every alternate launch. Each venv gets its own cache
    instead. Outside a venv nothing changes. Returns the directory in effect (None: torch's default).
    Children (the ``deepspeed`` launcher's ranks, test subprocesses) inherit it through ``env``."""
    env = os.environ if env is None else env
    if env.get("TORCH_EXTENSIONS_DIR"):
        return env["TORCH_EXTENSIONS_DIR"]
    if sys.prefix == sys.base_prefix:
        return None
    env["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
    return env["TORCH_EXTENSIONS_DIR"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); works under the deepspeed launcher and as a plain process."""
    venv_torch_extensions_dir()  # before DeepSpeed builds its shm comm op
    import deepspeed
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), local_rank


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list) -> list[float]:
    """Sum a short list of floats or 0-d tensors over all ranks (float64 on CPU for gloo, on GPU for
    nccl); tensors are read back to the host once, together."""
    import torch
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not values:
        return []
    t = torch.stack([torch.as_tensor(v, device=device).detach().to(torch.float64).reshape(()) for v in values])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()
