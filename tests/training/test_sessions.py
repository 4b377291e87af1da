"""Anonymous sessions: next-item examples, sequential rules, and the served session model."""

from __future__ import annotations

import numpy as np
import pytest

from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
from retailrec.errors import BundleError, UsageError
from retailrec.models import Dataset, make_model
from retailrec.synthetic import synth
from retailrec.training import evaluate as ev
from retailrec.training.split import time_split
from retailrec.training.train import SEQUENCE_WEIGHTS, SESSION_GRID, Stage, tune_session
from tests.utils.factories import Shop, events_frame

T = 1_500_000_000_000
MIN = 60_000


def test_next_item_examples_and_sequential_rules_by_hand() -> None:
    # Two sessions of visitor 1 (an hour apart) and one of visitor 2.
    log = events_frame(
        [
            (T, 1, "view", 10, None),
            (T + MIN, 1, "view", 11, None),
            (T + 2 * MIN, 1, "view", 10, None),  # seen in the session: no example
            (T + 3 * MIN, 1, "view", 12, None),
            (T + 90 * MIN, 1, "view", 13, None),
            (T + 5 * MIN, 2, "view", 10, None),
            (T + 6 * MIN, 2, "view", 12, None),
        ]
    )
    examples = ev.next_item_examples(log)
    assert [(p.tolist(), t) for p, t in examples] == [
        ([10], 11),
        ([10, 11, 10], 12),
        ([10], 12),
    ]
    rules = ev.sequential_rules_ranker(log)
    # After 10: 11 (1 step, once) and 12 (1 step once, 2 steps once... by weight 1 + 1/2);
    # items of the session itself are left out, popularity fills the rest.
    assert rules(np.array([10]), 3).tolist() == [12, 11, 13]
    assert ev.session_hit_rate(rules, [(np.array([10]), 12)], 1) == 1.0
    assert ev.session_hit_rate(rules, [(np.array([10]), 11)], 1) == 0.0
    # Session-kNN: the sessions holding 10 are {10, 11, 12} and {10, 12}; by cosine with {10}
    # they weigh 1/sqrt(3) and 1/sqrt(2), so 12 scores both and 11 the first; then popularity.
    knn = ev.session_knn_ranker(log)
    assert knn(np.array([10]), 3).tolist() == [12, 11, 13]
    assert knn(np.array([99]), 2).tolist() == [10, 12]  # an unknown item: the popular ones
    # MRR: 12 at rank 1 and 11 at rank 2 of the rules' answer; 13 is not in a top 2.
    examples = [(np.array([10]), 12), (np.array([10]), 11), (np.array([10]), 13)]
    assert ev.session_scores(rules, examples, 2) == pytest.approx((2 / 3, (1 + 1 / 2) / 3))


@pytest.mark.slow
def test_the_served_session_model_beats_sequential_rules_on_a_short_log() -> None:
    """Five days of a shop (``small`` scale): the blend chosen on the validation sessions,
    served as the API answers anonymous sessions, beats sequential rules fitted on the same
    days."""
    shop = synth.generate(synth.config_for("small"), random_state=5)
    log = shop.events
    end = int(log["timestamp"].max())
    log = log[log["timestamp"] > end - 5 * 86_400_000]
    split = time_split(log, 1.25, 1.25)
    catalogue = item_catalogue(shop.item_properties)
    config = FeatureConfig()
    val = Stage.make("val", log, catalogue, split.val_start_ms, split.test_start_ms - 1, config)
    best = tune_session(val)
    assert {k: v for k, v in best.items() if k != "sequence_weight"} in SESSION_GRID
    assert best["sequence_weight"] in SEQUENCE_WEIGHTS
    test = Stage.make("test", log, catalogue, split.test_start_ms, split.end_ms, config)
    test.session_params = best
    rates = test.session_hit_rates()
    assert rates["session_examples"] >= 300
    for metric in ("hit_rate", "mrr"):
        assert rates[f"session_{metric}_at_20"] > rates[f"session_{metric}_at_20_sequential_rules"]


