"""The factor models' serving scan: a chunk's best unblocked items, found without reading the
whole chunk's blocks where its best items are mostly free."""

from __future__ import annotations

import numpy as np
import pytest

from retailrec.models.factors import SPARE, _top_unblocked


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
    items, got = _top_unblocked(chunk, scores, blocked, n)
    free = ~blocked[chunk]
    want = np.argsort(-scores[free], kind="stable")[:n]
    assert sorted(items.tolist()) == sorted(chunk[free][want].tolist())
    assert sorted(got.tolist()) == sorted(scores[free][want].tolist())
    assert not blocked[items].any()


def test_a_chunk_with_fewer_unblocked_items_than_asked_gives_them_all() -> None:
    chunk = np.arange(100)
    scores = np.linspace(1, 0, 100).astype(np.float32)
    blocked = np.ones(100, dtype=bool)
    blocked[[3, 70]] = False
    items, _ = _top_unblocked(chunk, scores, blocked, 10)
    assert sorted(items.tolist()) == [3, 70]
