"""Render the README's benchmark tables from the benchmarks' JSON in bench/results/.

    python bench/report.py            # print the markdown
    python bench/report.py --write    # replace the README blocks between the bench:train / bench:all markers
    python bench/report.py --check    # exit 1 when a README block differs from the JSON

The training table compares every variant of bench/train_throughput.py; the second block has one row
per comparison found in any other bench/results/*.json (every bench measures through harness.compare).

Only what the JSON says goes into the block: throughput (sum of work / sum of time), the per-round
ratio against the baseline as median (min-max), padding fractions, the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
START, END = "<!-- bench:train:start (bench/report.py --write) -->", "<!-- bench:train:end -->"
ALL_START, ALL_END = "<!-- bench:all:start (bench/report.py --write) -->", "<!-- bench:all:end -->"
LABELS = {
    "patentgpt": "PatentGPT (`patentgpt pretrain`, DeepSpeed)",
    "patentgpt_autocast": "PatentGPT, fp32 weights + `train.autocast` (bf16)",
    "patentgpt_compile": "PatentGPT with `train.compile` (`torch.compile`)",
    "patentgpt_autocast_compile": "PatentGPT, fp32 weights + `train.autocast` + `train.compile`",
    "trainer_packed": "HF `Trainer`, packed blocks (`group_texts`)",
    "trainer_packed_compile": "HF `Trainer`, packed blocks, `torch_compile=True`",
    "trainer_flatten": "HF `Trainer`, `DataCollatorWithFlattening`",
    "trainer_padded": "HF `Trainer`, padded to the longest",
    "torch_loop": "plain PyTorch loop, packed blocks",
}


def _ratio(r: dict | None) -> str:
    if not r:
        return "1 (baseline)"
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def train_table(docs: list[dict]) -> list[str]:
    """One row per variant, one column group per precision (the full comparison's mix)."""
    runs = {}
    for doc in docs:
        for key, run in doc["runs"].items():
            runs[key] = (run, doc)
    full = [(k, r, d) for k, (r, d) in runs.items() if len(r["variants"]) > 2]
    if not full:
        return []
    variants = [v for v in LABELS if any(v in r["variants"] for _, r, _ in full)]
    head = "| variant | " + " | ".join(f"{r['precision']} tokens/s | {r['precision']} vs {r['baseline']}"
                                       for _, r, _ in full) + " | padding (" + " / ".join(r["precision"] for _, r, _ in full) + ") |"
    lines = [head, "|" + "---|" * (2 * len(full) + 2)]
    for v in variants:
        cells = []
        for _, r, _ in full:
            if v in r["variants"]:
                cells += [f"{r['tokens_per_s'][v]:.0f}", _ratio(r["ratio_vs_baseline"].get(v))]
            else:
                cells += ["-", "-"]
        pads = [r["variants"][v]["padding_fraction"] for _, r, _ in full if v in r["variants"]]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " | " + " / ".join(f"{x:.0%}" for x in pads) + " |")
    lines.append("")
    for key, r, d in full:
        s = d["settings"]
        lines.append(f"- {key}: {r['data']} ({r['docs']} documents); seq {s['seq_len']} x batch {s['batch']}, "
                     f"{r['repeats']} rounds of {s['steps']} timed steps per process after {s['warmup_steps']} "
                     f"dropped; peak {r['peak']['peak_tflops']:.3f} TFLOP/s ({r['peak']['peak_source']}); "
                     f"machine: {d['machine']['cpu_count']} cores, {d['machine']['torch_threads']} torch threads, "
                     f"load {d['machine'].get('loadavg_1m_at_start')} at start; `{d['command']}`")
    useful = [(k, r) for k, (r, _) in runs.items() if "trainer_padded" in r["variants"] and "patentgpt" in r["variants"]]
    if useful:
        lines.append("")
        lines.append("| precision / mix | our tokens/s vs padded `Trainer`, per round | our useful tokens/s vs padded "
                     "`Trainer` (sums) | padded `Trainer` padding |")
        lines.append("|---|---|---|---|")
        for key, r in useful:
            rounds = [a / b for a, b in zip(r["per_round"]["patentgpt"], r["per_round"]["trainer_padded"])]
            per_round = {"median": statistics.median(rounds), "min": min(rounds), "max": max(rounds)}
            ratio = r["variants"]["patentgpt"]["useful_tokens_per_s"] / r["variants"]["trainer_padded"]["useful_tokens_per_s"]
            lines.append(f"| {key} | {_ratio(per_round)} | {ratio:.2f}x | "
                         f"{r['variants']['trainer_padded']['padding_fraction']:.0%} |")
    return lines


