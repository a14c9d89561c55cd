"""Document-aware packing for pretraining (issue #10): ``data.document_masking`` gives packed rows
``position_ids`` restarting at each document, transformers turns them into a block-diagonal causal
mask, and no loss term predicts across a boundary. Also: ``SourceStream.take`` is O(tokens taken)
and gives exactly the stream the whole-document framing gave."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from patentgpt.data.loader import IGNORE, MixtureLoader, SourceStream, pack_documents, segment_positions
from patentgpt.data.shards import ShardSet
from tests.conftest import REPO


def _reference_stream():
    """The framing ``take`` had before (whole document framed per chunk), kept as bench/loader_take.py's baseline."""
    sys.path.insert(0, str(REPO / "bench"))
    from loader_take import WholeDocumentTake

    return WholeDocumentTake


@pytest.mark.parametrize("bos", [1, None])
def test_take_equals_whole_document_framing_on_real_shards(demo_shards, bos):
    shards = ShardSet(demo_shards["patents"])
    lengths = shards.doc_lengths()
    assert lengths.max() > 300  # chunks both inside long documents and across many short ones
    new, ref = SourceStream(shards, 5, 0, 2, bos), _reference_stream()(shards, 5, 0, 2, bos)
    sizes = np.random.default_rng(0).choice([1, 7, 64, 257, 1024, 5000], size=100_000)
    steps = 0
    while new.state.epoch < 2:  # through two epoch boundaries (new permutations)
        n = int(sizes[steps])
        assert np.array_equal(new.take(n), ref.take(n)), steps
        assert vars(new.state) == vars(ref.state)
        steps += 1
    assert steps > 50


def test_take_reports_where_documents_begin(demo_shards):
    shards = ShardSet(demo_shards["ip_law"])
    stream, starts = SourceStream(shards, 3, 1, eos_id=2, bos_id=1), []
    out = stream.take(4000, starts)
    assert starts[0] == 0 and all(out[s] == 1 for s in starts)  # each framed document opens with BOS
    assert all(out[s - 1] == 2 for s in starts[1:])  # ... right after the previous one's EOS
    assert len(starts) == int((out == 1).sum())


def test_segment_positions():
    assert segment_positions([3, 5], 8).tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert segment_positions([], 4).tolist() == [0, 1, 2, 3]  # a row inside one document


def _loader(demo_shards, masking, world=1, rank=0, accum=4):
    sources = [("patents", ShardSet(demo_shards["patents"]), 3.0), ("ip_law", ShardSet(demo_shards["ip_law"]), 1.0)]
    return MixtureLoader(sources, seq_len=128, micro_batch_size=2, grad_accum_steps=accum, world_size=world,
                         rank=rank, seed=11, eos_id=2, bos_id=1, document_masking=masking)


def test_masked_batches_restart_positions_and_cut_loss_at_boundaries(demo_shards):
    plain, masked = _loader(demo_shards, False), _loader(demo_shards, True)
    boundaries = 0
    for _ in range(8):
        for p, m in zip(plain.next_step(), masked.next_step()):
            assert torch.equal(p["input_ids"], m["input_ids"])  # same data, only masks / labels differ
            ids, pos, labels = m["input_ids"], m["position_ids"], m["labels"]
            begins = (ids == 1)  # BOS opens every framed document
            assert torch.equal(pos == 0, begins | (torch.arange(128) == 0))
            inner = begins.clone()
            inner[:, 0] = False
            assert (labels[inner] == IGNORE).all() and torch.equal(labels[~inner], ids[~inner])
            boundaries += int(inner.sum())
    assert boundaries >= 5


def test_masked_loader_resumes_on_another_world_size(demo_shards):
    ref = _loader(demo_shards, True)
    expected = [ref.next_step() for _ in range(4)]
    first = _loader(demo_shards, True)
    first.next_step(), first.next_step()
    state = first.state_dict()
    r0, r1 = _loader(demo_shards, True, 2, 0, 2), _loader(demo_shards, True, 2, 1, 2)
    r0.load_state_dict(state), r1.load_state_dict(state)
    for step in range(2, 4):
        m0, m1 = r0.next_step(), r1.next_step()
        for key in ("input_ids", "labels", "position_ids"):
            split = torch.cat([m0[0][key], m1[0][key], m0[1][key], m1[1][key]])
            assert torch.equal(split, torch.cat([b[key] for b in expected[step]])), key


def test_held_out_rows_under_document_masking(demo_shards):
    shards = ShardSet(demo_shards["ip_law"])
    docs = [shards.doc(i) for i in range(6)]
    cols = pack_documents(docs, 64, 10_000, eos_id=2, bos_id=1, document_masking=True)
    plain = pack_documents(docs, 64, 10_000, eos_id=2, bos_id=1)
    assert np.array_equal(cols["input_ids"], plain["input_ids"])
    ids, pos, labels = cols["input_ids"], cols["position_ids"], cols["labels"]
    opens = (ids == 1)
    assert np.array_equal(pos[opens], np.zeros(opens.sum()))
    assert (labels[:, 1:][opens[:, 1:]] == IGNORE).all()
    pad = plain["labels"] == IGNORE  # the last row's EOS padding: not counted either way
    assert (labels[pad] == IGNORE).all() and pad.any()


def _tiny(arch, attn):
    from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig

    common = dict(vocab_size=2048, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
    config = LlamaConfig(**common) if arch == "llama" else MixtralConfig(**common, num_local_experts=4,
                                                                          num_experts_per_tok=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("mixtral", "sdpa")])
def test_changing_document_a_leaves_document_b_alone(demo_shards, arch, attn):
    shards = ShardSet(demo_shards["patents"])
    frame = lambda d: np.concatenate([[1], d[:100], [2]])  # noqa: E731
    a, a2, b = frame(shards.doc(0)), frame(shards.doc(1)), frame(shards.doc(2))
    assert len(a) != len(a2) or not np.array_equal(a, a2)
    model = _tiny(arch, attn)

    def run(*docs, masking=True):
        ids = torch.from_numpy(np.concatenate(docs))[None]
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
        pos = torch.from_numpy(segment_positions(starts, ids.shape[1]))[None]
        with torch.no_grad():
            # as in training (use_cache=False): with a KV cache transformers does not look for packing
            out = model(input_ids=ids, position_ids=pos if masking else None, use_cache=False)
            return out.logits[0, -len(docs[-1]):]

    alone = run(b)
    assert torch.allclose(run(a, b), alone, atol=1e-5)
    assert torch.allclose(run(a2, b), alone, atol=1e-5)
    # plain causal packing: B attends to A, so its logits depend on A
    assert not torch.allclose(run(a, b, masking=False), run(a2, b, masking=False), atol=1e-3)
