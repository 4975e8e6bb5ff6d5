"""Packed samples, splits, blending, caching and exact resumption (build_datasets and PretrainingSampler)."""
import os

import numpy as np
import pytest
import torch

from data_fixtures import load_tool, slimpajama_tree, tokenizer_model  # noqa: F401
from est_megatron.data import CorpusSets, build_datasets, split_ranges, parse_split
from est_megatron.data.blend import BlendedDataset, blending_indices, parse_data_path
from est_megatron.data.corpus import Corpus
from est_megatron.data import gpt_dataset
from est_megatron.data.gpt_dataset import GPTDataset
from est_megatron.data.indexed import IndexedDatasetWriter
from est_megatron.data.sampler import PretrainingSampler, collate
from est_megatron.errors import UsageError


def make_corpus(prefix, n_docs, first_token=0, seed=0):
    """A shard whose tokens are first_token, first_token+1, ... so every token is identifiable."""
    rng = np.random.default_rng(seed)
    w = IndexedDatasetWriter(str(prefix), np.int32)
    next_token = first_token
    for size in rng.integers(1, 40, size=n_docs):
        w.add_document(np.arange(next_token, next_token + size))
        next_token += size
    w.finalize()
    return str(prefix)


def test_packing_covers_every_token_once_per_epoch(tmp_path):
    corpus = Corpus(make_corpus(tmp_path / "c", 200))
    total, seq = corpus.num_tokens, 16
    n = (total - 1) // seq  # exactly one epoch
    ds = GPTDataset(corpus, 0, len(corpus), seq, n, seed=3, split_name="train")
    assert len(set(ds.document_index.tolist())) == len(corpus) == ds.document_index.size
    stream = np.concatenate([corpus.tokens(int(d)) for d in ds.document_index])
    samples = [ds.unshuffled(j) for j in range(n)]
    assert all(s.dtype == np.int64 and s.size == seq + 1 for s in samples)
    for j, s in enumerate(samples):
        np.testing.assert_array_equal(s, stream[j * seq:j * seq + seq + 1])
    inputs = np.concatenate([s[:-1] for s in samples])
    assert np.unique(inputs).size == inputs.size == n * seq  # no token twice
    assert total - inputs.size <= seq  # only the tail that cannot fill a sample is left out
    shuffled = sorted(tuple(ds[i]) for i in range(n))
    assert shuffled == sorted(tuple(s) for s in samples) and not np.array_equal(ds.shuffle_index, np.arange(n))