def render() -> str:
    docs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("train_throughput*.json"))]
    lines = train_table(docs)
    if not lines:
        return "(no bench/results/train_throughput*.json yet: run bench/train_throughput.py --out ...)"
    return "\n".join(lines)


def comparisons(node, path: tuple = ()):
    """(path, comparison) for every harness.compare result nested anywhere in a benchmark's JSON."""
    if isinstance(node, dict):
        if "ratio_vs_baseline" in node and "baseline" in node and "unit" in node:
            yield path, node
            return
        for k, v in node.items():
            yield from comparisons(v, (*path, str(k)))


def all_table() -> list[str]:
    """One row per comparison of every other benchmark's JSON: rate of each variant, ratio as median
    (min-max) over rounds; then the machine load and exact command of each file."""
    lines = ["| benchmark | comparison | unit/s: variant (baseline) | ratio vs baseline, median (min-max), rounds |",
             "|---|---|---|---|"]
    notes = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.name.startswith("train_throughput"):
            continue
        doc = json.loads(path.read_text())
        found = list(comparisons({k: v for k, v in doc.items() if k not in ("machine", "command")}))
        for where, c in found:
            rates = c.get(f"{c['unit']}_per_s", {})
            for name, r in c["ratio_vs_baseline"].items():
                rate = f"{rates[name]:.4g} ({rates[c['baseline']]:.4g})" if name in rates else "-"
                lines.append(f"| `{path.stem}` | {'/'.join(where) or '-'}: {name} vs {c['baseline']} | "
                             f"{c['unit']}: {rate} | {_ratio(r)}, {r['n']} |")
        if found:
            m = doc.get("machine", {})
            notes.append(f"- `{path.stem}`: {m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads, "
                         f"load {m.get('loadavg_1m_at_start')} at start; `{doc.get('command')}`")
    if not notes:
        return []
    return [*lines, "", *notes]


def block() -> str:
    return f"{START}\n{render()}\n{END}"


def all_block() -> str:
    lines = all_table()
    return f"{ALL_START}\n" + ("\n".join(lines) if lines else "(no other bench/results/*.json yet)") + f"\n{ALL_END}"


def readme_block(text: str, start: str = START, end: str = END) -> str | None:
    if start not in text or end not in text:
        return None
    return text[text.index(start):text.index(end) + len(end)]


BLOCKS = ((START, END, block), (ALL_START, ALL_END, all_block))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = README.read_text(encoding="utf-8")
    current = {start: readme_block(text, start, end) for start, end, _ in BLOCKS}
    if args.check:
        stale = [start for start, _, render_block in BLOCKS if current[start] != render_block()]
        if stale:
            print(f"README benchmark blocks {stale} differ from bench/results (run bench/report.py --write)",
                  file=sys.stderr)
            return 1
        return 0
    if args.write:
        missing = [start for start in current if current[start] is None]
        if missing:
            print(f"README has no {missing} block", file=sys.stderr)
            return 2
        from patentgpt.io import atomic_write_text

        for start, _, render_block in BLOCKS:
            text = text.replace(current[start], render_block())
        atomic_write_text(README, text)
        return 0
    print("\n\n".join(render_block() for _, _, render_block in BLOCKS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
