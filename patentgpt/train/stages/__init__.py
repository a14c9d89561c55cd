"""Training stages on the shared core: pretraining, SFT, reward model, PPO. ``STAGES`` maps a stage
name to (config class path, stage class path, launch script), for the CLI and ``patentgpt ablate``."""

STAGES = {
    "pretrain": ("patentgpt.train.config:PretrainConfig", "patentgpt.train.stages.pretrain:PretrainStage",
                 "launch/pretrain.py"),
    "sft": ("patentgpt.train.config:SFTConfig", "patentgpt.train.stages.sft:SFTStage", "launch/sft.py"),
    "rm": ("patentgpt.train.config:RewardConfig", "patentgpt.train.stages.reward:RewardStage", "launch/reward.py"),
    "ppo": ("patentgpt.train.config:PPOConfig", "patentgpt.train.stages.ppo.stage:PPOStage", "launch/ppo.py"),
}


def _load(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def config_class(stage: str):
    return _load(STAGES[stage][0])


def stage_class(stage: str):
    return _load(STAGES[stage][1])


def run_stage(stage: str, cfg) -> dict:
    """Train ``cfg`` with the named stage on the core; returns the run summary."""
    from patentgpt.train.trainer import Trainer

    return Trainer(cfg, stage_class(stage)(cfg)).fit()
