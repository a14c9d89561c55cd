"""The pipeline's steps. Each takes a :class:`StepContext` and writes into ``ctx.work_dir`` (the
step's temporary directory); the runner publishes it. Steps that pass documents on write
``docs.jsonl[.gz]``; every step keeps a :class:`~.report.Ledger` of what it took in, kept and
removed (``rejects.jsonl``).

Per-document steps (clean, lang, filter) and the stages of dedup run as partition tasks on the
run's executor (``num_proc`` local processes or Ray, :mod:`.executor`); each task writes its own
files and the driver joins them in partition order, so the output is the same for any executor,
worker count and partition size, and a killed step resumes from its finished partitions.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from patentgpt.data.pipeline.config import DataPipelineConfig, merged_filters
from patentgpt.data.pipeline.docstore import DOCS, JsonlWriter, count_lines, docs_path, dumps, iter_docs, iter_lines
from patentgpt.data.pipeline.parallel import chunked
from patentgpt.data.pipeline.partitions import PARTS, line_partitions, part_file, run_stage
from patentgpt.data.pipeline.report import Ledger, build_report, nrec

CHUNK_DOCS = 128


@dataclass
class StepContext:
    cfg: DataPipelineConfig
    name: str
    out_root: Path
    work_dir: Path
    input_docs: Path | None  # docs file of the latest step that produced documents
    step_stats: dict  # stats of the steps finished before this one (this run or an earlier one)
    ledger: Ledger | None = None
    extra: dict = field(default_factory=dict)
    wrote_docs: bool = False
    executor: object = None  # LocalExecutor | RayExecutor (executor.make_executor)
    memory: dict = field(default_factory=dict)  # stage -> peak memory summary (partitions.run_stage)

    @property
    def parts_dir(self) -> Path:
        return self.work_dir / PARTS

    def docs_writer(self) -> JsonlWriter:
        self.wrote_docs = True
        return JsonlWriter(self.work_dir / (DOCS + (".gz" if self.cfg.compress else "")))


# ------------------------------------------------------------------------------ per-document map
_WORKER: dict = {}


def _init_worker(step: str, cfg: DataPipelineConfig) -> None:
    _WORKER.clear()
    _WORKER["step"] = step
    if step == "clean":
        from patentgpt.data.pipeline.clean import Cleaner, clean_doc

        _WORKER["fn"] = Cleaner(cfg.clean)
        _WORKER["clean_doc"] = clean_doc
    elif step == "lang":
        from patentgpt.data.pipeline.langid import tag_doc

        _WORKER["cfg"] = cfg.lang
        _WORKER["tag_doc"] = tag_doc
    elif step == "filter":
        from patentgpt.data.pipeline.filters import DocFilter

        base = DocFilter(cfg.filters)
        _WORKER["filters"] = {s.name: (DocFilter(merged_filters(cfg.filters, s.filters)) if s.filters else base)
                              for s in cfg.sources}
        _WORKER["default"] = base


def _process_chunk(lines: list[str]) -> list[tuple]:
    """Per input line: ("keep", line, source, records, stat) or ("reject", doc, reason, detail, stat)."""
    step = _WORKER["step"]
    out = []
    for line in lines:
        doc = json.loads(line)
        if step == "clean":
            before = len(doc["text"])
            _WORKER["clean_doc"](doc, _WORKER["fn"])
            stat = before - len(doc["text"])
            if not doc["text"].strip():
                out.append(("reject", doc, "empty_after_clean", None, stat))
                continue
        elif step == "lang":
            _WORKER["tag_doc"](doc, _WORKER["cfg"])
            stat = doc["lang"]
            if doc["lang"] not in _WORKER["cfg"].keep:
                out.append(("reject", doc, "lang_not_kept", {"lang": doc["lang"]}, stat))
                continue
        else:  # filter
            flt = _WORKER["filters"].get(doc["source"], _WORKER["default"])
            decision = flt(doc["text"], doc["lang"])
            stat = decision.reason
            if not decision.keep:
                out.append(("reject", doc, decision.reason, decision.detail, stat))
                continue
            if decision.text is not None and decision.text != doc["text"]:
                doc["text"] = decision.text
                stat = "edited"
        out.append(("keep", dumps(doc), doc["source"], nrec(doc), stat))
    return out


def _map_partition(stage_dir: str, p: int, lines: list[str]) -> dict:
    """One partition of a per-document step: its kept lines, rejects and counts, written to files."""
    step = _WORKER["step"]
    ledger = Ledger(part_file(stage_dir, p, "rejects.jsonl"))
    stats: Counter = Counter()
    with JsonlWriter(part_file(stage_dir, p, "docs.jsonl")) as writer:
        for chunk in chunked(lines, CHUNK_DOCS):
            for item in _process_chunk(chunk):
                if item[0] == "keep":
                    _, line, source, n, stat = item
                    ledger.take(source, n)
                    ledger.keep(source, n)
                    writer.write_line(line)
                else:
                    _, doc, reason, detail, stat = item
                    ledger.take(doc["source"], nrec(doc))
                    ledger.reject_doc(doc, reason, **({"detail": detail} if detail else {}))
                if step == "clean":
                    stats["chars_removed"] += stat
                elif step == "lang":
                    stats[f"{item[2] if item[0] == 'keep' else item[1]['source']}:{stat}"] += 1
                elif stat == "edited":
                    stats["edited"] += 1
    ledger.close()
    return {"ledger": ledger.counts(), "stats": dict(stats)}


def map_docs_step(ctx: StepContext) -> Counter:
    """Run a per-document step over the input docs, a partition per task on the run's executor;
    the partitions are joined in order, so the output is the same for any executor and worker count."""
    stage_dir = ctx.parts_dir / "map"
    total = count_lines(ctx.input_docs)
    size = ctx.cfg.partition_docs
    results, memory = run_stage(ctx.executor, stage_dir, line_partitions(iter_lines(ctx.input_docs), size),
                                _map_partition, init=_init_worker, init_args=(ctx.name, ctx.cfg),
                                total=-(-total // size), desc=ctx.name)
    stats: Counter = Counter()
    with ctx.docs_writer() as writer:
        for p, res in enumerate(results):
            for line in iter_lines(part_file(stage_dir, p, "docs.jsonl")):
                writer.write_line(line)
            ctx.ledger.absorb(res["ledger"], part_file(stage_dir, p, "rejects.jsonl"))
            stats.update(res["stats"])
    ctx.memory["map"] = memory
    return stats


# ----------------------------------------------------------------------------------------- steps
def step_ingest(ctx: StepContext) -> None:
    from patentgpt.data.pipeline.ingest import run_ingest

    with ctx.docs_writer() as writer:
        ctx.extra.update(run_ingest(ctx.cfg, ctx.work_dir, ctx.ledger, writer, executor=ctx.executor,
                                    parts_dir=ctx.parts_dir))


def step_clean(ctx: StepContext) -> None:
    ctx.extra.update(map_docs_step(ctx))


def step_lang(ctx: StepContext) -> None:
    counts = map_docs_step(ctx)
    langs: dict = defaultdict(dict)
    for key, n in sorted(counts.items()):
        source, lang = key.rsplit(":", 1)
        langs[source][lang] = n
    ctx.extra["langs"] = dict(langs)


def step_filter(ctx: StepContext) -> None:
    ctx.extra.update(map_docs_step(ctx))


def step_dedup(ctx: StepContext) -> None:
    """Sharded deduplication (:mod:`.dedup`): signatures per partition, exact groups per hash
    bucket, LSH candidates per band-hash bucket, verification, components over verified pairs;
    then one streaming pass writes the survivors and rejects the rest naming their survivor."""
    from patentgpt.data.pipeline import dedup

    cfg = ctx.cfg
    seed = cfg.dedup.seed if cfg.dedup.seed is not None else cfg.seed
    t0 = time.perf_counter()
    total = count_lines(ctx.input_docs)
    size = cfg.partition_docs
    buckets = max(1, -(-total // cfg.dedup.bucket_docs))
    work = ctx.parts_dir
    parts = ((p, (p * size, lines)) for p, lines in line_partitions(iter_lines(ctx.input_docs), size))
    res, ctx.memory["sign"] = run_stage(ctx.executor, work / "sign", parts, dedup.sign_partition,
                                        init=dedup.init_sign_task,
                                        init_args=(cfg.dedup, seed, dedup.source_priorities(cfg), buckets),
                                        total=-(-total // size), desc="dedup signatures")
    t_sign = time.perf_counter() - t0
    layout = dedup.make_layout(cfg.dedup, [r["docs"] for r in res])
    result = dedup.decide(layout, cfg.dedup, ctx.executor, work)
    ctx.memory.update(result.memory)
    # last pass: stream the documents beside their keys and the (sorted) removal list
    rm = {int(i): k for k, i in enumerate(result.removed)}
    with ctx.docs_writer() as writer:
        keys = (json.loads(k) for p in range(len(res)) for k in iter_lines(work / "sign" / f"{p:05d}.keys.jsonl"))
        for i, (line, key) in enumerate(zip(iter_lines(ctx.input_docs), keys)):
            k = rm.get(i)
            if k is None:
                ctx.ledger.take(key[2], key[4])
                ctx.ledger.keep(key[2], key[4])
                writer.write_line(line)
                continue
            doc = json.loads(line)
            ctx.ledger.take(doc["source"], nrec(doc))
            extra = {"duplicate_of": dedup.describe(result.keys, int(result.survivor[k]))}
            if result.status[k] == 2:
                extra["jaccard"] = round(float(result.jaccard[k]), 4)
            ctx.ledger.reject_doc(doc, "exact_dup" if result.status[k] == 1 else "near_dup", **extra)
    with JsonlWriter(ctx.work_dir / "dedup_clusters.jsonl") as fh:
        for k, c in enumerate(result.clusters):
            row = {"cluster": k, "kind": c["kind"], "size": len(c["members"]),
                   "survivor": dedup.describe(result.keys, c["survivor"]),
                   "members": [dedup.describe(result.keys, m) for m in c["members"]]}
            if "jaccard" in c:
                for m, j in zip(row["members"], c["jaccard"]):
                    m["jaccard"] = j
            fh.write(row)
    ctx.extra.update(result.stats, buckets=buckets, seconds_signatures=round(t_sign, 3),
                     seconds_total=round(time.perf_counter() - t0, 3))


def step_rewrite(ctx: StepContext) -> None:
    """Optional LLM rewriting (:mod:`.rewrite`). Each output is matched to its original by
    ``meta.rewritten_from`` (else its ``id``): the first output of an original stands for the
    original's records, further ones (a rewrite kept beside its original) are additions that stand
    for no input record, so the record accounting still adds up."""
    if not getattr(ctx.cfg.rewrite, "enabled", False):
        ctx.extra["skipped"] = "disabled"
        return
    from patentgpt.data.pipeline.rewrite import RewriteStats, load_model, rewrite_documents

    rstats = RewriteStats()
    model, tokenizer = load_model(ctx.cfg.rewrite)
    written = added = 0
    with ctx.docs_writer() as writer:
        for chunk in chunked(iter_docs(ctx.input_docs), 1024):
            ids = {str(d["id"]) for d in chunk}
            produced: dict[str, list] = defaultdict(list)
            for out in rewrite_documents([dict(d) for d in chunk], ctx.cfg.rewrite, stats=rstats, model=model,
                                         tokenizer=tokenizer):
                origin = out.get("rewritten_from") or out.get("meta", {}).get("rewritten_from")
                origin = str(origin) if origin is not None and str(origin) in ids else str(out.get("id"))
                produced[origin].append(out)
            for doc in chunk:
                n = nrec(doc)
                ctx.ledger.take(doc["source"], n)
                ctx.ledger.keep(doc["source"], n)
                for j, out in enumerate(produced.pop(str(doc["id"]), None) or [doc]):
                    for key in ("source", "loc", "lang"):
                        out.setdefault(key, doc[key])
                    out["meta"] = dict(out.get("meta") or doc.get("meta", {}), records=n if j == 0 else 0)
                    writer.write(out)
                    written += 1
                    added += j > 0
            for leftovers in produced.values():  # outputs naming no input document: additions
                for out in leftovers:
                    out["meta"] = dict(out.get("meta") or {}, records=0)
                    writer.write(out)
                    written += 1
                    added += 1
    ctx.extra.update(docs_out=written, added=added, rewrite=rstats.as_dict())


def step_synth(ctx: StepContext) -> None:
    """Instruction data for SFT from the structured patents (:mod:`.synth`), as chat JSONL."""
    scfg = ctx.cfg.synth
    if not getattr(scfg, "enabled", False):
        ctx.extra["skipped"] = "disabled"
        return
    from patentgpt.data.pipeline.synth import SynthStats, load_qa_files, synthesize

    sstats = SynthStats()
    qa_sets = (load_qa_files(scfg.qa_files, base_dir=ctx.cfg.input_root, stats=sstats)
               if "qa" in scfg.tasks else None)
    counts: Counter = Counter()
    with JsonlWriter(ctx.work_dir / scfg.output_name) as fh:
        rows = synthesize(iter_docs(ctx.input_docs), tasks=list(scfg.tasks), seed=int(scfg.seed), qa_sets=qa_sets,
                          stats=sstats, max_per_task=scfg.max_per_task)
        for row in tqdm(rows, desc="synth", unit="ex", leave=False):
            fh.write(row)
            counts[f"{row.get('task')}:{row.get('lang')}"] += 1
    ctx.extra.update(output=scfg.output_name, examples=sum(counts.values()),
                     by_task_lang=dict(sorted(counts.items())), synth=sstats.as_dict())


def step_mixtures(ctx: StepContext) -> None:
    from patentgpt.data.pipeline.mixtures import build_entry, select, select_synth, write_mixture_yaml
    from patentgpt.data.shards import TokenizerInfo
    from patentgpt.tokenizer.hf import load_tokenizer

    cfg = ctx.cfg
    mcfg = cfg.mixtures
    tok_dir = str(Path(mcfg.tokenizer))
    info = TokenizerInfo.from_tokenizer(load_tokenizer(tok_dir), name=Path(tok_dir).resolve().name)
    synth_file = None
    if "synth" in ctx.step_stats and not ctx.step_stats["synth"].get("extra", {}).get("skipped"):
        synth_file = ctx.out_root / "synth" / ctx.step_stats["synth"]["extra"]["output"]
    stages = {}
    for stage, spec in mcfg.stages.items():
        stage_dir = ctx.work_dir / stage
        stage_dir.mkdir(parents=True)
        built = {}
        for entry in spec.sources:
            items = (x for gen in (select(ctx.input_docs, entry), select_synth(synth_file, entry)) for x in gen)
            built[entry.set_name] = build_entry(entry, items, stage_dir / entry.set_name, info, mcfg, tok_dir,
                                                cfg.num_proc, desc=f"tokenize {stage}/{entry.set_name}")
        mixture = write_mixture_yaml(stage_dir, stage, tok_dir, spec.sources, built, spec.description)
        for name, b in built.items():  # a length-bucketed set weighs what its bucket rows weigh together
            b["weight"] = sum(r["weight"] for r in mixture["sources"]
                              if r["name"] == name or r["path"].startswith(f"{name}/"))
        stages[stage] = built
    ctx.extra.update(tokenizer=info.name, vocab_size=info.vocab_size, stages=stages)


def step_card(ctx: StepContext) -> None:
    from patentgpt.data.pipeline.card import build_card

    report = build_report(ledgers(ctx.step_stats), [s.name for s in ctx.cfg.sources])
    mixtures_dir = ctx.out_root / "mixtures" if "mixtures" in ctx.step_stats else None
    card = build_card(name=ctx.cfg.name, report=report, step_stats=ctx.step_stats, docs_file=ctx.input_docs,
                      mixtures_dir=mixtures_dir, out_dir=ctx.work_dir, bins=ctx.cfg.card.bins)
    ctx.extra["images"] = card["images"]


STEPS = {
    "ingest": step_ingest,
    "clean": step_clean,
    "lang": step_lang,
    "filter": step_filter,
    "dedup": step_dedup,
    "rewrite": step_rewrite,
    "synth": step_synth,
    "mixtures": step_mixtures,
    "card": step_card,
}
# steps that account for records (their ledgers chain into report.json)
LEDGER_STEPS = ("ingest", "clean", "lang", "filter", "dedup", "rewrite")


def ledgers(step_stats: dict) -> dict:
    """The record ledgers of the steps that kept one, in step order."""
    return {k: v["ledger"] for k, v in step_stats.items() if v.get("ledger")}


def latest_docs(step_dir: Path) -> Path | None:
    try:
        return docs_path(step_dir)
    except FileNotFoundError:
        return None
