import pytest

from patentgpt.ablate import plan
from patentgpt.cli import main
from patentgpt.config import ConfigError
from tests.conftest import REPO

SWEEP = REPO / "configs" / "ablations" / "moe_vs_dense.yaml"


def test_dry_run_lists_every_run(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["ablate", str(SWEEP), "--dry-run"]) == 0
    out = capsys.readouterr().out
    names = [ln for ln in out.splitlines() if ln.startswith("moe-vs-dense-")]
    assert len(names) == 4
    assert "moe-vs-dense-moe-lr=0.002" in names
    assert "launch/pretrain.py --config configs/pretrain/demo_moe.yaml" in out
    assert "--set logging.wandb.group=moe-vs-dense" in out


def test_emit_prints_launch_commands_only(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.read_text().replace("launcher: python", 'launcher: "deepspeed --num_gpus 8"')
                     .replace("../pretrain/", str(REPO / "configs" / "pretrain") + "/"))
    assert main(["ablate", str(sweep), "--emit"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("deepspeed --num_gpus 8 launch/pretrain.py") for ln in lines)


def test_bad_grid_value_is_caught_before_any_run(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"group: g\nbase: {REPO / 'configs/pretrain/demo_dense.yaml'}\n"
                     "grid:\n  model.num_heads: [6, 5]\n")
    with pytest.raises(ConfigError, match="g-base-num_heads=5"):
        plan(sweep)


def test_sft_sweep_uses_the_sft_launcher_and_validates_sft_keys(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["ablate", str(REPO / "configs" / "ablations" / "sft_packing.yaml"), "--emit"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("launch/sft.py --config configs/sft/demo.yaml" in ln for ln in lines)
    assert sum("data.packing=False" in ln for ln in lines) == 2
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"group: g\nstage: sft\nbase: {REPO / 'configs/sft/demo.yaml'}\ngrid:\n  data.packin: [true]\n")
    with pytest.raises(ConfigError, match="data.packin"):
        plan(sweep)
    sweep.write_text(f"group: g\nstage: dpo\nbase: {REPO / 'configs/sft/demo.yaml'}\n")
    with pytest.raises(ConfigError, match="'dpo' is not a stage"):
        plan(sweep)
