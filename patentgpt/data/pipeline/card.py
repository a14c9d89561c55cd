"""Data card: what went in, what came out, and why — as ``data_card.md``, ``data_card.json`` and
length histograms (PNG, matplotlib's Agg backend, so no display is needed).

It reads what the other steps wrote: the record accounting (``report.json`` logic), the language
counts of the ``lang`` step, the dedup statistics, the final documents (character lengths per
language) and the shard sets of every stage (token lengths per set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patentgpt.data.pipeline.docstore import iter_docs
from patentgpt.data.shards import ShardSet
from patentgpt.io import atomic_write_json, atomic_write_text


def _hist(ax, values: dict[str, np.ndarray], bins: int, xlabel: str, title: str) -> None:
    data = {k: v[v > 0] for k, v in values.items() if len(v) and (v > 0).any()}
    if not data:
        ax.text(0.5, 0.5, "no documents", ha="center", va="center")
        ax.set_title(title)
        return
    lo = max(1, min(int(v.min()) for v in data.values()))
    hi = max(int(v.max()) for v in data.values())
    edges = np.logspace(np.log10(lo), np.log10(max(hi, lo + 1)), bins + 1)
    for name, v in sorted(data.items()):
        ax.hist(v, bins=edges, histtype="step", linewidth=1.5, label=f"{name} (n={len(v)})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    ax.set_title(title)
    ax.legend(fontsize=8)


def save_histogram(path: Path, values: dict[str, np.ndarray], bins: int, xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    _hist(ax, values, bins, xlabel, title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


LENGTH_BINS = (0, 256, 1024, 4096, 16384, 65536)


def _bin_label(k: int) -> str:
    lo = LENGTH_BINS[k]
    return f">={lo:,}" if k == len(LENGTH_BINS) - 1 else f"{lo:,}-{LENGTH_BINS[k + 1]:,}"


def length_distribution(stage_dir: Path) -> dict:
    """Documents and tokens of a stage's mixture by document length (token bins), as stored and
    as sampled: each shard set's tokens weighted by its share of the mixture weight."""
    import yaml

    mix = yaml.safe_load((stage_dir / "mixture.yaml").read_text(encoding="utf-8"))
    total_w = sum(r["weight"] for r in mix["sources"]) or 1.0
    n = len(LENGTH_BINS)
    docs, tokens, sampled = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    for r in mix["sources"]:
        lens = ShardSet(stage_dir / r["path"]).doc_lengths()
        k = np.searchsorted(LENGTH_BINS, lens, side="right") - 1
        d = np.bincount(k, minlength=n)
        t = np.bincount(k, weights=lens, minlength=n)
        docs += d
        tokens += t.astype(np.int64)
        if lens.sum():
            sampled += (r["weight"] / total_w) * t / lens.sum()
    stored = tokens / max(1, tokens.sum())
    return {"bins": [_bin_label(k) for k in range(n)], "docs": docs.tolist(), "tokens": tokens.tolist(),
            "stored_share": stored.tolist(), "sampled_share": sampled.tolist()}


