"""Render the README's benchmark table from the benchmarks' JSON in bench/results/.

    python bench/report.py            # print the markdown
    python bench/report.py --write    # replace the README block between the bench:train markers
    python bench/report.py --check    # exit 1 when the README block differs from the JSON

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
LABELS = {
    "patentgpt": "PatentGPT (`patentgpt pretrain`, DeepSpeed)",
    "patentgpt_autocast": "PatentGPT, fp32 weights + `train.autocast` (bf16)",
    "trainer_packed": "HF `Trainer`, packed blocks (`group_texts`)",
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


def block() -> str:
    return f"{START}\n{render()}\n{END}"


def readme_block(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text[text.index(START):text.index(END) + len(END)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = README.read_text(encoding="utf-8")
    current = readme_block(text)
    if args.check:
        if current != block():
            print("README benchmark block differs from bench/results (run bench/report.py --write)", file=sys.stderr)
            return 1
        return 0
    if args.write:
        if current is None:
            print(f"README has no {START} ... {END} block", file=sys.stderr)
            return 2
        from patentgpt.io import atomic_write_text

        atomic_write_text(README, text.replace(current, block()))
        return 0
    print(block())
    return 0


if __name__ == "__main__":
    sys.exit(main())
