"""Fixtures for the API tests: a champion trained once on a tiny synthetic shop."""

from __future__ import annotations

import pytest

from retailrec import registry
from retailrec.config import Settings
from retailrec.training.train import TrainConfig, train
from tests.utils.factories import Shop, loaded_settings
from tests.utils.postgres import suite_store

KEY = "s3cret"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> Settings:
    settings = loaded_settings(
        tmp_path_factory.mktemp("api"), tiny_shop, api_key=KEY, store_url=suite_store()
    )
    train(settings, TrainConfig(models=("als",)))
    registry.promote(registry.configure(settings), settings.model_name)
    return settings