def save_share_plot(path: Path, dist: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(dist["bins"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.bar(x - 0.2, dist["stored_share"], width=0.4, label="stored tokens")
    ax.bar(x + 0.2, dist["sampled_share"], width=0.4, label="sampled tokens (mixture weights)")
    ax.set_xticks(x, [f"{b}\n({d} docs)" for b, d in zip(dist["bins"], dist["docs"])], fontsize=7)
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("share of tokens")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def build_card(*, name: str, report: dict, step_stats: dict[str, dict], docs_file: Path | None,
               mixtures_dir: Path | None, out_dir: Path, bins: int) -> dict:
    """Write the card into ``out_dir``; returns its JSON content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    card: dict = {"name": name, "records": report, "images": {}}
    # final documents per source and language, with character lengths
    final: dict = {}
    chars_by_lang: dict[str, list] = {}
    if docs_file is not None:
        for doc in iter_docs(docs_file):
            row = final.setdefault(doc["source"], {}).setdefault(doc["lang"], {"docs": 0, "chars": 0})
            row["docs"] += 1
            row["chars"] += len(doc["text"])
            chars_by_lang.setdefault(doc["lang"], []).append(len(doc["text"]))
    card["final_documents"] = final
    if chars_by_lang:
        img = out_dir / "length_chars_by_lang.png"
        save_histogram(img, {k: np.asarray(v) for k, v in chars_by_lang.items()}, bins, "characters",
                       "Document length by language (after dedup)")
        card["images"]["chars_by_lang"] = img.name
    if "lang" in step_stats:
        card["languages"] = step_stats["lang"].get("extra", {}).get("langs", {})
    if "dedup" in step_stats:
        card["dedup"] = step_stats["dedup"].get("extra", {})
    stages = {}
    mix = step_stats.get("mixtures", {}).get("extra", {}).get("stages", {})
    card["length_distribution"] = {}
    for stage, sets in mix.items():
        lengths = {}
        for set_name, s in sets.items():
            path = mixtures_dir / stage / set_name if mixtures_dir is not None else None
            if path is not None and (path / "meta.json").is_file():
                lengths[set_name] = ShardSet(path).doc_lengths()
            elif path is not None and s.get("buckets"):  # one shard set per length bucket
                parts = [ShardSet(path / b).doc_lengths() for b in s["buckets"] if (path / b / "meta.json").is_file()]
                lengths[set_name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        img = out_dir / f"length_tokens_{stage}.png"
        save_histogram(img, lengths, bins, "tokens", f"Document length in tokens, {stage}")
        card["images"][f"tokens_{stage}"] = img.name
        stages[stage] = sets
        if mixtures_dir is not None and (mixtures_dir / stage / "mixture.yaml").is_file():
            dist = length_distribution(mixtures_dir / stage)
            card["length_distribution"][stage] = dist
            img = out_dir / f"length_share_{stage}.png"
            save_share_plot(img, dist, f"Tokens by document length, {stage}: stored vs sampled")
            card["images"][f"share_{stage}"] = img.name
    card["stages"] = stages
    atomic_write_json(out_dir / "data_card.json", card)
    atomic_write_text(out_dir / "data_card.md", render_markdown(card))
    return card


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(card: dict) -> str:
    rep = card["records"]
    out = [f"# Data card: {card['name']}", ""]
    out += ["## Records", "",
            f"Read {rep['total']['read']:,} records, kept {rep['total']['kept']:,}. Every record is kept or "
            "removed for exactly one reason (`report.json` checks that the numbers add up).", ""]
    reasons = sorted({r for s in rep["sources"].values() for r in s["removed"]})
    rows = [[src, s["read"], s["kept"], *[s["removed"].get(r, 0) for r in reasons]]
            for src, s in rep["sources"].items()]
    out += [_table(["source", "read", "kept", *reasons], rows), ""]
    if rep.get("file_issues"):
        out += ["Files that gave no records:", ""]
        out += [f"- `{f['path']}`: {f['reason']} {f.get('detail', '')}" for f in rep["file_issues"]]
        out.append("")
    if rep.get("removed_by_step"):
        out += ["Removals by step:", ""]
        out += [_table(["step", "removed"], [[k, ", ".join(f"{r} {n}" for r, n in v.items()) or "-"]
                                            for k, v in rep["removed_by_step"].items()]), ""]
    if card.get("final_documents"):
        out += ["## Documents after deduplication", ""]
        rows = [[src, lang, v["docs"], v["chars"]] for src, langs in card["final_documents"].items()
                for lang, v in sorted(langs.items())]
        out += [_table(["source", "language", "documents", "characters"], rows), ""]
        if "chars_by_lang" in card["images"]:
            out += [f"![lengths]({card['images']['chars_by_lang']})", ""]
    if card.get("dedup"):
        d = card["dedup"]
        out += ["## Deduplication", "",
                ", ".join(f"{k}: {v}" for k, v in d.items() if not isinstance(v, (dict, list))), ""]
    for stage, sets in card.get("stages", {}).items():
        out += [f"## Stage `{stage}`", ""]
        rows = []
        for name, s in sets.items():
            langs = ", ".join(f"{lang} {v['tokens']:,}" for lang, v in sorted(s["by_lang"].items()))
            weight = "per length bucket" if s.get("buckets") else s.get("weight", "")
            rows.append([name, s["docs"], f"{s['tokens']:,}", weight, langs])
        out += [_table(["shard set", "documents", "tokens", "weight", "tokens by language"], rows), ""]
        aside = [f"{name}: " + ", ".join(f"{r} {n:,}" for r, n in sorted(s["set_aside"].items()))
                 for name, s in sets.items() if s.get("set_aside")]
        if aside:
            out += ["Documents of these sources that the stage does not take, by reason: " + "; ".join(aside), ""]
        brows = [[f"{name}/{b}", f"{v['min_tokens']:,}" + (f"-{v['max_tokens']:,}" if v["max_tokens"] else "+"),
                  v["weight"] if v["stored"] else "0 (set aside)", v["docs"], f"{v['tokens']:,}"]
                 for name, s in sets.items() for b, v in s.get("buckets", {}).items()]
        if brows:
            out += ["Length buckets (a token of a bucket is sampled `weight` times as often as one of `len0`):", "",
                    _table(["bucket", "tokens per document", "weight", "documents", "tokens"], brows), ""]
        img = card["images"].get(f"tokens_{stage}")
        if img:
            out += [f"![{stage} lengths]({img})", ""]
        dist = card.get("length_distribution", {}).get(stage)
        if dist:
            out += ["Length distribution (tokens per document): stored, and as sampled with the mixture weights", "",
                    _table(["length", "documents", "tokens", "stored share", "sampled share"],
                           [[b, d, f"{t:,}", f"{st:.1%}", f"{sa:.1%}"] for b, d, t, st, sa in
                            zip(dist["bins"], dist["docs"], dist["tokens"], dist["stored_share"],
                                dist["sampled_share"])]), ""]
            out += [f"![{stage} token share by length]({card['images'][f'share_{stage}']})", ""]
    return "\n".join(out) + "\n"
