"""Cross-encoder phrase matching (recipe phrase_cross): the export loads with CrossEncoder(DIR), the
task runner scores pairs with it, a few training steps on real pairs beat the untrained head, and
tasks that need embeddings refuse it with a clear message."""

import random

import numpy as np
import pytest

from patentgpt.config import ConfigError, load_config
from patentgpt.embed import metrics
from patentgpt.embed.evaluate import evaluate
from patentgpt.embed.report import write_task_report
from patentgpt.embed.cli import _model_specs
from patentgpt.embed.extract import (CrossScorer, Embedder, PairEnsemble, default_model_dir, is_cross_encoder,
                                     load_scorer)
from patentgpt.embed.taskdef import find_tasks, load_task, read_task_pairs
from patentgpt.embed.tasks import member_view, pair_predictions, run_task
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


def test_one_label_on_several_models_is_an_ensemble_and_bad_specs_are_refused(untrained_cross, tmp_path):
    """``--model ens=A --model ens=B@TASK``: one ensemble whose members are (dir, task); its pair scores are
    the mean of the members' z-scores, whatever their scale; bad ensemble specs are refused by name."""
    from scipy.stats import zscore

    specs = _model_specs([f"ens={untrained_cross}", "ens=minilm@phrase_matching_context", f"one={untrained_cross}"],
                         None)
    assert specs["ens"]["model_dir"] == [(str(untrained_cross), None), (None, "phrase_matching_context")]
    assert specs["one"]["model_dir"] == str(untrained_cross)
    with pytest.raises(ConfigError, match="'@phrase_matching_context' picks an ensemble member's task"):
        _model_specs([f"x={untrained_cross}@phrase_matching_context"], None)
    ens = load_scorer(specs["ens"]["model_dir"])
    assert isinstance(ens, PairEnsemble) and ens.pooling == "pair ensemble"
    assert [type(s) for s, _ in ens.members] == [CrossScorer, Embedder]
    assert ens.model_dir.endswith("@phrase_matching_context")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    # a cosine spreading 0.06 and a probability spreading 0.2 weigh the same: scale and offset do not matter
    np.testing.assert_allclose(PairEnsemble.combine([0.06 * a + 0.9, 0.2 * b + 0.4]), (zscore(a) + zscore(b)) / 2,
                               atol=1e-9)
    with pytest.raises(ConfigError, match="needs at least two members"):
        load_scorer([str(untrained_cross)])
    with pytest.raises(ConfigError, match="pooling: an ensemble"):
        load_scorer([str(untrained_cross), str(untrained_cross)], pooling="mean")
    retrieval = load_task(find_tasks(["demo_retrieval"])[0])
    with pytest.raises(ConfigError, match="is an ensemble: it scores text pairs .* retrieval task demo_retrieval"):
        run_task(retrieval, ens)


@pytest.mark.shared_data
def test_ensemble_members_read_pairs_with_their_own_task_templates(shared_data, untrained_cross, tmp_path):
    """Two cross-encoders on the sibling texts and MiniLM (cosine) on ``anchor [SEP] title`` texts: each
    member's figure in the ensemble's result is the one it gets alone on its own task, and the ensemble's
    Pearson is that of the mean of the members' z-scored pair scores."""
    import torch
    from scipy.stats import zscore
    from sentence_transformers.cross_encoder import CrossEncoder

    torch.manual_seed(1)
    other = tmp_path / "other"
    CrossEncoder(str(default_model_dir()), num_labels=1, max_length=32, device="cpu").save(str(other))
    task, own = (load_task(find_tasks([name])[0], ["limit=150"])
                 for name in ("phrase_matching_cross_siblings", "phrase_matching_context"))
    ens = load_scorer([str(untrained_cross), str(other), (None, "phrase_matching_context")])
    res = run_task(task, ens)
    alone = [run_task(task, load_scorer(d)) for d in (untrained_cross, other)] + [run_task(own, Embedder())]
    assert [m["task"] for m in res["members"]] == [task.name, task.name, own.name]
    assert [m["pearson"] for m in res["members"]] == pytest.approx([r["headline"]["pearson"] for r in alone],
                                                                 abs=1e-5)
    minilm_on_siblings = run_task(task, Embedder())["headline"]["pearson"]
    assert abs(minilm_on_siblings - res["members"][2]["pearson"]) > 0.01   # the member's own texts were used
    rows = [r for r in read_task_pairs(task)[0] if r["part"] == task.eval_part][:150]
    kw = {"batch_size": 32, "dim": None}
    views = [member_view(task, t, rows) for _, t in ens.members]
    mcfg = views[2][0]   # the encoder's view: its own task's templates and prefix over the scored task's data
    assert (mcfg.text_a, mcfg.text_b, mcfg.prefix) == (own.text_a, own.text_b, own.prefix)
    assert (mcfg.data, mcfg.split, mcfg.eval_part) == (task.data, task.split, task.eval_part)
    preds = [pair_predictions(mc, s, mr, kw) for (s, _), (mc, mr) in zip(ens.members, views)]
    gold = np.array([r["score"] for r in rows])
    expected = metrics.pair_scores(np.mean([zscore(p) for p in preds], axis=0), gold)["pearson"]
    assert res["headline"]["pearson"] == pytest.approx(expected, abs=1e-6)
    assert res["metrics"]["pairs"] == 150
    md = (write_task_report(tmp_path / "r", task.name, {"ens": res}) / "results.md").read_text()
    assert "| ensemble |" in md and md.count("| member ") == 3
    with pytest.raises(ConfigError, match="member task demo_retrieval is a retrieval task"):
        run_task(task, load_scorer([str(other), (None, "demo_retrieval")]))



