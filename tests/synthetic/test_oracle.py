"""The oracle ranks by true preference, far above what popularity can do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retailrec.events import DAY_MS
from retailrec.synthetic.oracle import Oracle
from retailrec.synthetic.synth import FULL
from retailrec.training.evaluate import ndcg_at_k, recall_at_k
from tests.utils.factories import Shop


@pytest.fixture(scope="module")
def oracle(tiny_shop: Shop) -> Oracle:
    return Oracle.load(tiny_shop.truth)


def test_scores_are_a_probability_distribution_over_the_catalogue(
    tiny_shop: Shop, oracle: Oracle
) -> None:
    visitors = tiny_shop.data.truth_visitors["visitorid"].unique()[:50]
    for day in (0, 60, 137):
        s = oracle.scores(visitors, FULL["start_ms"] + day * DAY_MS)
        assert s.shape == (50, len(oracle.item_ids))
        assert (s >= 0).all()
        assert s.sum(axis=1) == pytest.approx(1.0, abs=1e-4)


def test_items_not_yet_introduced_score_zero(tiny_shop: Shop, oracle: Oracle) -> None:
    intro = (
        tiny_shop.data.truth_items.set_index("itemid")["intro_ms"].loc[oracle.item_ids].to_numpy()
    )
    s = oracle.scores(
        np.array([tiny_shop.data.truth_visitors["visitorid"].iloc[0]]), FULL["start_ms"]
    )
    assert (s[0, intro > FULL["start_ms"] + 7 * DAY_MS] == 0).all()


def test_recommend_follows_taste_and_skips_exclusions(tiny_shop: Shop, oracle: Oracle) -> None:
    taste = tiny_shop.data.truth_visitors
    vid = taste.groupby("visitorid")["weight"].max().idxmax()  # a visitor devoted to one category
    favourite = taste.loc[taste["visitorid"] == vid].sort_values("weight")["categoryid"].iloc[-1]
    as_of = FULL["start_ms"] + 100 * DAY_MS
    top = oracle.recommend(np.array([vid]), 10, as_of)[0]
    cat = tiny_shop.data.truth_items.set_index("itemid")["categoryid"]
    assert (cat.loc[top] == favourite).mean() >= 0.5
    again = oracle.recommend(np.array([vid]), 10, as_of, exclude=[top[:3]])[0]
    assert not set(top[:3]) & set(again)
    assert list(again[:7]) == list(top[3:10])


def test_popularity_scores_well_below_the_oracle(tiny_shop: Shop, oracle: Oracle) -> None:
    """The known answer: true tastes rank the test week far better than global popularity."""
    events = tiny_shop.data.events
    split = FULL["start_ms"] + (138 - 7) * DAY_MS
    train, test = events[events["timestamp"] < split], events[events["timestamp"] >= split]
    history = train.groupby("visitorid")["itemid"].unique()
    future = test.groupby("visitorid")["itemid"].unique()
    warm = future.index.intersection(history.index)
    assert len(warm) >= 30
    relevant = [np.setdiff1d(future[v], history[v]) for v in warm]
    popular = train["itemid"].value_counts().index.to_numpy()
    pop_rec = np.array([popular[~np.isin(popular, history[v])][:20] for v in warm])
    oracle_rec = oracle.recommend(warm.to_numpy(), 20, split, exclude=[history[v] for v in warm])

    pop_ndcg, oracle_ndcg = ndcg_at_k(pop_rec, relevant, 10), ndcg_at_k(oracle_rec, relevant, 10)
    assert oracle_ndcg > 0.2
    assert oracle_ndcg > 3 * pop_ndcg
    assert recall_at_k(oracle_rec, relevant, 20) > 2 * recall_at_k(pop_rec, relevant, 20)

    # Cold visitors too: the oracle knows their taste, popularity knows nothing about them.
    cold = future.index.difference(history.index)
    cold_rel = [future[v] for v in cold]
    pop_cold = np.tile(popular[:10], (len(cold), 1))
    assert ndcg_at_k(oracle.recommend(cold.to_numpy(), 10, split), cold_rel, 10) > 2 * ndcg_at_k(
        pop_cold, cold_rel, 10
    )


def test_load_rejects_a_folder_without_truth(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Oracle.load(tmp_path)
