"""EASE's lambda, chosen on the validation window through the serving path, and kept when given."""

from __future__ import annotations

from pathlib import Path

import pytest

from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
from retailrec.models import make_model
from retailrec.models.ease import EASERecommender
from retailrec.training.split import time_split
from retailrec.training.train import EASE_GRID, Stage, TrainConfig, train, tune_ease
from tests.utils.factories import Shop, loaded_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stage(tiny_shop: Shop) -> Stage:
    events = tiny_shop.data.events.drop_duplicates()
    split = time_split(events)
    catalogue = item_catalogue(tiny_shop.data.item_properties, split.test_start_ms - 1)
    return Stage.make("val", events, catalogue, split.test_start_ms, split.end_ms, FeatureConfig())


def test_lambda_is_chosen_from_the_grid_and_beats_the_untuned_default(stage: Stage) -> None:
    tuned, _seconds = tune_ease(stage, {})
    lam = tuned.params()["lam"]
    scale = EASERecommender().fit(stage.data).lambda_scale()
    assert any(lam == pytest.approx(f * scale) for f in EASE_GRID)
    # The model returned is solved for that lambda: it answers as one fitted with it.
    refit = make_model("ease", lam=lam).fit(stage.data)
    assert abs(tuned.similarity_ - refit.similarity_).max() == 0.0
    score = stage.score("ease", {"lam": lam}, tuned)
    default = stage.score("ease", {}, make_model("ease").fit(stage.data))
    assert score["ndcg_at_10"] >= default["ndcg_at_10"]


def test_training_tunes_lambda_unless_it_is_given(tmp_path: Path, tiny_shop: Shop) -> None:
    settings = loaded_settings(tmp_path, tiny_shop)
    given = train(settings, TrainConfig(models=("ease",), params={"ease": {"lam": 7.0}}))
    assert given.best_model == "ease"
    assert given.best_params["lam"] == 7.0
    tuned = train(settings, TrainConfig(models=("ease",)))
    assert tuned.best_params["lam"] != 7.0
    assert tuned.best_params["max_items"] == 4096
