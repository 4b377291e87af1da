"""The only code that talks to MLflow's model registry.

Each trained bundle becomes a new version of the registered model ``RETAILREC_MODEL_NAME``. The
alias ``champion`` marks what the API serves. Moving it is a single registry update, so a crash
leaves either the old or the new champion in place, both loadable. The order of champions is
kept in the registered model's tag ``champion_history`` for :func:`rollback`.

Promotion is gated: a version carries, in its tags, its own score on the primary metric over its
test window and the score of the champion of the day on the *same* window (computed at training
time). :func:`promote` moves the alias only when the first beats the second and that champion is
still the champion.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel

from retailrec.config import Settings
from retailrec.errors import (
    BundleError,
    NoChampionError,
    RegistryError,
    RetailRecError,
    error_line,
)
from retailrec.models.bundle import ModelBundle, folder_digest

log = logging.getLogger(__name__)

EXPERIMENT = "retailrec"
CHAMPION = "champion"
HISTORY_TAG = "champion_history"
#: Tag of a version trained on a log too short to evaluate (its value says why).
UNEVALUATED_TAG = "unevaluated"
#: Tags of a run: the process and host that run it (to find runs whose process was killed).
PID_TAG, HOST_TAG = "retailrec.pid", "retailrec.host"
#: Tag of a version: the SHA-256 of its bundle's files, recorded when it is registered.
DIGEST_TAG = "bundle_sha256"
#: Tag of a version the gate promoted: an HMAC of (name, version, digest) under the registry
#: key, which lives beside the data (never among MLflow's artifacts). Anyone can edit tags or
#: move the alias in MLflow's UI; nobody without the key can make a version look approved.
APPROVAL_TAG = "gate_approval"


class GatedClient(MlflowClient):
    """MLflow's client, holding the key that signs and checks the gate's approvals."""

    def __init__(self, uri: str, gate_key: bytes) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.gate_key = gate_key


def _gate_key(settings: Settings) -> bytes:
    """``RETAILREC_REGISTRY_KEY``, else ``<data dir>/registry.key``, made once (owner-only)."""
    if settings.registry_key:
        return settings.registry_key.encode()
    path = settings.data_dir / "registry.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    return path.read_bytes().strip()


def _approval(client: MlflowClient, name: str, version: str, digest: str) -> str:
    key = client.gate_key if isinstance(client, GatedClient) else b""
    return hmac.new(key, f"{name}\n{version}\n{digest}".encode(), hashlib.sha256).hexdigest()


def approved(client: MlflowClient, mv: ModelVersion) -> bool:
    """Whether the gate promoted this version (its approval checks out under the key)."""
    digest, given = mv.tags.get(DIGEST_TAG), mv.tags.get(APPROVAL_TAG)
    if not digest or not given:
        return False
    return hmac.compare_digest(given, _approval(client, mv.name, str(mv.version), digest))


def configure(settings: Settings) -> GatedClient:
    """Point MLflow at the settings' store and make sure the experiment exists."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow sets its logger to INFO when imported; a quiet caller stays quiet.
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("mlflow").setLevel(logging.ERROR)
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    user_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URIs to the environment, where Settings would read them back as the
    # user's override: one data dir's registry would then follow the process to the next.
    for key, value in user_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        settings.mlartifacts_dir.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(
            EXPERIMENT, artifact_location=settings.mlartifacts_dir.resolve().as_uri()
        )
    mlflow.set_experiment(EXPERIMENT)
    return GatedClient(uri, _gate_key(settings))


class BundleModel(PythonModel):
    """MLflow pyfunc wrapper: ``item_ids`` lists in, recommended item ids out (session model)."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[list[int]]:
        k = int((params or {}).get("k", 10))
        session = self.bundle.session
        out = []
        for items in model_input["item_ids"]:
            row = session.session_row(self.bundle.item_index(np.asarray(items)))
            idx, _ = session.recommend(row, k)
            out.append([int(self.bundle.item_ids[i]) for i in idx[0] if i >= 0])
        return out


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags that say which process a run belongs to (see :func:`mark_killed_runs`)."""
    return {PID_TAG: str(os.getpid() if pid is None else pid), HOST_TAG: socket.gethostname()}


