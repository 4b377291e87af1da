"""EASE: the closed form, its head and tail, and lambda chosen without refitting."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from retailrec.errors import BundleError
from retailrec.models import Dataset, make_model
from retailrec.models.ease import BLOCK, EASERecommender, _ease_weights, _gram, _top_k
from tests.models.test_contract import _same_ranking
from tests.utils.factories import Shop


@pytest.mark.parametrize("n_items", [40, 2 * BLOCK + 77])  # one block; several, the last short
def test_the_weights_are_steck_s_closed_form(n_items: int) -> None:
    """B = I - P diag(1/diag(P)) with P = (X'X + lambda I)^-1, zero diagonal: against the
    formula written out with a general inverse."""
    rng = np.random.default_rng(0)
    x = sp.random(3000, n_items, density=0.02, random_state=1, dtype=np.float64, format="csr")
    x.data = rng.integers(1, 5, x.nnz).astype(np.float64)
    gram = _gram(x)
    np.testing.assert_allclose(gram, (x.T @ x).toarray())
    p = np.linalg.inv(gram + 7.0 * np.eye(n_items))
    expected = np.eye(n_items) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    got = _ease_weights(gram, 7.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    rows, cols = _top_k(got, 5)  # each row's 5 largest weights
    assert len(rows) == 5 * n_items
    for r in (0, n_items // 2, n_items - 1):
        assert sorted(got[r, cols[rows == r]]) == sorted(np.sort(got[r])[-5:])


@pytest.fixture(scope="module")
def data(tiny_shop: Shop) -> Dataset:
    return Dataset.from_events(tiny_shop.data.events)


def test_choosing_lambda_again_equals_fitting_with_it(data: Dataset) -> None:
    refit = make_model("ease", lam=50.0).fit(data)
    retuned = make_model("ease", lam=500.0).fit(data)
    assert isinstance(retuned, EASERecommender)
    retuned.with_lambda(50.0)
    assert retuned.lam == 50.0
    diff = refit.similarity_ - retuned.similarity_
    assert abs(diff).max() == 0.0


def test_the_tail_is_covered_by_item_knn_and_served_like_recommend(data: Dataset) -> None:
    """With a head smaller than the catalogue, a history of tail items alone still finds its
    neighbours (BM25's), on the same scale as the head's weights; the serving path ranks as
    ``recommend`` does."""
    model = make_model("ease", max_items=256, k=50).fit(data)
    assert isinstance(model, EASERecommender)
    assert len(model.head_) == 256 < data.n_items
    in_head = np.zeros(data.n_items, dtype=bool)
    in_head[model.head_] = True
    sim = model.similarity_.tocoo()
    both_head = in_head[sim.row] & in_head[sim.col]
    assert both_head.any() and (~both_head).any()  # EASE weights and BM25 ones
    head_top = np.median(np.asarray(model.similarity_[model.head_].max(axis=1).todense()))
    assert 0 < sim.data[~both_head].max() <= head_top * (1 + 1e-6)
    # A visitor who saw only tail items gets their neighbours, not the popular items.
    counts = np.diff(data.matrix.indptr)
    cols = data.matrix.indices
    tail_only = [
        u
        for u in np.flatnonzero(counts >= 3)
        if not in_head[cols[data.matrix.indptr[u] : data.matrix.indptr[u + 1]]].any()
    ]
    assert tail_only
    popular, _ = make_model("popular").fit(data).recommend(data.matrix[tail_only[:20]], 10)
    ours, _ = model.recommend(data.matrix[tail_only[:20]], 10)
    assert (ours != popular).any(axis=1).mean() > 0.5
    model.prepare_serving()
    rng = np.random.default_rng(3)
    for u in [*tail_only[:5], *rng.choice(data.n_users, 15, replace=False)]:
        blocked = rng.random(data.n_items) < 0.3
        _same_ranking(model, data.matrix[int(u)], 10, blocked)


def test_a_bundled_model_keeps_no_training_state(data: Dataset) -> None:
    model = make_model("ease", max_items=256).fit(data)
    again = pickle.loads(pickle.dumps(model))
    assert again._gram is None and again._tail is None
    assert (again.similarity_ != model.similarity_).nnz == 0
    with pytest.raises(BundleError, match="refit"):
        again.with_lambda(10.0)
