"""Files (issue #16): atomic writes get the mode an ordinary write would (the umask, not 0600);
exporting a checkpoint whose pickle would run code is refused before the code runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from patentgpt.io import atomic_open, atomic_write_json, atomic_write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    from patentgpt.config import load_config, save_config
    from patentgpt.train.config import PretrainConfig
    from tests.conftest import REPO

    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "report.json", {"ok": True})
        with atomic_open(tmp_path / "w.bin", "wb") as fh:
            fh.write(b"\0")
        save_config(load_config(PretrainConfig, REPO / "configs" / "pretrain" / "demo_dense.yaml"),
                    tmp_path / "config.yaml")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert mode(tmp_path / "plain.txt") == expected
    for name in ("a.txt", "report.json", "w.bin", "config.yaml"):
        assert mode(tmp_path / name) == expected, name


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path):
    import torch
    from transformers import LlamaConfig

    from patentgpt.config import ConfigError
    from patentgpt.train.checkpoint import COMPLETE, DS_TAG
    from patentgpt.train.export import export_checkpoint

    ckpt, marker = tmp_path / "step_00000002", tmp_path / "pwned"
    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(ckpt / "hf_config")
    (ckpt / DS_TAG).mkdir()
    torch.save({"module": {"model.embed_tokens.weight": torch.zeros(64, 16)}, "extra": _RunsCode(marker)},
               ckpt / DS_TAG / "mp_rank_00_model_states.pt")
    (ckpt / COMPLETE).write_text("")
    with pytest.raises(ConfigError, match="refusing to load .*mp_rank_00_model_states.pt.*needs posix.system") as err:
        export_checkpoint(ckpt, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert "arbitrary code" in str(err.value)
    assert torch.load is not None and torch.load.__module__.startswith("torch")  # the guard is undone