def mark_killed_runs(client: MlflowClient) -> list[str]:
    """Mark KILLED the runs left RUNNING by processes of this host that are gone (a training
    killed mid-run never ends its runs); returns their ids. Runs of live processes, or of
    other hosts, are left alone."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    host, marked = socket.gethostname(), []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        try:
            os.kill(int(tags[PID_TAG]), 0)
        except ProcessLookupError:
            client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_id)
        except PermissionError:  # alive, another user's
            continue
    if marked:
        log.warning("marked %d run(s) of killed processes as KILLED", len(marked))
    return marked


def register_bundle(
    client: MlflowClient, settings: Settings, bundle_dir: Path, tags: dict[str, str]
) -> str:
    """Log ``bundle_dir`` as a pyfunc model in the active run, register it with ``tags`` (and the
    bundle's checksum), return the version.

    The version is created with its tags in one registry write: a process killed at any point
    leaves either no version or one that carries everything the gate reads.
    """
    info = mlflow.pyfunc.log_model(
        name="bundle",
        python_model=BundleModel(),
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=_requirements(),
        input_example=pd.DataFrame({"item_ids": [[0]]}),
    )
    tags = {**tags, DIGEST_TAG: folder_digest(bundle_dir)}
    mv = mlflow.register_model(info.model_uri, settings.model_name, tags=tags)
    return str(mv.version)


def _requirements() -> list[str]:
    req = Path(__file__).resolve().parents[3] / "requirements.txt"
    if req.is_file():
        return [
            line.strip()
            for line in req.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return ["retailrec"]


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version the ``champion`` alias points to, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def latest_version(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def download_bundle(client: MlflowClient, name: str, version: str, dest: Path) -> Path:
    """Copy a version's bundle folder into ``dest`` and return its path (the folder with
    bundle.json)."""
    mv = client.get_model_version(name, version)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest)))
    found = next((p.parent for p in root.rglob("bundle.json")), None)
    if found is None:
        raise RegistryError(f"version {version} of {name} holds no bundle")
    return found


@dataclass
class PromotionResult:
    promoted: bool
    version: str
    previous: str | None
    reason: str


def _tag_float(mv: ModelVersion, key: str) -> float | None:
    value = mv.tags.get(key)
    return None if value in (None, "") else float(value)


def promote(
    client: MlflowClient, name: str, version: str | None = None, primary_metric: str = "ndcg_at_10"
) -> PromotionResult:
    """Move ``champion`` to ``version`` (default: the latest) if it beats the current champion.

    Raises:
        RegistryError: no such version, or the version lacks the gate's tags.
    """
    latest = latest_version(client, name) if version is None else None
    if version is None and latest is None:
        raise RegistryError(f"no registered versions of {name}: run `retailrec train` first")
    try:  # a search result may lack tags: read the version itself
        mv = client.get_model_version(name, version or latest.version)  # type: ignore[union-attr]
    except MlflowException as exc:
        raise RegistryError(f"no version {version} of {name}") from exc
    current = champion(client, name)
    version, current_version = str(mv.version), None if current is None else str(current.version)
    if UNEVALUATED_TAG in mv.tags:
        # No evidence either way: it may stand in for no champion, never replace one.
        if current_version is not None:
            return PromotionResult(
                False,
                version,
                current_version,
                f"version {version} was not evaluated ({mv.tags[UNEVALUATED_TAG]}); the champion"
                " stays",
            )
        _set_champion(client, name, version)
        return PromotionResult(
            True, version, None, f"first champion, unevaluated: {mv.tags[UNEVALUATED_TAG]}"
        )
    score = _tag_float(mv, f"test_{primary_metric}")
    if score is None:
        raise RegistryError(f"version {version} has no test_{primary_metric} tag to gate on")
    if current_version == version:
        return PromotionResult(
            False, version, current_version, f"version {version} is already the champion"
        )
    baseline = _tag_float(mv, f"gate_champion_{primary_metric}")
    if current_version is not None:
        if mv.tags.get("gate_champion_version") != current_version or baseline is None:
            return PromotionResult(
                False,
                version,
                current_version,
                f"version {version} was not compared with champion {current_version} on its test "
                "window: retrain to compare them",
            )
        if not score > baseline:
            return PromotionResult(
                False,
                version,
                current_version,
                f"{primary_metric} {score:.4f} does not beat champion {current_version}'s "
                f"{baseline:.4f} on the same test window",
            )
    _set_champion(client, name, version)
    reason = (
        f"first champion, {primary_metric} {score:.4f}"
        if current_version is None
        else f"{primary_metric} {score:.4f} beats champion {current_version}'s {baseline:.4f}"
    )
    return PromotionResult(True, version, current_version, reason)


def _history(client: MlflowClient, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "[]")
    return [str(v) for v in json.loads(raw)]


def _set_champion(client: MlflowClient, name: str, version: str) -> None:
    digest = client.get_model_version(name, version).tags.get(DIGEST_TAG)
    if not digest:
        raise RegistryError(
            f"version {version} of {name} has no {DIGEST_TAG} tag (registered before bundles were"
            " checksummed): retrain to register a version that can be promoted"
        )
    client.set_model_version_tag(
        name, version, APPROVAL_TAG, _approval(client, name, version, digest)
    )
    history = [v for v in _history(client, name) if v != version] + [version]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(name, CHAMPION, version)  # the single, atomic switch


def rollback(client: MlflowClient, name: str) -> PromotionResult:
    """Move ``champion`` back to the version that held it before the current one."""
    current = champion(client, name)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    version, history = str(current.version), _history(client, name)
    if version not in history or history.index(version) == 0:
        raise RegistryError(f"no earlier champion of {name} to roll back to")
    previous = history[history.index(version) - 1]
    client.set_registered_model_alias(name, CHAMPION, previous)  # the single, atomic switch
    client.set_registered_model_tag(
        name, HISTORY_TAG, json.dumps(history[: history.index(version)])
    )
    return PromotionResult(True, previous, version, f"champion back to version {previous}")


def load_bundle(
    client: MlflowClient, name: str, version: str, *, require_approval: bool = False
) -> ModelBundle:
    """A version's bundle, loaded into memory, once its files match the checksum recorded at
    registration (and, with ``require_approval``, once the gate's approval checks out): nothing
    is unpickled before that. The download goes to a temporary folder that is removed before
    this returns, whether the bundle loads or not.

    Raises:
        RegistryError: not approved by the gate; BundleError: changed since registration.
    """
    with tempfile.TemporaryDirectory(prefix=f"{name}-v{version}-") as tmp:
        path, _digest = verified_download(
            client, name, version, Path(tmp), require_approval=require_approval
        )
        return ModelBundle.load(path)


def verified_download(
    client: MlflowClient, name: str, version: str, dest: Path, *, require_approval: bool
) -> tuple[Path, str]:
    """A version's bundle folder downloaded into ``dest``, once the gate's approval checks out
    (with ``require_approval``) and its files match the checksum recorded at registration:
    ``(folder, checksum)``. Nothing in it is unpickled.

    Raises:
        RegistryError: not approved by the gate; BundleError: changed since registration.
    """
    mv = client.get_model_version(name, version)
    if require_approval and not approved(client, mv):
        log.error(
            "refused version %s of %s: it carries no valid approval of the gate", version, name
        )
        raise RegistryError(
            f"version {version} of {name} carries no valid approval of the gate (was the champion"
            " alias moved, or a tag edited, by hand?): refused; promote it with `retailrec"
            " promote`"
        )
    path = download_bundle(client, name, version, dest)
    expected, found = mv.tags.get(DIGEST_TAG), folder_digest(path)
    if expected != found:
        log.error(
            "refused version %s of %s: its bundle's checksum %s is not the registered %s",
            version,
            name,
            found[:12],
            (expected or "(none)")[:12],
        )
        raise BundleError(
            f"version {version} of {name}: the bundle's files are not those registered"
            " (checksum mismatch): refused"
        )
    return path, found


def fetch_approved(settings: Settings, version: str | None, dest: Path) -> tuple[str, Path, str]:
    """What the API serves, fetched for it in a child process (see
    :meth:`retailrec.serving.holder.ModelHolder.load`): ``version`` (default: the champion),
    approved by the gate and checksummed, downloaded into ``dest``:
    ``(version, folder, checksum)``.

    Errors come back as RetailRec's own (an MLflow error would make the parent import MLflow to
    read it).

    Raises:
        NoChampionError: no champion; RegistryError: not approved, or the registry failed;
        BundleError: the files changed since registration.
    """
    try:
        client = configure(settings)
        if version is None:
            found = champion(client, settings.model_name)
            if found is None:
                raise NoChampionError(
                    f"no champion for {settings.model_name}: run `retailrec pipeline`"
                )
            version = str(found.version)
        path, digest = verified_download(
            client, settings.model_name, version, dest, require_approval=True
        )
    except RetailRecError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"the registry failed to give version {version or 'champion'} of"
            f" {settings.model_name}: {type(exc).__name__}: {error_line(exc)}"
        ) from None
    return version, path, digest


# -- read-only views for the dashboard ------------------------------------------------------------

#: Metrics shown side by side for every run (the test window; ``val_*`` are logged too).
RUN_METRICS = (
    "ndcg_at_10",
    "recall_at_20",
    "ndcg_at_10_buy",
    "hit_rate_at_10",
    "coverage_at_10",
    "fit_seconds",
)


def runs_table(client: MlflowClient) -> pd.DataFrame:
    """Every model run (candidates and the oracle), newest training first: ``training_run``,
    ``started`` (UTC), ``model``, ``role`` and the test-window metrics of :data:`RUN_METRICS`."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    columns = ["training_run", "started", "model", "role", *RUN_METRICS]
    if experiment is None:
        return pd.DataFrame(columns=columns)
    runs = client.search_runs(
        [experiment.experiment_id], "tags.role != 'training'", max_results=5000
    )
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        rows.append(
            {
                "training_run": tags.get("mlflow.parentRunId", run.info.run_id),
                "started": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
                "model": tags.get("model", run.info.run_name),
                "role": tags.get("role", "candidate"),
                **{m: metrics.get(m) for m in RUN_METRICS},
            }
        )
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows, columns=columns).sort_values("started", ascending=False)


def versions_table(client: MlflowClient, name: str) -> pd.DataFrame:
    """Registered versions: ``version``, ``created`` (UTC), ``model``, ``test_ndcg_at_10``,
    ``champion`` (now) and ``was_champion`` (in the champion history, oldest first)."""
    columns = ["version", "created", "model", "test_ndcg_at_10", "champion", "was_champion"]
    try:
        versions = client.search_model_versions(f"name = '{name}'")
        history = _history(client, name)
    except MlflowException:
        return pd.DataFrame(columns=columns)
    current = champion(client, name)
    rows = [
        {
            "version": str(mv.version),
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
            "model": mv.tags.get("model"),
            "test_ndcg_at_10": _tag_float(mv, "test_ndcg_at_10"),
            "champion": current is not None and str(current.version) == str(mv.version),
            "was_champion": str(mv.version) in history,
        }
        for mv in (client.get_model_version(name, v.version) for v in versions)
    ]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("version", key=lambda v: v.astype(int), ascending=False)


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Versions that held the champion alias, oldest first (what ``rollback`` walks back)."""
    try:
        return _history(client, name)
    except MlflowException:
        return []
