"""Fixtures for the API tests: a champion trained once on a tiny synthetic shop."""

from __future__ import annotations

import pytest

from retailrec.config import Settings
from retailrec.data_pipeline import etl
from retailrec.feature_store import store
from retailrec.training import registry
from retailrec.training.train import TrainConfig, train
from tests.utils.factories import Shop

KEY = "s3cret"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> Settings:
    root = tmp_path_factory.mktemp("api")
    settings = Settings(data_dir=root / "data", api_key=KEY)
    settings.raw_dir.mkdir(parents=True)
    for name in ("events.csv", "item_properties.csv", "category_tree.csv"):
        (settings.raw_dir / name).write_bytes((tiny_shop.dir / name).read_bytes())
    with store.open_store(settings.feature_store_path) as conn:
        etl.run_etl(
            settings.raw_dir,
            conn=conn,
            rejected_dir=settings.rejected_dir,
            processed_dir=settings.processed_dir,
        )
    train(settings, TrainConfig(models=("als",)))
    registry.promote(registry.configure(settings), settings.model_name)
    return settings
