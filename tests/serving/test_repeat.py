"""Repeat interest: the curves, the merge, and the served answer that allows seen items."""

from __future__ import annotations

import numpy as np
import pytest

from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
from retailrec.events import DAY_MS
from retailrec.models import make_model
from retailrec.models.bundle import ModelBundle
from retailrec.serving.repeat import DEPTH, RepeatCurves, position_curve
from retailrec.serving.rules import Rules
from retailrec.serving.service import RecommendationService
from retailrec.synthetic import synth
from retailrec.training import evaluate as ev
from retailrec.training.backtest import revisits
from retailrec.training.split import time_split
from retailrec.training.train import Stage, assemble
from tests.utils.factories import Shop, events_frame

T = 1_500_000_000_000
DAY = 86_400_000


def test_a_position_curve_leans_on_the_pooled_rate_and_never_rises() -> None:
    # 5, 7 and 2 hits of 10: pooled 14/30; each rate shrunk by 10 visitors of the pooled rate
    # gives (0.483, 0.583, 0.333), and the rise at the second position is pooled away.
    curve = position_curve(np.array([5, 7, 2]), np.array([10, 10, 10]))
    np.testing.assert_allclose(curve, [0.5333, 0.5333, 0.3333], atol=1e-4)
    # A position no visitor reached is the pooled rate, not zero (then pooled with the rest).
    assert position_curve(np.array([2, 0]), np.array([4, 0]))[1] > 0


def test_the_merge_takes_the_likelier_next_item_and_ties_go_to_the_new_one() -> None:
    curves = RepeatCurves(np.array([0.3, 0.1]), np.array([0.2, 0.05]), 100)
    items, scores, placed = curves.merge([1, 2, 3], [9, 8], 4)
    assert items == [9, 1, 8, 2]
    assert scores == pytest.approx([0.3, 0.2, 0.1, 0.05])  # past a curve's end: its last value
    assert placed == 2
    tie = RepeatCurves(np.array([0.2]), np.array([0.2]), 1)
    assert tie.merge([1], [9], 2)[0] == [1, 9]
    assert tie.merge([1, 2], [], 5)[0] == [1, 2]  # fewer than k: what there is
    back = RepeatCurves.from_metadata(curves.to_metadata())
    assert back is not None and back.merge([1, 2, 3], [9, 8], 4) == (items, scores, placed)
    assert RepeatCurves.from_metadata(None) is None


@pytest.fixture(scope="module")
def served(tiny_shop: Shop) -> tuple[RecommendationService, Stage]:
    events = tiny_shop.data.events.drop_duplicates()
    split = time_split(events)
    catalogue = item_catalogue(tiny_shop.data.item_properties, split.test_start_ms - 1)
    config = FeatureConfig()
    stage = Stage.make("test", events, catalogue, split.test_start_ms, split.end_ms, config)
    model = make_model("itemknn_bm25").fit(stage.data)
    bundle = assemble(stage.data, "itemknn_bm25", {}, model, stage.aux())
    bundle.metadata["repeat"] = RepeatCurves(
        np.linspace(0.3, 0.01, DEPTH), np.linspace(0.2, 0.02, DEPTH), 500
    ).to_metadata()
    return RecommendationService(bundle, "t"), stage


def _with_curves(service: RecommendationService, seen: float | None) -> RecommendationService:
    b = service.bundle
    meta = dict(b.metadata)
    meta["repeat"] = (
        None
        if seen is None
        else RepeatCurves(np.full(DEPTH, seen), np.full(DEPTH, 0.5), 1).to_metadata()
    )
    return RecommendationService(
        ModelBundle(b.models, b.item_ids, b.item_category, b.item_available, meta), "t"
    )


def _returning(stage: Stage, n: int = 40) -> list[int]:
    """Returning visitors of the window with several items before it."""
    counts = stage.histories.events.groupby("visitorid")["itemid"].nunique()
    window = set(stage.window["visitorid"].tolist())
    return [int(v) for v in counts[counts >= 3].index if v in window][:n]


def test_an_answer_that_allows_seen_items_is_the_new_answer_merged_with_the_visitors_own(
    served: tuple[RecommendationService, Stage],
) -> None:
    service, stage = served
    plain = _with_curves(service, None)
    curves = service.repeat
    assert curves is not None
    visitors = _returning(stage)
    assert len(visitors) >= 10
    placed_any = False
    for v in visitors:
        history = stage.histories.get(v)
        new = service.for_history(history, 10, ev.EVAL_RULES, stage.clock_ms)
        # exclude_seen=true: the curves change nothing.
        assert new == plain.for_history(history, 10, ev.EVAL_RULES, stage.clock_ms)
        p = service.prepare(history)
        seen = service.seen_items(p, service.rules.blocked(Rules(), p.cols, p.purchased), 10)
        answer = service.for_history(history, 10, Rules(), stage.clock_ms)
        items, scores, placed = curves.merge(new.items, service._ids(seen.tolist()), 10)
        assert (answer.items, answer.scores) == (items, scores)
        assert answer.strategy == ("personalized" if placed else new.strategy)
        bought = set(history.itemid[history.event_code == 2].tolist())
        assert not bought & set(answer.items)  # exclude_purchased, as by default
        assert scores == sorted(scores, reverse=True)
        placed_any |= placed > 0
    assert placed_any


