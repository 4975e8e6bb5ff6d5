"""The blend schedule computed in lanes equals Megatron's sequential greedy rule, byte for byte."""
import numpy as np
import pytest

from est_megatron.data import blend
from est_megatron.data.blend import blending_indices, cached_blending_indices, normalise
from est_megatron.errors import UsageError


def sequential(weights, size):
    """The greedy rule one sample at a time: the first corpus with the largest weight * max(i, 1) - count."""
    w = [float(x) for x in normalise(weights)]
    counts, chosen, within = [0] * len(w), [], []
    for i in range(size):
        s = max(i, 1)
        best = 0
        for k in range(1, len(w)):
            if w[k] * s - counts[k] > w[best] * s - counts[best]:
                best = k
        chosen.append(best)
        within.append(counts[best])
        counts[best] += 1
    return np.array(chosen, dtype=np.int16), np.array(within, dtype=np.int64)


WEIGHT_SETS = [
    [0.7, 0.3],
    [0.5, 0.5],  # exact ties every other sample
    [1, 1, 1],
    [0.5, 0.3, 0.15, 0.05],
    [0.31, 0.27, 0.11, 0.09, 0.08, 0.07, 0.05, 0.02],
    list(np.random.default_rng(3).random(6)),
    list(np.random.default_rng(4).random(30) ** 3),  # many corpora, some tiny
    [1.0],
]


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=lambda w: f"{len(w)}corpora")
def test_equals_the_sequential_rule(weights):
    for size in (0, 1, 2, 3, 2047, 2048, 2049, 20000):
        got, want = blending_indices(weights, size), sequential(weights, size)
        for g, r in zip(got, want):
            assert g.dtype == r.dtype and g.shape == r.shape and g.tobytes() == r.tobytes(), (weights, size)


@pytest.mark.parametrize("weights", WEIGHT_SETS[:-1], ids=lambda w: f"{len(w)}corpora")
@pytest.mark.parametrize("wrong_start", [False, True], ids=["estimated", "off-by-one"])
def test_lanes_that_start_on_wrong_counts_are_run_again(weights, wrong_start, monkeypatch):
    """Tiny chunks with little or no overlap, several lane groups, and (off-by-one) start counts moved one sample
    from the first corpus to the last: the lanes that start wrong are run again and the result is still exact."""
    monkeypatch.setattr(blend, "_GROUP", 5)
    estimated, advance, reruns = blend._estimated_counts, blend._advance, []

    def off_by_one(w, starts):
        counts = estimated(w, starts)
        counts[0] += starts > 0
        counts[-1] -= starts > 0
        return counts

    def counting(w, begin, counts, steps, keep=()):
        reruns.append(len(keep) == 1)  # a re-run keeps only its end counts, a first pass four
        return advance(w, begin, counts, steps, keep)

    if wrong_start:
        monkeypatch.setattr(blend, "_estimated_counts", off_by_one)
    monkeypatch.setattr(blend, "_advance", counting)
    want = sequential(weights, 3000)
    for chunk, overlap in ((7, 0), (13, 2), (50, 3), (64, 16)):
        got = blend._lanes(normalise(weights), 3000, chunk, overlap)
        assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes(), (chunk, overlap)
    if wrong_start:
        assert any(reruns)


def test_cache_returns_the_same_arrays(tmp_path):
    first = cached_blending_indices([0.6, 0.4], 5000, str(tmp_path))
    again = cached_blending_indices([0.6, 0.4], 5000, str(tmp_path))
    want = sequential([0.6, 0.4], 5000)
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(first, again, want))
    assert len(list(tmp_path.iterdir())) == 2


def test_negative_size_is_refused():
    with pytest.raises(UsageError, match="blend size -1 is negative"):
        blending_indices([0.5, 0.5], -1)
