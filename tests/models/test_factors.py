"""The factor models' serving scan: a chunk's best unblocked items, found without reading the
whole chunk's blocks where its best items are mostly free."""

from __future__ import annotations

import numpy as np
import pytest

from retailrec.models import make_model
from retailrec.models.data import Dataset
from retailrec.models.factors import SPARE, ALSRecommender, fold_in, top_unblocked
from tests.utils.factories import Shop


@pytest.mark.parametrize("blocked_top", [0, 5, SPARE, SPARE + 20, 500])
@pytest.mark.parametrize("n", [1, 10, 50])
def test_a_chunks_best_unblocked_items_are_exactly_the_brute_forces(
    blocked_top: int, n: int
) -> None:
    rng = np.random.default_rng(blocked_top * 100 + n)
    n_items = 5000
    chunk = rng.permutation(n_items)[:2048]
    scores = rng.standard_normal(len(chunk)).astype(np.float32)
    blocked = np.zeros(n_items, dtype=bool)
    blocked[rng.choice(n_items, 300, replace=False)] = True  # scattered, as unavailable items
    # A history's own items score high and are blocked on the repeat path: block the best ones.
    blocked[chunk[np.argsort(-scores)[:blocked_top]]] = True
    items, got = top_unblocked(chunk, scores, blocked, n)
    free = ~blocked[chunk]
    want = np.argsort(-scores[free], kind="stable")[:n]
    assert sorted(items.tolist()) == sorted(chunk[free][want].tolist())
    assert sorted(got.tolist()) == sorted(scores[free][want].tolist())
    assert not blocked[items].any()


@pytest.mark.parametrize("blocked_top", [0, SPARE + 20])
def test_the_whole_catalogues_best_unblocked_items_without_a_chunk(blocked_top: int) -> None:
    """``chunk`` None: the scores are every item's, in index order (one product over the
    catalogue, past the ordered head or for the two-tower model)."""
    rng = np.random.default_rng(blocked_top)
    scores = rng.standard_normal(5000).astype(np.float32)
    blocked = rng.random(5000) < 0.1
    blocked[np.argsort(-scores)[:blocked_top]] = True
    items, got = top_unblocked(None, scores, blocked, 10)
    free = np.flatnonzero(~blocked)
    want = free[np.argsort(-scores[free], kind="stable")[:10]]
    assert sorted(items.tolist()) == sorted(want.tolist())
    np.testing.assert_array_equal(got, scores[items])
    everything = np.ones(5000, dtype=bool)
    everything[[7, 4000]] = False
    assert sorted(top_unblocked(None, scores, everything, 10)[0].tolist()) == [7, 4000]


def test_a_chunk_with_fewer_unblocked_items_than_asked_gives_them_all() -> None:
    chunk = np.arange(100)
    scores = np.linspace(1, 0, 100).astype(np.float32)
    blocked = np.ones(100, dtype=bool)
    blocked[[3, 70]] = False
    items, _ = top_unblocked(chunk, scores, blocked, 10)
    assert sorted(items.tolist()) == [3, 70]


def test_a_one_item_history_folds_in_as_the_full_solve(tiny_shop: Shop) -> None:
    """Sherman-Morrison on the kept inverse gives the vector implicit's least squares gives."""
    data = Dataset.from_events(tiny_shop.data.events)
    model = make_model("als", iterations=3).fit(data)
    assert isinstance(model, ALSRecommender)
    model.prepare_serving()
    one = np.flatnonzero(np.diff(data.matrix.indptr) == 1)[:50]
    assert len(one) >= 20
    rows = data.matrix[one]
    ours = model.user_vectors(rows)
    theirs = model.model_.recalculate_user(np.arange(len(one)), rows)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    gram = model._serving("gram")
    for c in (0.3, 1.0, 7.5):  # below one, one (no change to the matrix), above
        item, conf = np.array([int(rows.indices[0])]), np.array([c], dtype=np.float32)
        solved = fold_in(model.item_factors_, gram, item, conf)
        kept = fold_in(model.item_factors_, gram, item, conf, model._serving("gram_inverse"))
        np.testing.assert_allclose(kept, solved, rtol=1e-5, atol=1e-6 * np.abs(solved).max())
