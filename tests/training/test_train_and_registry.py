"""Training end to end on a tiny shop: MLflow runs, registration, the promotion gate, rollback."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from retailrec import registry
from retailrec.config import Settings
from retailrec.errors import NoDataError, RegistryError
from retailrec.feature_store import store
from retailrec.serving.repeat import RepeatCurves
from retailrec.training.evaluate import Histories, evaluate, popularity_ranker
from retailrec.training.train import SEQUENCE_WEIGHTS, TrainConfig, train
from tests.utils.factories import Shop, loaded_settings, run_etl_on

pytestmark = pytest.mark.integration


def test_train_promote_gate_rollback(tmp_path: Path, tiny_shop: Shop) -> None:
    settings = loaded_settings(tmp_path, tiny_shop)
    first = train(settings, TrainConfig(models=("popular",), truth_dir=tiny_shop.truth))
    assert first.version == "1"
    assert {"oracle", "popular"} == set(first.table.index)
    oracle, popular = first.table.loc["oracle"], first.table.loc["popular"]
    # Served as champion, "popular" seeds returning visitors from their session: better than
    # the plain popularity order, which the oracle beats more than three times on the window.
    with store.open_store(settings.feature_store) as conn:
        log = store.read_events(conn)
    version = registry.configure(settings).get_model_version(settings.model_name, "1")
    start = int(version.tags["test_start_ms"])
    before = Histories(log[log["timestamp"] < start])
    plain = evaluate(popularity_ranker(before), before, log[log["timestamp"] >= start], n_items=1)
    assert oracle["test_ndcg_at_10"] > 3 * plain["ndcg_at_10"]
    assert popular["test_ndcg_at_10"] > plain["ndcg_at_10"]
    client = registry.configure(settings)
    name = settings.model_name

    assert registry.champion(client, name) is None
    result = registry.promote(client, name)
    assert result.promoted
    assert result.reason.startswith("first champion")

    better = train(settings, TrainConfig(models=("popular_category",)))
    tags = client.get_model_version(name, better.version).tags
    assert tags["gate_champion_version"] == "1"  # compared with the champion on the same window
    assert float(tags["gate_champion_ndcg_at_10"]) == pytest.approx(popular["test_ndcg_at_10"])
    assert registry.promote(client, name).promoted
    assert str(registry.champion(client, name).version) == "2"

    worse = train(settings, TrainConfig(models=("popular",)))
    refused = registry.promote(client, name, worse.version)
    assert not refused.promoted
    assert "does not beat champion 2" in refused.reason
    assert str(registry.champion(client, name).version) == "2"

    back = registry.rollback(client, name)
    assert (back.version, back.previous) == ("1", "2")
    assert str(registry.champion(client, name).version) == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(client, name)

    # The champion's bundle loads without the training data.
    bundle = registry.load_bundle(client, name, "1")
    assert bundle.metadata["model"] == "popular"
    assert bundle.n_items >= tiny_shop.data.events["itemid"].nunique()
    # The repeat curves measured on the validation window go with the bundle and its tags: on
    # this shop, a visitor's most weighed own item is likelier to come back than the first new
    # one (popularity) is to be touched.
    curves = RepeatCurves.from_metadata(bundle.metadata["repeat"])
    assert curves is not None and curves.visitors > 0
    assert curves.seen[0] > curves.new[0] > 0
    for curve in (curves.seen, curves.new):
        assert (np.diff(curve) <= 0).all()
    first_tags = client.get_model_version(name, "1").tags
    assert json.loads(first_tags["repeat_curves"]) == bundle.metadata["repeat"]
    # The session blend, the sequence model's share included, is the one chosen on validation,
    # and the sequence model goes with the bundle.
    blend = json.loads(first_tags["session_params"])
    assert blend["sequence_weight"] in SEQUENCE_WEIGHTS
    assert bundle.session.sequence_weight == blend["sequence_weight"]
    assert bundle.sequence is not None and bundle.sequence.n_items_ == bundle.n_items
    assert {"session_mrr_at_20", "session_hit_rate_at_20_session_knn"} <= set(first.sessions)

    # What was logged: the parent run with lineage, a nested run per model with DESIGN's names.
    runs = mlflow.search_runs(experiment_names=["retailrec"], output_format="pandas")
    parents = runs[runs["tags.role"] == "training"]
    assert len(parents) == 3
    assert parents["tags.data_fingerprint"].nunique() == 1
    assert parents["tags.git_commit"].notna().all()
    candidates = runs[runs["tags.role"] == "candidate"]
    assert {"metrics.ndcg_at_10", "metrics.recall_at_20", "metrics.val_ndcg_at_10"} <= set(
        candidates.columns
    )
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(first.run_id)]
    assert {"metrics.csv", "metrics.html"} <= set(artifacts)


def test_a_crash_while_promoting_keeps_the_old_champion(
    tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = loaded_settings(tmp_path, tiny_shop)
    train(settings, TrainConfig(models=("popular",)))
    client = registry.configure(settings)
    registry.promote(client, settings.model_name)
    train(settings, TrainConfig(models=("popular_category",)))

    def crash(*_args: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(client, "set_registered_model_alias", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        registry.promote(client, settings.model_name)
    monkeypatch.undo()
    current = registry.champion(client, settings.model_name)
    assert str(current.version) == "1"
    registry.load_bundle(client, settings.model_name, "1")


def test_a_stale_champion_is_scored_as_deployed_on_the_new_window(
    tmp_path: Path, tiny_shop: Shop
) -> None:
    events = tiny_shop.data.events
    cut = int(events["timestamp"].min()) + 100 * 86_400_000
    settings = loaded_settings(tmp_path, tiny_shop, events[events["timestamp"] < cut])
    old = train(settings, TrainConfig(models=("popular_category",)))
    client = registry.configure(settings)
    registry.promote(client, settings.model_name)
    events.to_csv(settings.raw_dir / "events.csv", index=False)  # five more weeks arrive
    run_etl_on(settings)
    new = train(settings, TrainConfig(models=("popular_category",)))
    tags = client.get_model_version(settings.model_name, new.version).tags
    assert tags["gate_champion_version"] == old.version
    stale = float(tags["gate_champion_ndcg_at_10"])
    fresh = float(tags["test_ndcg_at_10"])
    old_tags = client.get_model_version(settings.model_name, old.version).tags
    assert stale > 0
    assert stale != float(old_tags["test_ndcg_at_10"])  # scored on the new window, not its own
    assert registry.promote(client, settings.model_name).promoted == (fresh > stale)


def test_training_without_events_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store.connect(settings.feature_store).close()
    with pytest.raises(NoDataError, match="no events: run `retailrec etl` first"):
        train(settings, TrainConfig(models=("popular",)))


def test_configure_leaves_the_environment_as_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow exports the tracking URI to the environment; Settings read MLFLOW_TRACKING_URI as
    the user's override, so a second data dir in the same process would use the first's registry."""
    import os

    from retailrec.config import Settings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = Settings(data_dir=tmp_path / "a")
    registry.configure(first)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = Settings(data_dir=tmp_path / "b")
    assert second.tracking_uri != first.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "user.db"))
    registry.configure(Settings(data_dir=tmp_path / "c"))
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///" + str(tmp_path / "user.db")


