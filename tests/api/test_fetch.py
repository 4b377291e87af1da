"""The API reads the registry through a child process (retailrec.serving.fetch): MLflow never
enters the serving process, and what the child checked is checked again before it loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retailrec.config import Settings
from retailrec.errors import BundleError, RegistryError
from retailrec.serving import holder as holder_module
from retailrec.serving.fetch import fetch
from retailrec.serving.holder import ModelHolder

pytestmark = pytest.mark.integration


def test_the_serving_process_never_imports_mlflow(trained: Settings) -> None:
    """The API, started on a registry's champion and reloaded, answers without MLflow loaded."""
    script = textwrap.dedent(
        """
        import sys
        from fastapi.testclient import TestClient
        from retailrec.api.main import create_app
        with TestClient(create_app()) as client:
            assert client.get("/v1/model").status_code == 200
            reload = client.post("/v1/admin/reload", headers={"X-API-Key": sys.argv[1]})
            assert reload.status_code == 200, reload.text
            assert client.get("/v1/users/1/recommendations").status_code == 200
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "sqlalchemy")))
        """
    )
    env = {**os.environ, "RETAILREC_DATA_DIR": str(trained.data_dir)}
    env["RETAILREC_API_KEY"] = str(trained.api_key)
    done = subprocess.run(
        [sys.executable, "-c", script, str(trained.api_key)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_child_gives_the_champion_and_its_checksum(trained: Settings, tmp_path: Path) -> None:
    version, path, digest = fetch(trained, None, tmp_path)
    assert version == "1" and (path / "bundle.json").is_file()
    assert path.is_relative_to(tmp_path) and len(digest) == 64
    with pytest.raises(RegistryError, match="version 99"):  # MLflow's error, as ours
        fetch(trained, "99", tmp_path / "other")


def test_files_changed_after_the_childs_check_are_refused(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fetch_then_change(settings: Settings, version: str | None, dest: Path) -> object:
        found = fetch(settings, version, dest)
        bundle_json = found[1] / "bundle.json"
        bundle_json.write_bytes(bundle_json.read_bytes() + b" ")
        return found

    holder = ModelHolder(trained)
    served, _ = holder.load()
    monkeypatch.setattr(holder_module, "fetch", fetch_then_change)
    with pytest.raises(BundleError, match="changed after they were checked"):
        holder.load()
    assert holder.current is served  # the old one keeps serving
