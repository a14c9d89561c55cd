import numpy as np
import pytest

from patentgpt.data.shards import ShardError, ShardSet, ShardWriter, TokenizerInfo

TOK = TokenizerInfo(name="t", vocab_size=1000, fingerprint="abc", bos_id=1, eos_id=2)


def _docs(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 1000, size=rng.integers(0, 40)) for _ in range(n)]


def test_round_trip_across_shards(tmp_path):
    docs = _docs()
    with ShardWriter(tmp_path / "s", TOK, shard_max_tokens=100) as w:
        w.add_many(docs)
    s = ShardSet(tmp_path / "s")
    assert len(s.meta["shards"]) > 3
    assert s.num_docs == len(docs) and s.num_tokens == sum(len(d) for d in docs)
    for i, d in enumerate(docs):
        assert s.doc(i).tolist() == d.tolist()
    assert s.dtype == np.uint16


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", TOK) as w:
            w.add([5, 6, 7])
            raise RuntimeError("crash")
    assert not (tmp_path / "s").exists()
    assert not list(tmp_path.iterdir())


def test_incomplete_and_truncated_sets_are_refused(tmp_path):
    with ShardWriter(tmp_path / "s", TOK) as w:
        w.add_many(_docs(10))
    (tmp_path / "s" / "meta.json").rename(tmp_path / "meta.bak")
    with pytest.raises(ShardError, match="incomplete"):
        ShardSet(tmp_path / "s")
    (tmp_path / "meta.bak").rename(tmp_path / "s" / "meta.json")
    binf = tmp_path / "s" / "shard_00000.bin"
    binf.write_bytes(binf.read_bytes()[:-2])
    with pytest.raises(ShardError, match="truncated"):
        ShardSet(tmp_path / "s")
    with pytest.raises(ShardError, match="not found"):
        ShardSet(tmp_path / "missing")


def test_out_of_range_ids_and_tokenizer_mismatch(tmp_path):
    with pytest.raises(ShardError, match="out of range"):
        with ShardWriter(tmp_path / "s", TOK) as w:
            w.add([1, 2, 1000])
    with ShardWriter(tmp_path / "s", TOK) as w:
        w.add([1, 2, 3])
    s = ShardSet(tmp_path / "s")
    other = TokenizerInfo(name="llama2", vocab_size=32000, fingerprint="zzz")
    with pytest.raises(ShardError, match="re-tokenize"):
        s.check_tokenizer(other)
    with pytest.raises(ShardError, match="extend-vocab"):
        s.check_tokenizer(TOK, model_vocab_size=512)
    s.check_tokenizer(TOK, model_vocab_size=1024)