@pytest.mark.shared_data
def test_blend_is_fitted_on_dev_and_applied_to_test(shared_data, untrained_cross, tmp_path):
    """Task phrase_matching_blend: the ensemble scores the test and the dev pairs; a least-squares fit on dev of
    [score, mean score of the anchor+context group, anchor == target] gives the test scores. Rebuilt here from
    the CSV with pandas and scikit-learn, the blended Pearson is the same; the figure before the blend is the
    plain sibling task's; a dev-scored run is left raw."""
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    blend_task = load_task(find_tasks(["phrase_matching_blend"])[0], ["limit=300"])
    plain = load_task(find_tasks(["phrase_matching_cross_siblings"])[0], ["limit=300"])
    ens = load_scorer([str(untrained_cross), (None, "phrase_matching_context")])
    res = run_task(blend_task, ens)
    assert res["before_blend"]["pearson"] == pytest.approx(run_task(plain, ens)["headline"]["pearson"], abs=1e-6)
    info = res["blend"]
    assert info["features"] == ["score", "group mean (anchor+context)", "same anchor and target"]
    assert info["dev_pairs"] == 300 and res["metrics"]["pairs"] == 300

    df = pd.read_csv(shared_data / "evals/patent_phrase_matching.csv")
    df["part"] = [plain.split.part(r, r["anchor"]) for r in df.to_dict("records")]
    kw = {"batch_size": 32, "dim": None}

    def frame(part):
        d = df[df["part"] == part].head(300).copy()
        rows = [r for r in read_task_pairs(plain)[0] if r["part"] == part][:300]
        assert list(d["label"]) == [r["score"] for r in rows]
        view = plain.model_copy(update={"eval_part": part})
        views = [member_view(view, t, rows) for _, t in ens.members]
        d["pred"] = PairEnsemble.combine([pair_predictions(mc, s, mr, kw) for (s, _), (mc, mr) in zip(ens.members, views)])
        d["gm"] = d.groupby(["anchor", "context"])["pred"].transform("mean")
        d["same"] = (d["anchor"].str.lower().str.split().str.join(" ")
                     == d["target"].str.lower().str.split().str.join(" ")).astype(float)
        return d

    dev, test = frame("dev"), frame("test")
    cols = ["pred", "gm", "same"]
    fit = LinearRegression().fit(dev[cols], dev["label"])
    assert info["coef"] == pytest.approx(list(fit.coef_), abs=1e-5)
    expected = metrics.pair_scores(fit.predict(test[cols]), test["label"])["pearson"]
    assert res["headline"]["pearson"] == pytest.approx(expected, abs=1e-6)
    md = (write_task_report(tmp_path / "r", blend_task.name, {"ens": res}) / "results.md").read_text()
    assert "| blended |" in md and "| before blend |" in md and "blend fitted on 300 dev pairs" in md
    dev_run = run_task(blend_task.model_copy(update={"eval_part": "dev"}), ens)
    assert "blend" not in dev_run   # choices on dev stay raw: the blend would be fitted on what it scores


def test_blend_config_errors_name_the_key(untrained_cross, tmp_path):
    base = load_task(find_tasks(["phrase_matching_blend"])[0])
    with pytest.raises(ConfigError, match="blend.same: name two columns"):
        load_task(find_tasks(["phrase_matching_blend"])[0], ["blend.same=[anchor]"])
    with pytest.raises(ConfigError, match="blend: fitted on the dev part .* no dev part"):
        load_task(find_tasks(["phrase_matching_blend"])[0], ["split.dev_fraction=0.0"])
    with pytest.raises(ConfigError, match="blend: fitted on the dev part .* is retrieval"):
        load_task(find_tasks(["demo_retrieval"])[0], ["blend={group_by: [anchor]}"])
    csv = tmp_path / "pairs.csv"
    csv.write_text("anchor,target,label\na,b,0.5\n")
    bad = base.model_copy(update={"data": [str(csv)], "siblings": None, "text_b": "{target}",
                                  "blend": base.blend.model_copy(update={"group_by": ["anchor", "context"]})})
    with pytest.raises(ConfigError, match="blend: column 'context' is not in"):
        read_task_pairs(bad)
    anchors = [f"a{i}" for i in range(200)]
    test_only = [a for a in anchors if base.split.part({"anchor": a}, a) == "test"]
    csv.write_text("anchor,target,label\n" + "".join(f"{a},t{a},0.5\n" for a in test_only))
    no_dev = bad.model_copy(update={"blend": base.blend.model_copy(update={"group_by": ["anchor"]})})
    assert {r["part"] for r in read_task_pairs(no_dev)[0]} == {"test"}
    with pytest.raises(ConfigError, match="blend: phrase_matching_blend has no dev pairs"):
        run_task(no_dev, load_scorer(untrained_cross))
