"""Streamed scores: chunk -> combine -> aggregate against scikit-learn's one-pass metrics."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, r2_score

from pipeline._targets import _unpack, score_aggregate, score_chunk, score_combine


def _table(T, w):
    """A target table: targets of shape (n, k) then the weight column."""
    return np.column_stack([T, w])


def _ill_conditioned(n=2000, k=2, seed=0):
    """Targets near 1e8 with a spread of about 1: their raw sum of squares is ~1e16 x sst."""
    rng = np.random.default_rng(seed)
    T = 1e8 + rng.normal(size=(n, k)) * np.array([1.0, 30.0])[:k]
    P = T + rng.normal(size=(n, k)) * 0.1
    w = rng.integers(0, 4, size=n).astype(np.float64)
    return T, P, w


def _bounds(n, sizes):
    """Chunk boundaries covering range(n), chunk sizes drawn cyclically from ``sizes``."""
    cuts, i = [0], 0
    while cuts[-1] < n:
        cuts.append(min(n, cuts[-1] + sizes[i % len(sizes)]))
        i += 1
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _chunk_stats(kind, T, P, w, sizes, X=None):
    return [
        score_chunk(kind, P[a:b], _table(T[a:b], w[a:b]), None if X is None else X[a:b])
        for a, b in _bounds(len(T), sizes)
    ]


def _left_fold(kind, parts):
    total = parts[0]
    for p in parts[1:]:
        total = score_combine(kind, [total, p])
    return total


def _right_fold(kind, parts):
    total = parts[-1]
    for p in reversed(parts[:-1]):
        total = score_combine(kind, [p, total])
    return total


def _assert_same_stats(a, b):
    """Equal continuous statistics: the weight exactly, the rest to rounding."""
    (ma, ea), (mb, eb) = _unpack(a), _unpack(b)
    assert ma.weight == mb.weight
    mean_diff = (ma.mean_hi - mb.mean_hi) + (ma.mean_lo - mb.mean_lo)
    np.testing.assert_allclose(mean_diff, 0, atol=1e-12)  # the spread of the targets is ~1
    np.testing.assert_allclose(ma.m2, mb.m2, rtol=1e-12)
    np.testing.assert_allclose(ea, eb, rtol=1e-12)


def _r2(parts):
    return score_aggregate("continuous", score_combine("continuous", parts))


@pytest.mark.parametrize("sizes", [[2000], [1], [7], [100, 3, 250, 1], [999, 1000, 1]])
def test_r2_matches_sklearn_on_targets_near_1e8(sizes):
    T, P, w = _ill_conditioned()
    expected = r2_score(T, P, sample_weight=w)
    assert 0.99 < expected < 1  # the fit is good, so the digits lost to cancellation show
    parts = _chunk_stats("continuous", T, P, w, sizes)
    for total in (score_combine("continuous", parts), _left_fold("continuous", parts)):
        got = score_aggregate("continuous", total)
        assert 1 - got == pytest.approx(1 - expected, rel=1e-12)


def test_r2_matches_the_estimator_case():
    """test_estimators' case: 300 targets near 1e8 in chunks of 100."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    T = (1e8 + X @ np.array([1.0, 2.0, 3.0, 4.0]) * 10)[:, None]
    P = T + rng.normal(size=T.shape) * 0.08
    w = np.ones(300)
    got = _r2(_chunk_stats("continuous", T, P, w, [100]))
    assert got == pytest.approx(r2_score(T, P), rel=1e-13)


def test_r2_independent_of_combine_order():
    T, P, w = _ill_conditioned(seed=1)
    parts = _chunk_stats("continuous", T, P, w, [37, 5, 120])
    order = np.random.default_rng(2).permutation(len(parts))
    trees = [
        score_combine("continuous", parts),
        score_combine("continuous", [parts[i] for i in order]),
        _left_fold("continuous", parts),
        _right_fold("continuous", parts),
        score_combine(
            "continuous",
            [score_combine("continuous", parts[:3]), score_combine("continuous", parts[3:])],
        ),
    ]
    r2 = [score_aggregate("continuous", t) for t in trees]
    expected = r2_score(T, P, sample_weight=w)
    for got in r2:
        assert 1 - got == pytest.approx(1 - expected, rel=1e-12)
    for t in trees[1:]:
        _assert_same_stats(t, trees[0])  # integer weights sum exactly in any order


def test_padding_and_zero_weight_chunks_change_nothing():
    T, P, w = _ill_conditioned(n=500, seed=3)
    plain = score_combine("continuous", _chunk_stats("continuous", T, P, w, [64]))
    pad_T, pad_P = np.zeros((13, 2)), np.full((13, 2), 5.0)  # padding rows: targets 0, weight 0
    padded = score_combine(
        "continuous",
        [score_chunk("continuous", pad_P, _table(pad_T, np.zeros(13)))]
        + _chunk_stats(
            "continuous",
            np.vstack([T, pad_T]),
            np.vstack([P, pad_P]),
            np.concatenate([w, np.zeros(13)]),
            [64],
        ),
    )
    assert padded[0] == plain[0] == w.sum()
    _assert_same_stats(padded, plain)


def test_r2_edge_cases():
    c = np.full((10, 1), 0.1)
    perfect = score_chunk("continuous", c, _table(c, np.ones(10)))
    assert score_aggregate("continuous", score_combine("continuous", [perfect] * 3)) == 1.0
    missed = score_chunk("continuous", c + 1, _table(c, np.ones(10)))
    assert score_aggregate("continuous", missed) == r2_score(c, c + 1) == 0.0
    empty = score_chunk("continuous", c, _table(c, np.zeros(10)))
    assert np.isnan(score_aggregate("continuous", score_combine("continuous", [empty, empty])))
    with pytest.raises(ValueError, match="at least one chunk"):
        score_combine("continuous", [])


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_accuracy_counts_exact(kind):
    rng = np.random.default_rng(4)
    n = 1001
    k = {"multiclass": 4, "binary": 1, "multilabel": 3}[kind]
    P = rng.random((n, k))
    if kind == "multiclass":
        T = rng.integers(0, k, size=(n, 1)).astype(np.float64)
        pred, true = P.argmax(1), T[:, 0]
    else:
        T = (rng.random((n, k)) > 0.5).astype(np.float64)
        pred, true = P > 0.5, T > 0.5
    w = rng.integers(0, 3, size=n).astype(np.float64)
    total = score_combine(kind, _chunk_stats(kind, T, P, w, [10, 333]))
    right = (pred == true) if kind == "multiclass" else (pred == true).all(1)
    assert total[0] == w.sum() and total[1] == w @ right
    if kind != "multiclass":  # 0/1 indicators: subset accuracy for multilabel
        pred, true = pred.astype(int).squeeze(1) if k == 1 else pred.astype(int), true.astype(int)
        true = true.squeeze(1) if k == 1 else true
    expected = accuracy_score(true, pred, sample_weight=w)
    assert score_aggregate(kind, total) == pytest.approx(expected, rel=1e-15)


def test_reconstruction_error_combines():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 3, 2))
    P = X.reshape(400, -1) + rng.normal(size=(400, 6)) * 0.01
    w = rng.integers(0, 3, size=400).astype(np.float64)
    T = np.zeros((400, 0))
    parts = _chunk_stats("reconstruction", T, P, w, [17, 64], X=X)
    expected = -np.average(((P - X.reshape(400, -1)) ** 2).mean(1), weights=w)
    for total in (score_combine("reconstruction", parts), _left_fold("reconstruction", parts)):
        assert total[0] == w.sum()
        assert score_aggregate("reconstruction", total) == pytest.approx(expected, rel=1e-12)
