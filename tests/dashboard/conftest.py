"""A tiny shop, trained, promoted and monitored once, for the dashboard tests."""

from __future__ import annotations

import pytest

from retailrec import registry
from retailrec.config import Settings
from retailrec.monitoring.monitor import run_monitor
from retailrec.training.train import TrainConfig, train
from tests.utils.factories import Shop, loaded_settings
from tests.utils.postgres import suite_store


@pytest.fixture(scope="session")
def shop_settings(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> Settings:
    settings = loaded_settings(
        tmp_path_factory.mktemp("dashboard"), tiny_shop, store_url=suite_store()
    )
    train(
        settings,
        TrainConfig(models=("popular_category", "itemknn_cosine"), truth_dir=tiny_shop.truth),
    )
    registry.promote(registry.configure(settings), settings.model_name)
    run_monitor(settings)
    return settings
