"""Resume on another number of ranks under ZeRO-2 and ZeRO-3: DeepSpeed's universal checkpoint
(converted automatically when the saved world size differs) continues the run as an
uninterrupted one-process run with the same global batch would."""

import json
import sys

import pytest
import yaml

from tests.test_distributed import _launch
from tests.test_train import make_config, metrics

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5  # different reduction orders across ranks


@pytest.mark.parametrize("stage, before, after", [(2, 2, 1), (3, 1, 2)])
def test_resume_on_another_number_of_ranks(tmp_path, demo_shards, ip_tokenizer_dir, stage, before, after):
    from patentgpt.train.stages import run_stage

    common = ["train.max_steps=8", "optim.warmup_steps=2", f"deepspeed.zero_stage={stage}",
              "checkpoint.export_at_end=false", "checkpoint.every_steps=100"]
    full = run_stage("pretrain", make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", [*common, "run.name=full"]))
    cfg = make_config(tmp_path, demo_shards, ip_tokenizer_dir, "llama", [*common, "run.name=part"])
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))

    def launcher(ranks):
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"] if ranks == 2 else [sys.executable]

    _launch(launcher(before), cfg_path, "part", tmp_path, extra=["--set", "train.stop_at_step=4"])
    state = json.loads((tmp_path / "part" / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["world_size"] == before
    _launch(launcher(after), cfg_path, "part", tmp_path)
    assert (tmp_path / "part" / "checkpoints" / "step_00000004" / "ds_universal").is_dir()
    resumed = {r["step"]: r["loss"] for r in metrics(tmp_path / "part")}
    assert sorted(resumed) == list(range(1, 9))
    for step, loss in full["losses"]:
        assert abs(resumed[step] - loss) <= TOLERANCE, (step, resumed[step], loss)
