"""Quality against baselines on synthetic data with a known answer (``small`` scale)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retailrec.data_pipeline import synth
from retailrec.data_pipeline.readers import item_catalogue
from retailrec.models import Dataset, make_model
from retailrec.training.evaluate import evaluate, model_ranker
from retailrec.training.split import time_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small() -> tuple[Dataset, pd.DataFrame]:
    data = synth.generate(synth.config_for("small"), random_state=42)
    events = data.events.drop_duplicates()
    split = time_split(events)
    catalogue = item_catalogue(data.item_properties, split.test_start_ms - 1)
    return Dataset.from_events(
        split.train_val, catalogue, as_of_ms=split.test_start_ms - 1
    ), split.test


def test_models_beat_popularity_on_the_test_week(small: tuple[Dataset, pd.DataFrame]) -> None:
    """ALS, item-kNN and the two-tower model beat popularity (NDCG@10, any interaction, warm
    visitors); the best reaches at least 1.5x popularity."""
    data, test = small
    scores = {}
    for name in ("popular", "itemknn_cosine", "itemknn_bm25", "als", "two_tower"):
        model = make_model(name).fit(data)
        scores[name] = evaluate(model_ranker(model, data), data, test)["ndcg_at_10"]
    baseline = scores.pop("popular")
    for name, score in scores.items():
        assert score > baseline, (name, score, baseline)
    assert max(scores.values()) >= 1.5 * baseline
    assert np.isfinite(list(scores.values())).all()