@pytest.mark.slow
def test_the_sequence_model_lifts_served_sessions_on_a_longer_log() -> None:
    """The whole ``small`` shop (138 days): the share of the sequence model chosen on the
    validation sessions lifts the served answers on the test week above the session model alone,
    and above sequential rules by the margins the quality issue asks of a real week."""
    shop = synth.generate(synth.config_for("small"), random_state=5)
    log = shop.events
    split = time_split(log, 7, 7)
    catalogue = item_catalogue(shop.item_properties)
    config = FeatureConfig()
    val = Stage.make("val", log, catalogue, split.val_start_ms, split.test_start_ms - 1, config)
    best = tune_session(val)
    assert best["sequence_weight"] > 0
    test = Stage.make("test", log, catalogue, split.test_start_ms, split.end_ms, config)
    test.session_params = best
    mixed = test.session_hit_rates()
    test.aux()["session"].sequence_weight = 0.0  # type: ignore[attr-defined]
    alone = test.session_hit_rates()
    assert mixed["session_hit_rate_at_20"] > alone["session_hit_rate_at_20"] + 0.02
    assert mixed["session_mrr_at_20"] > alone["session_mrr_at_20"]
    rules_hit = mixed["session_hit_rate_at_20_sequential_rules"]
    assert mixed["session_hit_rate_at_20"] >= 1.3 * rules_hit
    assert mixed["session_mrr_at_20"] >= 1.1 * mixed["session_mrr_at_20_sequential_rules"]


def test_blend_needs_the_fitted_signals(tiny_shop: Shop, tmp_path) -> None:
    data = Dataset.from_events(tiny_shop.data.events)
    # Fitting keeps the blend it was made with, the sequence model's share included.
    assert make_model("session", sequence_weight=0.5).fit(data).sequence_weight == 0.5  # type: ignore[attr-defined]
    model = make_model("session").fit(data)
    model.save(tmp_path / "s.pkl")
    loaded = type(model).load(tmp_path / "s.pkl")
    with pytest.raises(BundleError, match="refit"):
        loaded.blend(0.1, 0.0, 0.0)  # type: ignore[attr-defined]


def test_an_unknown_item_keeps_its_place_in_the_session(tiny_shop: Shop) -> None:
    """The latest item weighs 1 even when the model has never seen it: the items before it are
    older, not newer (sequential rules then fall back to popularity, as they should)."""
    data = Dataset.from_events(tiny_shop.data.events)
    model = make_model("session", decay=0.5).fit(data)
    row = model.session_row(np.array([3, 7, -1]))  # type: ignore[attr-defined]
    assert dict(zip(row.indices.tolist(), row.data.tolist(), strict=True)) == {3: 0.25, 7: 0.5}
    last_only = make_model("session", decay=0.0).fit(data)
    assert last_only.session_row(np.array([3, -1])).sum() == 0  # type: ignore[attr-defined]


def test_without_pytorch_the_session_blend_gets_no_sequence_share(
    tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving image leaves PyTorch out: training there fits no sequence model and gives it
    no share; a blend that asks for one is a clear error, not a crash in PyTorch's import."""
    from retailrec.training import train as tr

    monkeypatch.setattr(tr, "torch_installed", lambda: False)
    data = Dataset.from_events(tiny_shop.data.events)
    assert "sequence" not in tr.aux_models(data)
    events = tiny_shop.data.events.drop_duplicates()
    split = time_split(events)
    catalogue = item_catalogue(tiny_shop.data.item_properties, split.test_start_ms - 1)
    stage = Stage.make(
        "val", events, catalogue, split.val_start_ms, split.test_start_ms - 1, FeatureConfig()
    )
    assert tune_session(stage)["sequence_weight"] == 0.0
    assert stage.served().bundle.sequence is None
    with pytest.raises(UsageError, match="needs PyTorch"):
        tr.aux_models(data, session={"sequence_weight": 0.5})