def test_seen_items_lead_or_sink_as_the_curves_say(
    served: tuple[RecommendationService, Stage],
) -> None:
    service, stage = served
    keen, never = _with_curves(service, 0.9), _with_curves(service, 0.0)
    for v in _returning(stage, 10):
        history = stage.histories.get(v)
        p = service.prepare(history)
        blocked = service.rules.blocked(Rules(), p.cols, p.purchased)
        seen = service._ids(service.seen_items(p, blocked, len(p.cols)).tolist())
        assert set(seen) == set(service._ids(p.cols[~blocked[p.cols]].tolist()))
        # Highest confidence first, at the clock and years later: the most weighed item leads.
        for clock in (max(stage.clock_ms, p.newest_ms), p.newest_ms + 3 * 365 * DAY_MS):
            row = service.history_row(p, clock)
            conf = dict(zip(service._ids(row.indices.tolist()), row.data.tolist(), strict=True))
            assert [conf[i] for i in seen] == sorted((conf[i] for i in seen), reverse=True)
        first = keen.for_history(history, 10, Rules(), stage.clock_ms).items
        assert first[: min(10, len(seen))] == seen[:10]
        last = never.for_history(history, 10, Rules(), stage.clock_ms).items
        assert not set(last) & set(seen)


def test_revisits_count_pairs_touched_before() -> None:
    before = events_frame(
        [(T, 1, "view", 10, None), (T, 1, "view", 11, None), (T, 2, "view", 10, None)]
    )
    window = events_frame(
        [
            (T + DAY, 1, "view", 10, None),  # again
            (T + DAY, 1, "view", 10, None),  # the same pair: counted once
            (T + DAY, 1, "view", 12, None),  # new
            (T + DAY, 2, "view", 13, None),  # new
            (T + DAY, 3, "view", 10, None),  # a new visitor: not a returning one
        ]
    )
    out = revisits(ev.Histories(before), window)
    assert out == {"revisit_share": 1 / 3, "visitors_with_revisit": 0.5, "returning_visitors": 2}


@pytest.mark.slow
def test_curves_fitted_on_validation_beat_every_single_list_on_all_items() -> None:
    """A shop whose visitors come back to items (``small`` scale: about 28% of returning
    visitors' pairs in a week are re-visits). Curves fitted on the validation window, served on
    the test week with ``exclude_seen=false``: NDCG@10 over every item touched beats the same
    bundle without curves (the retrieval model ranks seen items with the rest), the new items
    alone, the visitor's own items alone, and implicit's BM25 item-kNN allowed seen items."""
    shop = synth.generate(synth.config_for("small"), random_state=42)
    events = shop.events.drop_duplicates()
    split = time_split(events)
    config = FeatureConfig()

    def stage(name: str, start: int, end: int) -> Stage:
        catalogue = item_catalogue(shop.item_properties, start - 1)
        return Stage.make(name, events, catalogue, start, end, config)

    val = stage("val", split.val_start_ms, split.test_start_ms - 1)
    test = stage("test", split.test_start_ms, split.end_ms)
    per_visitor: dict[str, np.ndarray] = {}
    val.score("ease", {}, make_model("ease").fit(val.data), per_visitor)
    curves = ev.repeat_curves(
        val.served(),
        val.histories,
        val.window,
        per_visitor["visitors"],
        per_visitor["hits_at_rank"],
    )
    assert curves.seen[0] > curves.new[0]  # here, a visitor's top own item is the likelier
    bundle = assemble(test.data, "ease", {}, make_model("ease").fit(test.data), test.aux())
    bundle.metadata["repeat"] = curves.to_metadata()
    service = RecommendationService(bundle, "t")
    h, clock = test.histories, test.clock_ms

    def ndcg(rank: ev.Ranker) -> float:
        return ev.evaluate(rank, h, test.window, n_items=bundle.n_items, exclude_seen=False)[
            "ndcg_at_10"
        ]

    merged = ndcg(ev.served_ranker(service, h, clock, Rules()))
    others = {
        "without curves": ndcg(ev.served_ranker(_with_curves(service, None), h, clock, Rules())),
        "new items only": ndcg(ev.served_ranker(service, h, clock, ev.EVAL_RULES)),
        "recently viewed": ndcg(ev.recently_viewed_ranker(h)),
        "bm25 with seen": ndcg(ev.bm25_ranker(h, exclude_seen=False)),
    }
    assert all(merged > v for v in others.values()), (merged, others)
