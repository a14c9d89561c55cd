"""Long-context evaluation: passkey retrieval over lengths x depths and perplexity by position.

    patentgpt eval long-context --model runs/stage2/export --out runs/eval/lc
    patentgpt eval long-context --model runs/stage1/export --out runs/eval/lc-yarn \\
        --rope yarn --factor 4 --original-length 256 --lengths 256,512,1024
    patentgpt eval long-context --compare runs/eval/lc-* --out runs/eval/lc-compare

Task files live in ``evals/long_context/`` (``type: passkey`` or ``type: position_ppl``).

*Passkey*: real patent text as filler, a random ``digits``-digit key in a sentence placed at a
depth (0 = right after the intro, 1 = right before the question) of a prompt of exactly
``length`` tokens, ending "The pass key is". Scoring is by likelihood: the key's log-likelihood
against ``distractors`` other random keys of the same length, scored in one pass over the shared
context (:class:`patentgpt.eval.lm.PatentLM`). Small demo models almost never *generate* a 5-digit
key exactly, so greedy accuracy is flat at 0 and says nothing about where in the context they
fail; the likelihood ranking has a known chance level (1/(1+distractors)) and moves as soon as a
model copies from its context. The greedy hit (would greedy decoding produce exactly the key's
tokens) is reported beside it.

*Position perplexity*: long held-out documents cut into windows of ``length`` tokens; the loss of
each predicted token is binned by its position in the window (buckets such as 0-256, 256-1024).

``--rope`` applies a RoPE scaling at inference (``rope_parameters`` of the model's config is
overridden before the weights load), so a stage-1 model can be read zero-shot at a longer length
with ABF (a larger base), PI (``linear``), YaRN or dynamic NTK.

Writes ``long_context.json``, ``long_context.md``, ``passkey.png`` and ``position_ppl.png``
(atomically) into ``--out``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from patentgpt.config import ConfigError, Section, load_config
from patentgpt.eval.tasks import EVALS_DIR, REPO, SHARED_PREFIX, shared_data_dir
from patentgpt.io import atomic_open, atomic_write_json, atomic_write_text

LC_DIR = EVALS_DIR / "long_context"
TEXT_FIELDS = ["title", "abstract", "claims", "description", "description_paragraphs", "text"]


# ------------------------------------------------------------------------------------- configs
class TextSource(Section):
    path: str = Field(..., description="JSONL file, relative to the repository root (../shared/data/... allowed)")
    fields: list[str] = Field(default_factory=lambda: list(TEXT_FIELDS), min_length=1,
                              description="record fields joined (in this order) into the document text")


class PasskeyTask(Section):
    name: str
    description: str = ""
    type: Literal["passkey"]
    filler: list[TextSource] = Field(..., min_length=1)
    fallback: list[TextSource] = Field(default_factory=list, description="used when no filler file exists")
    lengths: list[int] = Field(default_factory=lambda: [256, 512, 1024], min_length=1)
    depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    trials: int = Field(8, ge=1)
    digits: int = Field(5, ge=1, le=12)
    distractors: int = Field(9, ge=1)
    seed: int = 1234
    intro: str = ""
    needle: str = Field(..., description="contains {key} at least once")
    question: str

    @model_validator(mode="after")
    def _check(self):
        if "{key}" not in self.needle:
            raise ValueError("needle: must contain {key}")
        bad = [d for d in self.depths if not 0.0 <= d <= 1.0]
        if bad:
            raise ValueError(f"depths: {bad} outside [0, 1]")
        if any(n < 16 for n in self.lengths):
            raise ValueError("lengths: every length must be at least 16 tokens")
        if 10 ** self.digits - 10 ** (self.digits - 1) < self.distractors + 1:
            raise ValueError("distractors: more than there are keys of this many digits")
        return self


class PositionPplTask(Section):
    name: str
    description: str = ""
    type: Literal["position_ppl"]
    data: list[TextSource] = Field(..., min_length=1)
    fallback: list[TextSource] = Field(default_factory=list)
    length: int = Field(1024, ge=8, description="window length in tokens")
    buckets: list[int] | None = Field(None, description="position boundaries starting at 0 (default powers of two)")
    max_docs: int = Field(16, ge=1)
    windows_per_doc: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.buckets is not None:
            b = self.buckets
            if len(b) < 2 or b[0] != 0 or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(f"buckets: {b} must start at 0 and increase")
        return self


class RopeOverride(Section):
    """A RoPE scaling applied at inference; ``type`` none keeps the model's own."""

    type: Literal["none", "abf", "linear", "yarn", "dynamic"] = "none"
    factor: float | None = Field(None, ge=1.0)
    original_length: int | None = Field(None, ge=16, description="the length the model was trained at")
    rope_theta: float | None = Field(None, gt=0, description="abf: the new base (default: NTK-aware from factor)")

    @model_validator(mode="after")
    def _check(self):
        if self.type in ("linear", "yarn", "dynamic") and self.factor is None:
            raise ValueError(f"factor: required by rope type {self.type}")
        if self.type in ("linear", "yarn", "dynamic") and self.original_length is None:
            raise ValueError(f"original_length: required by rope type {self.type} (the training length; "
                             "transformers would silently take max_position_embeddings)")
        if self.type == "abf" and self.rope_theta is None and self.factor is None:
            raise ValueError("rope_theta: abf needs rope_theta (or factor, for the NTK-aware base)")
        return self

    @property
    def label(self) -> str:
        if self.type == "none":
            return "none"
        if self.type == "abf":
            return f"abf(theta={self.rope_theta:g})" if self.rope_theta else f"abf(x{self.factor:g})"
        return f"{self.type}(x{self.factor:g})"


