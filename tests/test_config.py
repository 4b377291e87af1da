"""Settings come from the environment; importing the package has no heavy side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retailrec.config import Settings, get_settings


def test_paths_follow_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(tmp_path / "shop"))
    get_settings.cache_clear()
    s = get_settings()
    assert s.raw_dir == tmp_path / "shop" / "raw"
    assert s.rejected_dir == tmp_path / "shop" / "rejected"
    assert s.feature_store_path == tmp_path / "shop" / "feature_store.sqlite"
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'shop' / 'mlflow.db'}"
    assert s.model_name == "retailrec"


def test_mlflow_tracking_uri_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("RETAILREC_MODEL_NAME", "shop-a")
    monkeypatch.setenv("RETAILREC_API_KEY", "k")
    s = Settings()
    assert s.tracking_uri == "http://mlflow.internal:5000"
    assert s.model_name == "shop-a"
    assert s.api_key == "k"


def test_import_is_light_and_creates_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, retailrec, retailrec.cli, retailrec.config, retailrec.synthetic.synth; "
        "heavy = {'torch', 'mlflow', 'streamlit', 'implicit', 'fastapi'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []
