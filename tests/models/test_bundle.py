"""The model bundle loads without training data and refuses broken folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retailrec.errors import BundleError
from retailrec.models import Dataset, make_model
from retailrec.models.bundle import ROLES, ModelBundle
from tests.utils.checkerboard import checkerboard_catalogue, checkerboard_events


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    data = Dataset.from_events(checkerboard_events(), checkerboard_catalogue())
    names = {
        "retrieval": "als",
        "similar": "itemknn_bm25",
        "session": "session",
        "bought_together": "bought_together",
        "popular": "popular",
        "popular_7d": "popular_7d",
    }
    models = {role: make_model(name).fit(data) for role, name in names.items()}
    return ModelBundle.from_dataset(models, data, {"model": "als"})


def test_round_trip(bundle: ModelBundle, tmp_path: Path) -> None:
    path = bundle.save(tmp_path / "b")
    again = ModelBundle.load(path)
    assert again.metadata == {"model": "als"}
    np.testing.assert_array_equal(again.item_ids, bundle.item_ids)
    row = again.models["session"].session_row(again.item_index(np.array([504, 506])))  # type: ignore[attr-defined]
    a, _ = again.models["session"].recommend(row, 5)
    b, _ = bundle.models["session"].recommend(row, 5)
    np.testing.assert_array_equal(a, b)
    assert again.item_index(np.array([504, 99999])).tolist() == [4, -1]


def test_saving_twice_replaces(bundle: ModelBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path / "b")
    bundle.save(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        [f"{r}.pkl" for r in ROLES] + ["bundle.json", "catalogue.npz"]
    )


def test_a_broken_bundle_is_refused(bundle: ModelBundle, tmp_path: Path) -> None:
    path = bundle.save(tmp_path / "b")
    (path / "similar.pkl").unlink()
    with pytest.raises(BundleError, match="not a loadable model bundle"):
        ModelBundle.load(path)
    (path / "similar.pkl").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a loadable model bundle"):
        ModelBundle.load(path)


def test_a_bundle_needs_every_role(bundle: ModelBundle) -> None:
    models = dict(bundle.models)
    del models["session"]
    with pytest.raises(BundleError, match="lacks model"):
        ModelBundle(models, bundle.item_ids, bundle.item_category, bundle.item_available)
