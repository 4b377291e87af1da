"""Served equals measured: what training logs for a model is what the API answers.

Train on the whole log; then, as the shop stood at the test window's start (a store holding only
the events and item properties from before it), train, promote and serve. Every returning test
visitor's answer from the API is the top-k that the evaluation scored, and the NDCG@10 computed
from the API's answers is the one logged in MLflow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from retailrec import registry
from retailrec.api.main import create_app
from retailrec.config import Settings
from retailrec.data_pipeline.feature_pipeline import FeatureConfig
from retailrec.feature_store import store
from retailrec.models import make_model
from retailrec.training.evaluate import ndcg_at_k
from retailrec.training.train import TrainConfig, prepare, train
from tests.utils.factories import Shop, run_etl_on
from tests.utils.postgres import suite_store

pytestmark = pytest.mark.integration
MODEL = "itemknn_bm25"


def _shop_dir(root: Path, shop: Shop, before_ms: int | None) -> Settings:
    """A data dir holding the shop's files, cut to what was known before ``before_ms``."""
    settings = Settings(data_dir=root / "data", store_url=suite_store())  # a store of its own
    settings.raw_dir.mkdir(parents=True)
    for name in ("events.csv", "item_properties.csv"):
        frame = pd.read_csv(shop.dir / name)
        if before_ms is not None:
            frame = frame[frame["timestamp"] < before_ms]
        frame.to_csv(settings.raw_dir / name, index=False)
    (settings.raw_dir / "category_tree.csv").write_bytes(
        (shop.dir / "category_tree.csv").read_bytes()
    )
    run_etl_on(settings)
    return settings


def test_the_api_answers_what_evaluation_scored(tmp_path: Path, tiny_shop: Shop) -> None:
    full = _shop_dir(tmp_path / "full", tiny_shop, None)
    trained = train(full, TrainConfig(models=(MODEL,)))
    client = registry.configure(full)
    tags = client.get_model_version(full.model_name, trained.version).tags
    start = int(tags["test_start_ms"])
    logged = mlflow.get_run(trained.run_id)  # the parent run; the model's own run is nested
    nested = mlflow.search_runs(
        experiment_ids=[logged.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{trained.run_id}' and tags.model = '{MODEL}'",
    )
    logged_ndcg = float(nested["metrics.ndcg_at_10"].iloc[0])
    assert logged_ndcg == pytest.approx(float(tags["test_ndcg_at_10"]), abs=1e-12)

    # The evaluation's own top-k lists for the test window (the same code, rerun).
    prep = prepare(full, TrainConfig(models=(MODEL,)), FeatureConfig())
    assert prep.test.start_ms == start
    lists: dict[str, np.ndarray] = {}
    rerun = prep.test.score(MODEL, {}, make_model(MODEL).fit(prep.test.data), lists)
    assert rerun["ndcg_at_10"] == logged_ndcg
    visitors, recommended = lists["visitors"], lists["recommended"]
    # The per-visitor values the noise band rests on average to the same figure.
    assert np.nanmean(lists["ndcg_at_10"]) == pytest.approx(logged_ndcg, abs=1e-12)
    assert len(visitors) >= 40

    # The shop as it stood at the window's start: trained, promoted and served.
    before = _shop_dir(tmp_path / "before", tiny_shop, start)
    with store.open_store(before.feature_store) as conn:
        assert store.shop_clock(conn) == prep.test.clock_ms
    version = train(before, TrainConfig(models=(MODEL,))).version
    assert registry.promote(registry.configure(before), before.model_name, version).promoted
    served: list[list[int]] = []
    with TestClient(create_app(before)) as api:
        for v in visitors:
            body = api.get(
                f"/v1/users/{int(v)}/recommendations", params={"k": 20, "exclude_seen": "true"}
            ).json()
            served.append([it["item_id"] for it in body["items"]])
    for v, got, scored in zip(visitors, served, recommended, strict=True):
        assert got == scored[scored >= 0].tolist(), v

    # NDCG@10 from the API's answers: truth = items touched in the window, not touched before.
    log = tiny_shop.data.events
    seen = log[log["timestamp"] < start].groupby("visitorid")["itemid"].unique()
    window = log[log["timestamp"] >= start].groupby("visitorid")["itemid"].unique()
    relevant = [np.setdiff1d(window[v], seen.get(v, [])) for v in visitors]
    from_api = ndcg_at_k(np.array(served), relevant, 10)
    assert round(from_api, 4) == round(logged_ndcg, 4)
