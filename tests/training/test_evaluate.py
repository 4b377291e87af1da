"""Ranking metrics against examples computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retailrec.training.evaluate import hit_rate_at_k, map_at_k, mrr_at_k, ndcg_at_k, recall_at_k

# User 0: hits at ranks 1 and 3 of 4 relevant items. User 1: one hit at rank 2.
# User 2: no hits. User 3: nothing relevant, so it is left out of every mean.
RECOMMENDED = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [1, 2, 3, 4]])
RELEVANT = [np.array([1, 3, 20, 21]), np.array([6]), np.array([30]), np.array([], dtype=int)]


def test_recall() -> None:
    # User 0 at k=3: 2 hits / min(3, 4) = 2/3; user 1: 1/1; user 2: 0.
    assert recall_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_ndcg() -> None:
    d = [1 / math.log2(r + 1) for r in range(1, 5)]
    user0 = (d[0] + d[2]) / (d[0] + d[1] + d[2] + d[3])
    user1 = d[1] / d[0]
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((user0 + user1 + 0) / 3)


def test_map() -> None:
    # User 0: precision 1/1 at rank 1, 2/3 at rank 3, over min(4, 4); user 1: 1/2 at rank 2.
    assert map_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx(((1 + 2 / 3) / 4 + 0.5 + 0) / 3)


def test_hit_rate_and_mrr() -> None:
    assert hit_rate_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx(2 / 3)
    assert hit_rate_at_k(RECOMMENDED, RELEVANT, 1) == pytest.approx(1 / 3)
    assert mrr_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_a_perfect_ranking_scores_one() -> None:
    rec = np.array([[7, 8, 9]])
    rel = [np.array([8, 7])]
    for metric in (recall_at_k, ndcg_at_k, map_at_k, hit_rate_at_k, mrr_at_k):
        assert metric(rec, rel, 3) == pytest.approx(1.0), metric.__name__


def test_rows_must_match_users() -> None:
    with pytest.raises(ValueError, match="2 rows of recommendations for 1 users"):
        ndcg_at_k(np.array([[1], [2]]), [np.array([1])], 1)
