"""Session answers that mix the sequence model in: the mix by hand, its ends, and the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
from retailrec.errors import BundleError
from retailrec.models.base import SIGNAL_FLOOR
from retailrec.models.bundle import ModelBundle
from retailrec.serving.rules import Rules
from retailrec.serving.service import SESSION_DEPTH, RecommendationService
from retailrec.training import evaluate as ev
from retailrec.training.split import time_split
from retailrec.training.train import Stage
from tests.utils.factories import Shop

RULES = Rules(exclude_purchased=False)


@pytest.fixture(scope="module")
def stage(tiny_shop: Shop) -> Stage:
    events = tiny_shop.data.events.drop_duplicates()
    split = time_split(events)
    catalogue = item_catalogue(tiny_shop.data.item_properties, split.test_start_ms - 1)
    return Stage.make("test", events, catalogue, split.test_start_ms, split.end_ms, FeatureConfig())


def sessions(stage: Stage) -> list[np.ndarray]:
    """Prefixes of the window's sessions with an item the stage's models know."""
    known = set(stage.data.item_ids.tolist())
    examples = ev.next_item_examples(stage.window, max_examples=200)
    found = [p for p, _ in examples if known & set(p.tolist())][:40]
    assert len(found) >= 20
    return found


def with_weight(stage: Stage, weight: float) -> RecommendationService:
    """The stage's served bundle with the sequence model's share set (the stage's models are
    shared: the share holds until the next call)."""
    stage.aux()["session"].sequence_weight = weight  # type: ignore[attr-defined]
    return stage.served()


def test_no_share_is_the_session_model_and_a_full_share_the_sequence_model(stage: Stage) -> None:
    plain = with_weight(stage, 0.0)
    for items in sessions(stage):
        idx = plain.bundle.item_index(items)
        blocked = plain.rules.blocked(RULES, idx[idx >= 0], np.zeros(0, np.int64)).copy()
        blocked[idx[idx >= 0]] = True  # the session's own items
        got = plain.for_session(items.tolist(), 10, RULES)
        # The session model's own list (its signal only), then popular items.
        row = plain.bundle.session.session_row(idx)
        own, scores = plain.bundle.session.recommend_one(row, 10, blocked)
        own = own[scores > SIGNAL_FLOOR]
        assert got.items[: len(own)] == plain.bundle.item_ids[own].tolist()
    full = with_weight(stage, 1.0)
    alone = ev.sequence_ranker(full)
    for items in sessions(stage):
        assert full.for_session(items.tolist(), 10, RULES).items == alone(items, 10).tolist()


def test_a_mixed_answer_is_the_weighted_sum_of_the_two_models(stage: Stage) -> None:
    served = with_weight(stage, 0.4)
    b = served.bundle
    seq = b.sequence
    assert seq is not None
    for items in sessions(stage):
        idx = b.item_index(items)
        blocked = served.rules.blocked(RULES, idx[idx >= 0], np.zeros(0, np.int64)).copy()
        blocked[idx[idx >= 0]] = True
        s_items, s_scores = b.session.recommend_one(
            b.session.session_row(idx), SESSION_DEPTH, blocked
        )
        keep = s_scores > SIGNAL_FLOOR
        s_items, s_scores = s_items[keep], s_scores[keep]
        g_items = seq.recommend_one(seq.sequence_row(idx), SESSION_DEPTH, blocked)[0]
        union = np.union1d(s_items, g_items)
        logits = seq.item_scores(seq.sequence_row(idx), union)
        expected = 0.4 * np.exp(logits - logits.max())
        for item, score in zip(s_items, s_scores, strict=True):
            expected[np.searchsorted(union, item)] += 0.6 * score / s_scores.max()
        got = served.for_session(items.tolist(), 10, RULES)
        top = np.argsort(-expected, kind="stable")[:10]
        assert got.strategy == "session"
        assert got.items == b.item_ids[union[top]].tolist()
        np.testing.assert_allclose(got.scores, expected[top], rtol=1e-5)


def test_the_bundle_keeps_the_share_and_needs_the_model(stage: Stage, tmp_path: Path) -> None:
    served = with_weight(stage, 0.75)
    path = served.bundle.save(tmp_path / "bundle")
    loaded = ModelBundle.load(path)
    assert loaded.session.sequence_weight == 0.75
    again = RecommendationService(loaded, "t")
    for items in sessions(stage)[:10]:
        assert again.for_session(items.tolist(), 10, RULES) == served.for_session(
            items.tolist(), 10, RULES
        )
    (path / "sequence.pkl").unlink()
    with pytest.raises(BundleError, match="sequence model it lacks"):
        ModelBundle.load(path)