def test_a_run_killed_while_registering_leaves_no_version_without_its_tags(
    tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version is created with its gate tags in one registry write: a training killed just
    after it (here, at the first separate tag write) cannot leave a version that promote
    refuses for lacking them."""
    from mlflow import MlflowClient

    settings = loaded_settings(tmp_path, tiny_shop)

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", killed)
    result = train(settings, TrainConfig(models=("popular",)))
    monkeypatch.undo()
    client = registry.configure(settings)
    tags = client.get_model_version(settings.model_name, result.version).tags
    assert {"test_ndcg_at_10", "model", "data_end_ms", registry.DIGEST_TAG} <= set(tags)
    assert registry.promote(client, settings.model_name).promoted


def test_runs_left_running_by_a_killed_training_are_marked_killed(
    tmp_path: Path, tiny_shop: Shop
) -> None:
    """A training killed mid-run leaves its MLflow runs RUNNING for ever; the next training
    marks those of processes that are gone as KILLED (a live one's are left alone)."""
    import os
    import subprocess
    import sys

    import mlflow

    settings = loaded_settings(tmp_path, tiny_shop)
    client = registry.configure(settings)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    assert experiment is not None
    stuck = client.create_run(experiment.experiment_id, tags=registry.process_tags(dead_pid))
    alive = client.create_run(experiment.experiment_id, tags=registry.process_tags(os.getpid()))
    train(settings, TrainConfig(models=("popular",)))
    assert client.get_run(stuck.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    finished = mlflow.search_runs([experiment.experiment_id], filter_string="status = 'RUNNING'")
    assert list(finished["run_id"]) == [alive.info.run_id]