class LongContextConfig(Section):
    model: str | None = Field(None, description="HF model directory")
    tokenizer: str | None = Field(None, description="default: the model directory's tokenizer")
    out: str = "runs/eval/long_context"
    tasks: list[str] = Field(default_factory=lambda: ["passkey", "position_ppl"], min_length=1)
    lengths: list[int] | None = Field(None, description="passkey lengths; position_ppl uses the largest as window")
    depths: list[float] | None = None
    trials: int | None = Field(None, ge=1)
    buckets: list[int] | None = None
    max_docs: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    rope: RopeOverride = Field(default_factory=RopeOverride)
    compare: list[str] = Field(default_factory=list, description="result directories to tabulate side by side")


# ----------------------------------------------------------------------------------- loading
def resolve_lc_task(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    path = LC_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(q.stem for q in LC_DIR.glob("*.yaml"))
        raise ConfigError(f"tasks: unknown long-context task {name!r}; known: {', '.join(known)}")
    return path


def load_lc_task(name: str) -> PasskeyTask | PositionPplTask:
    import yaml

    path = resolve_lc_task(name)
    kind = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("type")
    cls = {"passkey": PasskeyTask, "position_ppl": PositionPplTask}.get(kind)
    if cls is None:
        raise ConfigError(f"type: {path} has type {kind!r}; long-context tasks are passkey or position_ppl")
    return load_config(cls, path)


def _source_path(src: TextSource) -> Path:
    if src.path.startswith(SHARED_PREFIX):
        return shared_data_dir() / src.path[len(SHARED_PREFIX):]
    p = Path(src.path)
    return p if p.is_absolute() else REPO / p


def _record_text(rec: dict, fields: list[str]) -> str:
    parts = []
    for f in fields:
        v = rec.get(f)
        if isinstance(v, list):
            v = "\n".join(str(x) for x in v if x)
        if isinstance(v, str) and v.strip():
            parts.append(v.strip())
    return "\n\n".join(parts)


def read_documents(sources: list[TextSource], fallback: list[TextSource]) -> tuple[list[str], list[str], dict]:
    """Texts of the first source list whose files exist (else the fallback); skipped lines counted."""
    chosen = [s for s in sources if _source_path(s).is_file()] or [s for s in fallback if _source_path(s).is_file()]
    if not chosen:
        raise FileNotFoundError(f"no data file found among {[s.path for s in sources + fallback]}")
    texts, skipped = [], {"malformed_json": 0, "no_text": 0}
    for src in chosen:
        with open(_source_path(src), encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    skipped["malformed_json"] += 1
                    continue
                text = _record_text(rec, src.fields) if isinstance(rec, dict) else ""
                if not text:
                    skipped["no_text"] += 1
                    continue
                texts.append(text)
    return texts, [s.path for s in chosen], skipped


def rope_settings(config, rope: RopeOverride, target_length: int):
    """``rope`` as the model settings of patentgpt/model/rope.py (validated there, as for training):
    an object with ``rope_theta``, ``rope_scaling`` and ``max_position_embeddings``."""
    from types import SimpleNamespace

    from patentgpt.model.rope import RopeScaling, check_rope

    base = dict(getattr(config, "rope_parameters", None) or {})
    theta = float(base.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    if rope.type == "abf":
        if rope.rope_theta is None:  # NTK-aware: the base that stretches the lowest frequency by factor
            dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            theta = theta * rope.factor ** (dim / (dim - 2))
        else:
            theta = rope.rope_theta
        return SimpleNamespace(rope_theta=theta, rope_scaling=None,
                               max_position_embeddings=max(int(config.max_position_embeddings), target_length))
    # the factor must match the longest evaluated length / the training length (checked by check_rope)
    spec = SimpleNamespace(rope_theta=theta, max_position_embeddings=max(target_length, rope.original_length),
                           rope_scaling=RopeScaling(rope_type=rope.type, factor=rope.factor,
                                                    original_max_position_embeddings=rope.original_length))
    try:
        check_rope(spec, key="rope")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return spec


def load_model(model_dir: str | Path, rope: RopeOverride, target_length: int, device: str = "cpu"):
    """The model of ``model_dir`` in eval mode, with ``rope`` applied to its config before loading."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from patentgpt.model.rope import hf_max_position_embeddings, rope_parameters

    config = AutoConfig.from_pretrained(model_dir)
    if rope.type != "none":
        spec = rope_settings(config, rope, target_length)
        config.rope_parameters = rope_parameters(spec)
        config.max_position_embeddings = hf_max_position_embeddings(spec)
        try:
            config.validate_rope()
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"rope: {exc}") from None
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config)
    return model.eval().to(device)


# ------------------------------------------------------------------------------------ passkey
def _random_keys(rng: np.random.Generator, digits: int, n: int) -> list[str]:
    lo, hi = 10 ** (digits - 1), 10 ** digits
    keys: list[str] = []
    while len(keys) < n:
        k = str(int(rng.integers(lo, hi)))
        if k not in keys:
            keys.append(k)
    return keys


def _continuation(tokenizer, question_ids: list[int], question: str, key: str) -> list[int]:
    """Token ids of " key" as they follow the question (tokenized together, then split)."""
    both = tokenizer(question + " " + key, add_special_tokens=False)["input_ids"]
    if both[: len(question_ids)] == question_ids and len(both) > len(question_ids):
        return both[len(question_ids):]
    return tokenizer(" " + key, add_special_tokens=False)["input_ids"]


def build_passkey_items(task: PasskeyTask, tokenizer, filler_ids: np.ndarray) -> list[dict]:
    """Every (length, depth, trial) prompt: context token ids of exactly ``length`` tokens, the
    key's continuation and the distractors' continuations."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    intro = tokenizer(task.intro, add_special_tokens=False)["input_ids"] if task.intro else []
    q_ids = tokenizer(task.question, add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(task.seed)
    items = []
    for length in task.lengths:
        for depth in task.depths:
            for trial in range(task.trials):
                keys = _random_keys(rng, task.digits, task.distractors + 1)
                needle = tokenizer(task.needle.format(key=keys[0]), add_special_tokens=False)["input_ids"]
                n_fill = length - len(bos) - len(intro) - len(needle) - len(q_ids)
                if n_fill < 0:
                    raise ConfigError(f"lengths: {length} tokens cannot hold the passkey prompt "
                                      f"({length - n_fill} tokens without filler)")
                if n_fill > len(filler_ids):
                    raise ConfigError(f"lengths: {length} needs {n_fill} filler tokens; the filler has "
                                      f"{len(filler_ids)}")
                start = int(rng.integers(0, len(filler_ids) - n_fill + 1))
                fill = filler_ids[start:start + n_fill].tolist()
                cut = int(round(depth * n_fill))
                ctx = bos + intro + fill[:cut] + needle + fill[cut:] + q_ids
                conts = [_continuation(tokenizer, q_ids, task.question, k) for k in keys]
                items.append({"length": length, "depth": depth, "trial": trial, "key": keys[0],
                              "needle_at": len(bos) + len(intro) + cut, "context": ctx, "continuations": conts})
    return items


def score_passkey(items: list[dict], score_fn) -> list[dict]:
    """``score_fn(requests)`` -> ``[(logprob, is_greedy)]`` for ``(None, context, continuation)``
    requests (the interface of lm-eval's ``_loglikelihood_tokens``). One call per length, so a
    batch never mixes lengths (dynamic NTK scales with the batch's length)."""
    outcomes = []
    for length in sorted({it["length"] for it in items}):
        cell = [it for it in items if it["length"] == length]
        reqs = [(None, it["context"], c) for it in cell for c in it["continuations"]]
        scores = score_fn(reqs)
        i = 0
        for it in cell:
            n = len(it["continuations"])
            lps = [s[0] for s in scores[i:i + n]]
            greedy = bool(scores[i][1])
            i += n
            rank = 1 + sum(lp > lps[0] for lp in lps[1:])
            outcomes.append({"length": it["length"], "depth": it["depth"], "trial": it["trial"], "key": it["key"],
                             "correct": rank == 1 and lps[0] > max(lps[1:]), "greedy": greedy, "rank": rank,
                             "key_logprob": lps[0]})
    return outcomes


def passkey_grid(outcomes: list[dict], lengths: list[int], depths: list[float]) -> dict:
    acc = [[float(np.mean([o["correct"] for o in outcomes if o["length"] == n and o["depth"] == d]))
            for n in lengths] for d in depths]
    greedy = [[float(np.mean([o["greedy"] for o in outcomes if o["length"] == n and o["depth"] == d]))
               for n in lengths] for d in depths]
    by_length = {str(n): float(np.mean([o["correct"] for o in outcomes if o["length"] == n])) for n in lengths}
    return {"lengths": lengths, "depths": depths, "accuracy": acc, "greedy": greedy, "accuracy_by_length": by_length,
            "mean_accuracy": float(np.mean([o["correct"] for o in outcomes]))}


def run_passkey(task: PasskeyTask, model, tokenizer, batch_size: int) -> dict:
    from patentgpt.eval.lm import PatentLM

    texts, used, skipped = read_documents(task.filler, task.fallback)
    need = max(task.lengths) * 2
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
    items = build_passkey_items(task, tokenizer, np.asarray(ids, dtype=np.int64))
    lm = PatentLM(model, tokenizer, batch_size=batch_size, max_length=max(task.lengths) + 16)
    outcomes = score_passkey(items, lambda reqs: lm._loglikelihood_tokens(reqs, disable_tqdm=True))
    grid = passkey_grid(outcomes, task.lengths, task.depths)
    return {"type": "passkey", "filler": used, "skipped_records": skipped, "trials": task.trials,
            "chance": 1.0 / (task.distractors + 1), **grid, "outcomes": outcomes}


# ----------------------------------------------------------------------------- position ppl
def default_buckets(length: int) -> list[int]:
    b = [0]
    edge = 256 if length > 256 else max(8, length // 4)
    while edge < length:
        b.append(edge)
        edge *= 2
    return b + [length]


def document_windows(docs_ids: list[list[int]], length: int, max_docs: int, windows_per_doc: int,
                     bos_id: int | None) -> tuple[np.ndarray, dict]:
    """Windows of ``length`` tokens: up to ``windows_per_doc`` non-overlapping ones per document,
    from the longest documents first; documents shorter than ``length`` are counted, not used."""
    counts = {"documents": len(docs_ids), "used": 0, "too_short": 0}
    framed = [([bos_id] if bos_id is not None else []) + list(d) for d in docs_ids]
    order = sorted(range(len(framed)), key=lambda i: -len(framed[i]))
    rows = []
    for i in order:
        d = framed[i]
        if len(d) < length:
            counts["too_short"] += 1
            continue
        if counts["used"] >= max_docs:
            break
        counts["used"] += 1
        for w in range(min(windows_per_doc, len(d) // length)):
            rows.append(d[w * length:(w + 1) * length])
    return np.asarray(rows, dtype=np.int64).reshape(-1, length), counts


def token_nll(model, windows: np.ndarray, batch_size: int):
    """Per-token negative log-likelihood, shape (windows, length - 1); column j is token j + 1."""
    import torch
    import torch.nn.functional as F

    out = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        for s in range(0, len(windows), batch_size):
            x = torch.as_tensor(windows[s:s + batch_size], device=dev)
            logits = model(input_ids=x).logits[:, :-1].float()
            out.append(F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, windows.shape[1] - 1))


def bucket_ppl(nll: np.ndarray, buckets: list[int]) -> list[dict]:
    """Perplexity of the tokens at positions [lo, hi) (position = index in the window; the first
    token, which nothing predicts, is excluded)."""
    pos = np.arange(1, nll.shape[1] + 1)
    rows = []
    for lo, hi in zip(buckets, buckets[1:]):
        sel = (pos >= lo) & (pos < hi)
        vals = nll[:, sel]
        mean = float(vals.mean()) if vals.size else float("nan")
        rows.append({"bucket": f"{lo}-{hi}", "lo": lo, "hi": hi, "tokens": int(vals.size), "nll": mean,
                     "ppl": float(math.exp(mean)) if vals.size else float("nan")})
    return rows


def run_position_ppl(task: PositionPplTask, model, tokenizer, batch_size: int) -> dict:
    texts, used, skipped = read_documents(task.data, task.fallback)
    docs = tokenizer(texts, add_special_tokens=False)["input_ids"]
    windows, counts = document_windows(docs, task.length, task.max_docs, task.windows_per_doc,
                                       tokenizer.bos_token_id)
    if not len(windows):
        raise ConfigError(f"length: no document of {task.data[0].path} (or its fallback) has {task.length} tokens")
    nll = token_nll(model, windows, batch_size)
    buckets = task.buckets or default_buckets(task.length)
    block = max(1, task.length // 64)
    curve = [float(math.exp(nll[:, i:i + block].mean())) for i in range(0, nll.shape[1], block)]
    return {"type": "position_ppl", "data": used, "skipped_records": skipped, "length": task.length,
            "windows": int(len(windows)), **counts, "buckets": bucket_ppl(nll, buckets),
            "overall_ppl": float(math.exp(nll.mean())), "curve": {"block": block, "ppl": curve}}


# ----------------------------------------------------------------------------------- reports
def _save_png(fig, path: Path, rect: tuple = (0, 0, 1, 1)) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def plot_passkey(res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = np.asarray(res["accuracy"])
    fig, ax = plt.subplots(figsize=(1.2 * len(res["lengths"]) + 3, 0.5 * len(res["depths"]) + 2))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(res["lengths"])), [str(n) for n in res["lengths"]])
    ax.set_yticks(range(len(res["depths"])), [f"{d:.2f}" for d in res["depths"]])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("key depth (0 = start)")
    ax.set_title(f"{title}\npasskey accuracy (chance {res['chance']:.2f})", fontsize=9)
    fig.colorbar(im, ax=ax)
    _save_png(fig, path)


def plot_position_ppl(series: dict[str, dict], path: Path, title: str) -> None:
    """One perplexity-by-position line per result (``{label: position_ppl result}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    edges = set()
    for label, res in series.items():
        block, ppl = res["curve"]["block"], res["curve"]["ppl"]
        ax.plot([1 + block * (i + 0.5) for i in range(len(ppl))], ppl, label=label, linewidth=1.3)
        edges.update(b["lo"] for b in res["buckets"][1:])
    for e in sorted(edges):
        ax.axvline(e, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("position in the window (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save_png(fig, path)


def markdown(results: dict) -> str:
    out = [f"# Long-context evaluation: {results['model']}", "", f"RoPE at inference: {results['rope']}", ""]
    for name, res in results["tasks"].items():
        if res["type"] == "passkey":
            out += [f"## {name}: passkey accuracy (likelihood vs {round(1 / res['chance']) - 1} distractors, "
                    f"chance {res['chance']:.2f}; {res['trials']} trials per cell)", ""]
            out.append("| depth | " + " | ".join(str(n) for n in res["lengths"]) + " |")
            out.append("| --- |" + " --- |" * len(res["lengths"]))
            for d, row in zip(res["depths"], res["accuracy"]):
                out.append(f"| {d:.2f} | " + " | ".join(f"{a:.2f}" for a in row) + " |")
            greedy = np.asarray(res["greedy"]).mean()
            out += ["", f"mean accuracy {res['mean_accuracy']:.3f}; greedy exact {greedy:.3f}", ""]
        else:
            out += [f"## {name}: perplexity by position ({res['windows']} windows of {res['length']} tokens "
                    f"from {res['used']} documents; {res['too_short']} shorter documents not used)", "",
                    "| positions | tokens | perplexity |", "| --- | --- | --- |"]
            out += [f"| {b['bucket']} | {b['tokens']} | {b['ppl']:.3f} |" for b in res["buckets"]]
            out += ["", f"overall perplexity {res['overall_ppl']:.3f}", ""]
    return "\n".join(out) + "\n"


def evaluate_long_context(model_dir: str | Path, out: str | Path, *, tasks: list[str] = ("passkey", "position_ppl"),
                          tokenizer: str | Path | None = None, rope: RopeOverride | None = None,
                          lengths: list[int] | None = None, depths: list[float] | None = None,
                          trials: int | None = None, buckets: list[int] | None = None, max_docs: int | None = None,
                          batch_size: int = 8) -> dict:
    """Run the long-context tasks on one model directory; writes the report files into ``out``."""
    from transformers import AutoTokenizer

    rope = rope or RopeOverride()
    specs = {}
    for name in tasks:
        spec = load_lc_task(name)
        upd: dict = {}
        if spec.type == "passkey":
            upd = {k: v for k, v in {"lengths": lengths, "depths": depths, "trials": trials}.items() if v}
        else:
            upd = {k: v for k, v in {"length": max(lengths) if lengths else None, "buckets": buckets,
                                     "max_docs": max_docs}.items() if v}
            length = upd.get("length", spec.length)
            if not buckets and spec.buckets:  # the task's boundaries, cut at a shorter --lengths
                upd["buckets"] = [b for b in spec.buckets if b < length] + [length]
            if (upd.get("buckets") or [0])[-1] > length:
                raise ConfigError(f"buckets: last boundary {upd['buckets'][-1]} exceeds the window length {length}")
        specs[spec.name] = type(spec).model_validate({**spec.model_dump(), **upd})
    target = max(s.length if s.type == "position_ppl" else max(s.lengths) for s in specs.values())
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model: {model_dir} is not a directory")
    tok = AutoTokenizer.from_pretrained(tokenizer or model_dir)
    model = load_model(model_dir, rope, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {"model": str(model_dir), "rope": rope.label, "rope_parameters": dict(model.config.rope_parameters or {}),
               "max_position_embeddings": int(model.config.max_position_embeddings), "tasks": {}, "images": {}}
    title = "/".join(model_dir.parts[-2:]) + f" (rope {rope.label})"
    for name, spec in specs.items():
        if spec.type == "passkey":
            res = run_passkey(spec, model, tok, batch_size)
            img = out / f"{name}.png"
            plot_passkey(res, img, title)
        else:
            res = run_position_ppl(spec, model, tok, batch_size)
            img = out / f"{name}.png"
            plot_position_ppl({rope.label: res}, img, title)
        results["tasks"][name] = res
        results["images"][name] = img.name
    results["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "long_context.json", results)
    atomic_write_text(out / "long_context.md", markdown(results))
    return results


# ----------------------------------------------------------------------------------- compare
def compare(result_dirs: list[str | Path], out: str | Path, labels: list[str] | None = None) -> dict:
    """One table and one PNG over several ``long_context.json`` results: perplexity per position
    bucket and passkey accuracy per length, one row per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, series, passkeys = [], {}, {}
    for i, d in enumerate(result_dirs):
        path = Path(d) / "long_context.json"
        if not path.is_file():
            raise FileNotFoundError(f"compare: {path} not found (run `patentgpt eval long-context` there first)")
        res = json.loads(path.read_text(encoding="utf-8"))
        label = labels[i] if labels else Path(d).name
        row = {"label": label, "model": res["model"], "rope": res["rope"], "ppl": {}, "passkey": {}}
        for task in res["tasks"].values():
            if task["type"] == "position_ppl":
                row["ppl"] = {b["bucket"]: b["ppl"] for b in task["buckets"]}
                series[label] = task
            else:
                row["passkey"] = dict(task["accuracy_by_length"])
                row["passkey_chance"] = task["chance"]
                passkeys[label] = task
        rows.append(row)
    buckets = list(dict.fromkeys(b for r in rows for b in r["ppl"]))
    lengths = list(dict.fromkeys(n for r in rows for n in r["passkey"]))
    lines = ["| model | rope at inference | " + " | ".join(f"ppl {b}" for b in buckets) + " | "
             + " | ".join(f"passkey {n}" for n in lengths) + " |",
             "| --- | --- |" + " --- |" * (len(buckets) + len(lengths))]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rope']} | " + " | ".join(
            f"{r['ppl'][b]:.3f}" if b in r["ppl"] else "" for b in buckets) + " | " + " | ".join(
            f"{r['passkey'][n]:.2f}" if n in r["passkey"] else "" for n in lengths) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    height = 4.2 + 0.1 * len(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, height))
    for label, task in series.items():
        block, ppl = task["curve"]["block"], task["curve"]["ppl"]
        axes[0].plot([1 + block * (i + 0.5) for i in range(len(ppl))], ppl, label=label, linewidth=1.2)
    for b in {x["lo"] for t in series.values() for x in t["buckets"][1:]}:
        axes[0].axvline(b, color="grey", linestyle=":", linewidth=0.8)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="position in the window (tokens)", ylabel="perplexity", title="perplexity by position")
    for label, task in passkeys.items():
        axes[1].plot(task["lengths"], [task["accuracy_by_length"][str(n)] for n in task["lengths"]], marker="o",
                     label=label)
    if passkeys:
        axes[1].axhline(next(iter(passkeys.values()))["chance"], color="grey", linestyle="--", label="chance")
        axes[1].set_xscale("log", base=2)
    axes[1].set(xlabel="context length (tokens)", ylabel="accuracy", ylim=(-0.02, 1.02), title="passkey accuracy")
    handles, names = axes[1].get_legend_handles_labels() if passkeys else axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=7, frameon=False)
    _save_png(fig, out / "compare.png", rect=(0, (0.25 + 0.17 * ((len(names) + 2) // 3)) / height, 1, 1))
    summary = {"rows": rows, "buckets": buckets, "lengths": lengths, "table": table}
    atomic_write_json(out / "compare.json", summary)
    atomic_write_text(out / "compare.md", "# Long-context comparison\n\n" + table + "\n![compare](compare.png)\n")
    return summary


# ------------------------------------------------------------------------------------ command
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def register(sub) -> None:
    """``patentgpt eval long-context`` (a sub-command of ``patentgpt eval``)."""
    import argparse

    p = sub.add_parser("long-context", help="passkey retrieval and perplexity by position on one model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with the keys of LongContextConfig (flags override it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model")
    p.add_argument("--tokenizer")
    p.add_argument("--out")
    p.add_argument("--tasks", nargs="+", help="names under evals/long_context/ or task YAML paths")
    p.add_argument("--lengths", type=_ints, help="comma-separated token lengths, e.g. 256,512,1024")
    p.add_argument("--depths", type=_floats, help="comma-separated key depths in [0, 1]")
    p.add_argument("--trials", type=int)
    p.add_argument("--buckets", type=_ints, help="position bucket boundaries, e.g. 0,256,1024")
    p.add_argument("--max-docs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--rope", choices=["none", "abf", "linear", "yarn", "dynamic"],
                   help="RoPE scaling applied at inference")
    p.add_argument("--factor", type=float, help="rope scaling factor (new length / training length)")
    p.add_argument("--original-length", type=int, help="the length the model was trained at (linear, yarn, dynamic)")
    p.add_argument("--rope-theta", type=float, help="abf: the new RoPE base")
    p.add_argument("--compare", nargs="+", help="result directories to tabulate side by side (no model runs)")
    p.set_defaults(func=_run)


def resolve_config(args) -> LongContextConfig:
    from patentgpt.config.base import validate

    cfg = load_config(LongContextConfig, args.config, args.overrides) if args.config else \
        load_config(LongContextConfig, data={}, overrides=args.overrides)
    data = cfg.model_dump()
    for k in ("model", "tokenizer", "out", "tasks", "lengths", "depths", "trials", "buckets", "max_docs",
              "batch_size", "compare"):
        if getattr(args, k, None) is not None:
            data[k] = getattr(args, k)
    rope_flags = {"type": args.rope, "factor": args.factor, "original_length": args.original_length,
                  "rope_theta": args.rope_theta}
    data["rope"] = {**data["rope"], **{k: v for k, v in rope_flags.items() if v is not None}}
    cfg = validate(LongContextConfig, data, source=args.config or "command line")
    if not cfg.compare and not cfg.model:
        raise ConfigError("model: no model given (--model HF_DIR, or --compare RESULT_DIRS)")
    return cfg


def _run(args) -> int:
    cfg = resolve_config(args)
    if cfg.compare:
        summary = compare(cfg.compare, cfg.out)
        print(summary["table"])
        print(f"comparison: {Path(cfg.out) / 'compare.md'}, {Path(cfg.out) / 'compare.png'}")
        return 0
    results = evaluate_long_context(cfg.model, cfg.out, tasks=cfg.tasks, tokenizer=cfg.tokenizer, rope=cfg.rope,
                                    lengths=cfg.lengths, depths=cfg.depths, trials=cfg.trials, buckets=cfg.buckets,
                                    max_docs=cfg.max_docs, batch_size=cfg.batch_size)
    print(markdown(results))
    print(f"long-context eval finished in {results['seconds']} s; results: {Path(cfg.out) / 'long_context.json'}")
    return 0