def test_epochs_determinism_and_cache(tmp_path):
    corpus = Corpus(make_corpus(tmp_path / "c", 50))
    n = 3 * corpus.num_tokens // 8  # needs 3 epochs (+ one token)
    ds = GPTDataset(corpus, 0, 50, 8, n, seed=1, split_name="train")
    epochs = -(-(n * 8 + 1) // corpus.num_tokens)
    assert epochs >= 3 and ds.document_index.size == 50 * epochs
    for e in range(epochs):
        assert sorted(ds.document_index[e * 50:(e + 1) * 50]) == list(range(50))
    assert all(os.path.isfile(p) and os.path.dirname(p) == str(tmp_path) for p in ds.cache_files)
    again = GPTDataset(corpus, 0, 50, 8, n, seed=1, split_name="train")
    assert isinstance(again.shuffle_index, np.memmap)  # loaded from the cache
    assert all(np.array_equal(ds[i], again[i]) for i in range(n))
    other = GPTDataset(corpus, 0, 50, 8, n, seed=2, split_name="train", cache_dir=str(tmp_path / "cache"))
    assert os.path.dirname(other.cache_files[0]) == str(tmp_path / "cache")
    assert not all(np.array_equal(ds[i], other[i]) for i in range(n))


@pytest.mark.parametrize("block", [None, 7])
def test_a_shorter_run_reads_the_first_samples_of_a_longer_one(tmp_path, monkeypatch, block):
    """The order does not depend on the number of samples: across epochs, across shuffle blocks (7 samples here),
    and through a blend; each epoch's samples are shuffled among themselves only."""
    if block:
        monkeypatch.setattr(gpt_dataset, "SHUFFLE_BLOCK", block)
    corpus = Corpus(make_corpus(tmp_path / "c", 40))
    per_epoch = (corpus.num_tokens - 1) // 8
    short, long = (GPTDataset(corpus, 0, 40, 8, n, seed=4, split_name="train", cache_dir=str(tmp_path / str(n)))
                   for n in (per_epoch + 3, 3 * per_epoch + 5))
    assert all(np.array_equal(short[i], long[i]) for i in range(len(short)))
    limit = block or per_epoch
    assert sorted(long.shuffle_index[:min(limit, per_epoch)]) == list(range(min(limit, per_epoch)))
    a, b = make_corpus(tmp_path / "a", 300, first_token=0), make_corpus(tmp_path / "b", 100, first_token=10**6)
    blends = [build_datasets(["0.7", a, "0.3", b], "1", 16, 5, (n, 0, 0), cache_dir=str(tmp_path / f"b{n}"))[0]
              for n in (900, 2500)]
    assert all(np.array_equal(blends[0][i], blends[1][i]) for i in range(900))


def test_split_by_documents(tmp_path):
    assert np.allclose(parse_split("969,30,1"), [0.969, 0.030, 0.001])
    assert split_ranges(1000, parse_split("969,30,1")) == [(0, 969), (969, 999), (999, 1000)]
    prefix = make_corpus(tmp_path / "c", 100)
    train, valid, test = build_datasets([prefix], "80,20,0", 8, 0, (50, 7, 10))
    assert test is None and len(train) == 50 and len(valid) == 7
    train_tokens = {int(t) for i in range(len(train)) for t in train[i]}
    valid_tokens = {int(t) for i in range(len(valid)) for t in valid[i]}
    assert not train_tokens & valid_tokens
    assert build_datasets([prefix], "80,20,0", 8, 0, (50, 0, 0))[1] is None
    with pytest.raises(UsageError, match="--split 'a,b' must be"):
        parse_split("a,b")


def test_blend_proportions_within_a_tenth_of_a_percent(tmp_path):
    a = make_corpus(tmp_path / "a", 300, first_token=0)
    b = make_corpus(tmp_path / "b", 100, first_token=10**6, seed=1)
    train, valid, _ = build_datasets(["0.7", a, "0.3", b], "90,10,0", 16, 5, (20000, 500, 0))
    assert len(train) == 20000 and len(valid) == 500
    for ds, n in ((train, 20000), (valid, 500)):
        share = np.bincount(ds.dataset_index, minlength=2) / n
        assert abs(share[0] - 0.7) <= 0.001 and abs(share[1] - 0.3) <= 0.001
    for i in range(0, 20000, 997):  # samples really come from the scheduled corpus
        assert (train[i] >= 10**6).all() == (train.dataset_index[i] == 1)
    counts = np.cumsum(np.eye(3)[blending_indices([0.5, 0.3, 0.2], 5000)[0]], axis=0)
    assert np.abs(counts - np.outer(np.arange(1, 5001), [0.5, 0.3, 0.2])).max() <= 1.0  # exact at every prefix


def test_validation_parts_of_a_blend_kept_apart_per_corpus(tmp_path):
    """What training validates on: each corpus's valid/test part alone (its own documents, the samples asked for),
    weighted by the blend; the training set is still the blend."""
    a = make_corpus(tmp_path / "a", 300, first_token=0)
    b = make_corpus(tmp_path / "b", 100, first_token=10**6, seed=1)
    train, valid, test = build_datasets(["0.7", a, "0.3", b], "80,10,10", 16, 5, (400, 50, 30), corpora_apart=True)
    assert isinstance(train, BlendedDataset) and len(train) == 400
    for sets, n in ((valid, 50), (test, 30)):
        assert isinstance(sets, CorpusSets) and sets.names == ["a", "b"]
        assert sets.weights.tolist() == pytest.approx([0.7, 0.3])
        assert [len(d) for d in sets.datasets] == [n, n]
        assert all((sets.datasets[0][i] < 10**6).all() for i in range(n))
        assert all((sets.datasets[1][i] >= 10**6).all() for i in range(n))
    blended = build_datasets(["0.7", a, "0.3", b], "80,10,10", 16, 5, (400, 50, 30))
    for apart, together in zip((valid, test), blended[1:]):  # the same documents as the blended part draws on
        for part, alone in zip(together.datasets, apart.datasets):
            assert (part.corpus.prefix, part.doc_begin) == (alone.corpus.prefix, alone.doc_begin)


def test_unweighted_prefixes_are_weighted_by_tokens(tmp_path):
    a, b = make_corpus(tmp_path / "a", 300), make_corpus(tmp_path / "b", 100, first_token=10**6, seed=1)
    ta, tb = Corpus(a).num_tokens, Corpus(b).num_tokens
    train, _, _ = build_datasets([f"{a} {b}"], "1", 16, 0, (4000, 0, 0))
    assert abs(np.bincount(train.dataset_index)[0] / 4000 - ta / (ta + tb)) <= 0.001


def test_parse_data_path():
    assert parse_data_path(["0.7", "A", "0.3", "B"]) == [(0.7, "A"), (0.3, "B")]
    assert parse_data_path(["0.7 A 0.3 B"]) == [(0.7, "A"), (0.3, "B")]
    assert parse_data_path(["A", "B"]) == [(None, "A"), (None, "B")]
    for bad in (["0.7", "A", "B"], ["A", "0.3"], ["0", "A"], []):
        with pytest.raises(UsageError, match="--data-path"):
            parse_data_path(bad)


def test_sampler_and_dataset_resume_exactly(tmp_path):
    prefix = make_corpus(tmp_path / "c", 100)
    train, _, _ = build_datasets([prefix], "1", 8, 0, (64, 0, 0))
    mbs, dp = 2, 3

    def stream(consumed, ds):
        loaders = [torch.utils.data.DataLoader(ds, batch_sampler=PretrainingSampler(len(ds), consumed, mbs, r, dp),
                                               collate_fn=collate) for r in range(dp)]
        return [torch.cat(step) for step in zip(*loaders)]  # global batches, rank order

    full = stream(0, train)
    assert full[0].shape == (mbs * dp, 9) and full[0].dtype == torch.int64 and len(full) == 64 // 6
    rebuilt, _, _ = build_datasets([prefix], "1", 8, 0, (64, 0, 0))  # a restarted job (indices from cache)
    resumed = stream(4 * mbs * dp, rebuilt)
    assert len(resumed) == len(full) - 4
    assert all(torch.equal(x, y) for x, y in zip(full[4:], resumed))
    assert torch.equal(full[0], torch.stack([torch.from_numpy(train[i]) for i in range(6)]))
    ranks = [list(PretrainingSampler(64, 10, mbs, r, dp))[0] for r in range(dp)]
    assert sum(ranks, []) == list(range(10, 16))
    with pytest.raises(UsageError, match="consumed samples 64"):
        PretrainingSampler(64, 64, mbs, 0, dp)


def test_manifest_prefix_reads_all_shards(tokenizer_model, slimpajama_tree, tmp_path):  # noqa: F811
    manifest = load_tool("tools/preprocess_data.py").main(
        ["--input", slimpajama_tree, "--format", "slimpajama", "--tokenizer-model", tokenizer_model,
         "--output-prefix", str(tmp_path / "sp"), "--shard-size", "2000", "--no-progress"])
    corpus = Corpus(str(tmp_path / "sp"))
    assert len(corpus.shards) == len(manifest["shards"]) > 3
    assert corpus.num_tokens == manifest["tokens"] and len(corpus) == manifest["documents"]
    train, _, _ = build_datasets([str(tmp_path / "sp")], "1", 32, 0, (100, 0, 0))
    samples = np.stack([train[i] for i in range(100)])
    assert samples.shape == (100, 33) and samples.max() < 400 and (samples == 2).sum() > 10  # EOS between docs
    single = Corpus(str(tmp_path / "sp_00001"))
    np.testing.assert_array_equal(single.tokens(0), corpus.tokens(manifest["shards"][0]["documents"]))


def test_bad_data_paths_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"data path '.*nothing' names no data: neither .*nothing.manifest.json"):
        build_datasets([str(tmp_path / "nothing")], "1", 8, 0, (4, 0, 0))
    prefix = make_corpus(tmp_path / "c", 10)
    with open(prefix + ".bin", "ab") as f:
        f.write(b"\x00" * 4)
    with pytest.raises(UsageError, match=r"c\.bin is .* bytes but .*c\.idx describes"):
        build_datasets([prefix], "1", 8, 0, (4, 0, 0))
    (tmp_path / "m.manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"m\.manifest\.json is not a shard manifest"):
        build_datasets([str(tmp_path / "m")], "1", 8, 0, (4, 0, 0))
    small = make_corpus(tmp_path / "small", 3)
    with pytest.raises(UsageError, match="valid split holds no documents"):
        build_datasets([small], "98,1,1", 8, 0, (4, 4, 0))
