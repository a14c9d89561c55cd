"""Cross-encoder phrase matching (recipe phrase_cross): the export loads with CrossEncoder(DIR), the
task runner scores pairs with it, a few training steps on real pairs beat the untrained head, and
tasks that need embeddings refuse it with a clear message."""

import random

import numpy as np
import pytest

from patentgpt.config import ConfigError, load_config
from patentgpt.embed import metrics
from patentgpt.embed.evaluate import evaluate
from patentgpt.embed.cli import _model_specs
from patentgpt.embed.extract import (CrossEnsemble, CrossScorer, Embedder, default_model_dir, is_cross_encoder,
                                     load_scorer)
from patentgpt.embed.taskdef import find_tasks, load_task
from patentgpt.embed.tasks import run_task
from patentgpt.embed.train import EmbedTrainConfig, train, training_examples
from tests.conftest import REPO


@pytest.fixture(scope="module")
def untrained_cross(tmp_path_factory):
    """MiniLM with a fresh one-logit head, saved as a cross-encoder export (no training)."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("cross") / "untrained"
    CrossEncoder(str(default_model_dir()), num_labels=1, max_length=32, device="cpu").save(str(out))
    return out


def test_cross_encoder_export_is_detected_and_refused_by_embedding_tasks(untrained_cross, tmp_path):
    assert is_cross_encoder(untrained_cross) and not is_cross_encoder(default_model_dir())
    assert isinstance(load_scorer(untrained_cross), CrossScorer) and isinstance(load_scorer(None), Embedder)
    with pytest.raises(ConfigError, match="pooling: .* cross-encoder"):
        load_scorer(untrained_cross, pooling="mean")
    retrieval = load_task(find_tasks(["demo_retrieval"])[0])
    with pytest.raises(ConfigError, match="cross-encoder: it scores text pairs .* retrieval task demo_retrieval"):
        evaluate({"ce": {"model_dir": str(untrained_cross)}}, [retrieval], tmp_path, log=lambda *_: None)
    with pytest.raises(ConfigError, match="recipe phrase_cross needs a similarity task"):
        training_examples(load_config(EmbedTrainConfig, REPO / "configs/embed/phrase_cross.yaml",
                                      ["task=demo_retrieval", f"output_dir={tmp_path / 'x'}"]),
                          retrieval, random.Random(0))


@pytest.mark.shared_data
def test_cross_recipe_trains_on_real_pairs_and_scores_through_the_runner(shared_data, untrained_cross, tmp_path):
    """A short run (8 steps on 64 pairs) on a slice of the train split: the export loads with CrossEncoder,
    and on the slice it fits the gold scores clearly better than the untrained head."""
    from sentence_transformers.cross_encoder import CrossEncoder

    cfg = load_config(EmbedTrainConfig, REPO / "configs/embed/phrase_cross.yaml",
                      [f"output_dir={tmp_path / 'ce'}", "max_pairs=64", "epochs=2", "batch_size=16", "lr=2e-4",
                       "warmup_ratio=0.0", "max_seq_length=32", "evaluate=false"])
    task = load_task(find_tasks([cfg.task])[0], ["limit=64"])
    cols = training_examples(cfg, task, random.Random(cfg.seed))
    assert all(" [SEP] " in b for b in cols["sentence2"])        # the CPC title rides with the target
    summary = train(cfg)
    assert summary["examples"] == 64 and (tmp_path / "ce.train.json").is_file()
    assert [c["epoch"] for c in summary["dev_curve"]] == [1.0, 2.0]   # dev part scored at each epoch's end
    assert all(-1 <= c["pearson"] <= 1 and c["pearson"] != 0 for c in summary["dev_curve"])
    pairs, gold = list(zip(cols["sentence1"], cols["sentence2"])), np.array(cols["score"])
    tuned = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    fit = {name: metrics.pair_scores(m.predict(pairs, batch_size=64), gold)["pearson"]
           for name, m in (("untrained", CrossScorer(untrained_cross).model), ("tuned", tuned))}
    assert fit["tuned"] > max(fit["untrained"], 0.0) + 0.2, fit
    held_out = run_task(task, load_scorer(tmp_path / "ce"))
    assert held_out["status"] == "ok" and held_out["pooling"] == "cross-encoder"
    assert held_out["metrics"]["pairs"] == 64 and -1 <= held_out["headline"]["pearson"] <= 1


def test_one_label_on_several_cross_encoders_scores_with_their_mean(untrained_cross, tmp_path):
    """``--model ens=A --model ens=B``: one ensemble whose pair scores are the mean of A's and B's; an
    encoder (no pair head) in an ensemble is refused by name."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    torch.manual_seed(1)
    other = tmp_path / "other"
    CrossEncoder(str(default_model_dir()), num_labels=1, max_length=32, device="cpu").save(str(other))
    specs = _model_specs([f"ens={untrained_cross}", f"ens={other}", f"single={other}"], None)
    assert specs["ens"]["model_dir"] == [str(untrained_cross), str(other)]
    assert specs["single"]["model_dir"] == str(other)
    ens = load_scorer(specs["ens"]["model_dir"])
    assert isinstance(ens, CrossEnsemble) and isinstance(load_scorer([str(other)]), CrossScorer)
    pairs = [("abatement", "eliminating process"), ("abatement", "forest region"),
             ("acid absorption", "hydrochloric acid absorption")]
    members = [CrossScorer(d).score_pairs(pairs) for d in (untrained_cross, other)]
    assert not np.allclose(members[0], members[1])                     # two different heads...
    np.testing.assert_allclose(ens.score_pairs(pairs), (members[0] + members[1]) / 2, rtol=1e-5)   # ...averaged
    assert ens.pooling == "cross-encoder ensemble" and str(other) in ens.model_dir
    with pytest.raises(ConfigError, match=r"model: .* is not a cross-encoder export; an ensemble"):
        load_scorer([str(untrained_cross), str(default_model_dir())])
    with pytest.raises(ConfigError, match="pooling: an ensemble"):
        load_scorer([str(untrained_cross), str(other)], pooling="mean")
