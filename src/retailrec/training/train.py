"""``retailrec train``: fit, evaluate, log to MLflow, register a bundle.

1. Read the event log and the catalogue from the feature store (the source serving reads too).
2. Split it once in time: train | validation (7 days) | test (7 days).
3. For each candidate model: fit on train only, score validation (selection, tuning) and test
   (the reported numbers; visitors' histories run up to the test week, the model does not). On
   synthetic data the oracle is scored on the same windows.
4. Log a parent run (data fingerprint, git commit, a metrics table and chart) and one nested run
   per model (params, ``val_*`` and test metrics, fit time).
5. Score the current champion on the same test window, for the promotion gate.
6. Refit the best configuration on all the data, so what is served knows the latest week; bundle
   it with the similar-items, session, bought-together and popularity models; register it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retailrec.config import Settings
from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.data_pipeline.oracle import Oracle
from retailrec.feature_store import store
from retailrec.models import Dataset, make_model
from retailrec.models.base import BaseRecommender
from retailrec.models.bundle import ModelBundle
from retailrec.training import evaluate as ev
from retailrec.training.split import TimeSplit, time_split

log = logging.getLogger(__name__)

#: Candidates for the personalised (retrieval) role, in the order they are tried.
DEFAULT_MODELS = (
    "popular",
    "popular_category",
    "itemknn_cosine",
    "itemknn_bm25",
    "als",
    "bpr",
    "two_tower",
)
#: Every model that can be the personalised one (``popular_7d`` is served as a fallback anyway).
CANDIDATES = (*DEFAULT_MODELS, "popular_7d")
PRIMARY_METRIC = "ndcg_at_10"
#: Models that need PyTorch, which a serving image may leave out.
NEEDS_TORCH = ("two_tower",)


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def default_models() -> tuple[str, ...]:
    """:data:`DEFAULT_MODELS`, less the ones that need PyTorch where it is not installed."""
    if torch_installed():
        return DEFAULT_MODELS
    return tuple(m for m in DEFAULT_MODELS if m not in NEEDS_TORCH)


@dataclass
class TrainConfig:
    models: tuple[str, ...] = field(default_factory=default_models)
    trials: int = 0
    primary_metric: str = PRIMARY_METRIC
    test_days: float = 7
    val_days: float = 7
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TrainResult:
    version: str
    best_model: str
    best_params: dict[str, Any]
    table: pd.DataFrame  # one row per model (and the oracle): val and test metrics
    run_id: str
    champion_metric: float | None


def fingerprint(events: pd.DataFrame) -> str:
    """A short hash of the event log's content, to tell which data a model saw."""
    h = hashlib.sha256()
    for col in ("timestamp", "visitorid", "itemid"):
        h.update(np.ascontiguousarray(events[col].to_numpy(np.int64)).tobytes())
    h.update("".join(events["event"].astype("str").str[0]).encode())
    return h.hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fit(name: str, params: dict[str, Any], data: Dataset) -> tuple[BaseRecommender, float]:
    start = time.perf_counter()
    model = make_model(name, **params).fit(data)
    return model, time.perf_counter() - start


def bundle_ranker(bundle: ModelBundle, data: Dataset) -> ev.Ranker:
    """Rank with a bundle's retrieval model, given histories indexed by another dataset."""
    col_map = bundle.item_index(data.item_ids)
    keep = col_map >= 0
    to_bundle = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (np.flatnonzero(keep), col_map[keep])),
        shape=(data.n_items, bundle.n_items),
    )
    model = bundle.models["retrieval"]
    unavailable = np.flatnonzero(~bundle.item_available)

    def rank(visitor_ids: np.ndarray, history: sp.csr_matrix, n: int) -> np.ndarray:
        items, _ = model.recommend(history @ to_bundle, n, filter_items=unavailable)
        return np.where(items >= 0, bundle.item_ids[np.maximum(items, 0)], -1)

    return rank


@dataclass
class _Prepared:
    events: pd.DataFrame
    split: TimeSplit
    train: Dataset
    train_val: Dataset
    catalogue_all: pd.DataFrame
    oracle: Oracle | None


def prepare(settings: Settings, config: TrainConfig, feature_config: fp.FeatureConfig) -> _Prepared:
    with store.open_store(settings.feature_store_path) as conn:
        events = store.read_events(conn)
        if events.empty:
            raise ValueError("the feature store has no events: run `retailrec etl` first")
        split = time_split(events, config.test_days, config.val_days)
        cat_val = fp.item_category_as_of(conn, split.val_start_ms - 1)
        cat_all = fp.item_category_as_of(conn, None)
    train = Dataset.from_events(
        split.train, cat_val, as_of_ms=split.val_start_ms - 1, config=feature_config
    )
    # Test-week histories run up to its start, in the training catalogue: the models stay fitted
    # on the training part only.
    train_val = train.with_history(split.train_val, split.test_start_ms - 1, feature_config)
    truth = settings.raw_dir / "truth"
    oracle = Oracle.load(truth) if (truth / "params.json").is_file() else None
    return _Prepared(events, split, train, train_val, cat_all, oracle)


def train(
    settings: Settings,
    config: TrainConfig | None = None,
    feature_config: fp.FeatureConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole training procedure described in the module docstring."""
    import mlflow

    from retailrec.training import registry, tune

    config = config or TrainConfig()
    feature_config = feature_config or fp.FeatureConfig()
    step = progress or (lambda _s: None)
    unknown = [m for m in config.models if m not in CANDIDATES]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}"
        )
    torchless = [m for m in config.models if m in NEEDS_TORCH]
    if torchless and not torch_installed():
        raise ValueError(
            f"{', '.join(torchless)} needs PyTorch, which is not installed here "
            "(pip install torch==2.13.0, or build the image with --build-arg WITH_TORCH=1)"
        )
    step("reading the feature store")
    prep = prepare(settings, config, feature_config)
    split = prep.split
    client = registry.configure(settings)
    rows: list[dict[str, Any]] = []
    chosen_params: dict[str, dict[str, Any]] = {}
    data_fp, commit = fingerprint(prep.events), git_commit()

    with mlflow.start_run(run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.set_tags({"git_commit": commit, "data_fingerprint": data_fp, "role": "training"})
        mlflow.log_params(
            {
                "n_events": len(prep.events),
                "val_start_ms": split.val_start_ms,
                "test_start_ms": split.test_start_ms,
                "end_ms": split.end_ms,
                "models": ",".join(config.models),
                "trials": config.trials,
                "event_weights": json.dumps(dict(feature_config.event_weights)),
                "recency_half_life_days": feature_config.recency_half_life_days,
            }
        )
        if prep.oracle is not None:
            step("scoring the oracle")
            val = ev.evaluate(
                ev.oracle_ranker(prep.oracle, prep.train, split.val_start_ms),
                prep.train,
                split.val,
                personal_cold=True,
            )
            test = ev.evaluate(
                ev.oracle_ranker(prep.oracle, prep.train_val, split.test_start_ms),
                prep.train_val,
                split.test,
                personal_cold=True,
            )
            rows.append(_row("oracle", {}, val, test, 0.0))
            with mlflow.start_run(run_name="oracle", nested=True):
                mlflow.set_tag("role", "oracle")
                mlflow.log_metrics({**test, **{f"val_{k}": v for k, v in val.items()}})

        for name in config.models:
            params = dict(config.params.get(name, {}))
            if config.trials and name in tune.SPACES:
                step(f"tuning {name} ({config.trials} trials)")
                params |= tune.tune(
                    name, prep.train, split.val, config.trials, config.primary_metric
                )
            step(f"fitting {name}")
            model, seconds = _fit(name, params, prep.train)
            val = ev.evaluate(ev.model_ranker(model, prep.train), prep.train, split.val)
            test = ev.evaluate(ev.model_ranker(model, prep.train_val), prep.train_val, split.test)
            chosen_params[name] = {**model.params(), **params}
            rows.append(_row(name, chosen_params[name], val, test, seconds))
            with mlflow.start_run(run_name=name, nested=True):
                mlflow.set_tags({"role": "candidate", "model": name})
                mlflow.log_params(chosen_params[name])
                mlflow.log_metrics(
                    {**test, **{f"val_{k}": v for k, v in val.items()}, "fit_seconds": seconds}
                )
                if hasattr(model, "train_stats_"):
                    mlflow.log_metrics({f"train_{k}": v for k, v in model.train_stats_.items()})

        table = pd.DataFrame(rows).set_index("model")
        candidates = table.drop(index="oracle", errors="ignore")
        best = str(candidates[f"val_{config.primary_metric}"].idxmax())
        mlflow.set_tag("best_model", best)
        _log_table(table, config.primary_metric)

        step("scoring the champion on the same window")
        champion_metric, champion_version = _champion_on_window(client, settings, prep, config)

        step(f"refitting {best} on all the data")
        bundle = _bundle(prep, best, chosen_params[best], candidates, feature_config)
        bundle.metadata |= {
            "run_id": parent.info.run_id,
            "test_metrics": {
                k: float(v) for k, v in table.loc[best].items() if k.startswith("test_")
            },
            "data_fingerprint": data_fp,
        }
        with tempfile.TemporaryDirectory() as tmp:
            bundle_dir = bundle.save(Path(tmp) / "bundle")
            tags = {
                "model": best,
                "params": json.dumps(chosen_params[best], sort_keys=True, default=str),
                "test_start_ms": str(split.test_start_ms),
                "end_ms": str(split.end_ms),
                "data_end_ms": str(split.end_ms),
                "data_fingerprint": data_fp,
                "git_commit": commit,
                **{k: repr(float(v)) for k, v in table.loc[best].items() if k.startswith("test_")},
            }
            if champion_version is not None and champion_metric is not None:
                tags["gate_champion_version"] = champion_version
                tags[f"gate_champion_{config.primary_metric}"] = repr(champion_metric)
            step("registering the bundle")
            version = registry.register_bundle(client, settings, bundle_dir, tags)
    return TrainResult(
        version, best, chosen_params[best], table, parent.info.run_id, champion_metric
    )


def _row(
    name: str, params: dict[str, Any], val: dict[str, float], test: dict[str, float], seconds: float
) -> dict[str, Any]:
    return {
        "model": name,
        "params": json.dumps(params, sort_keys=True, default=str),
        "fit_seconds": seconds,
        **{f"val_{k}": v for k, v in val.items()},
        **{f"test_{k}": v for k, v in test.items()},
    }


def _log_table(table: pd.DataFrame, primary: str) -> None:
    import mlflow
    import plotly.graph_objects as go

    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "metrics.csv"
        table.to_csv(csv)
        mlflow.log_artifact(str(csv))
        shown = [
            f"test_{m}" for m in ("ndcg_at_10", "recall_at_20", "ndcg_at_10_buy", "hit_rate_at_10")
        ]
        fig = go.Figure(
            [
                go.Bar(name=m.removeprefix("test_"), x=table.index.tolist(), y=table[m].tolist())
                for m in shown
            ]
        )
        fig.update_layout(barmode="group", title=f"Test-window metrics (primary: {primary})")
        html = Path(tmp) / "metrics.html"
        fig.write_html(str(html), include_plotlyjs="cdn")
        mlflow.log_artifact(str(html))


def _champion_on_window(
    client: Any, settings: Settings, prep: _Prepared, config: TrainConfig
) -> tuple[float | None, str | None]:
    """The current champion's primary metric on this run's test window (None without one)."""
    from retailrec.training import registry

    current = registry.champion(client, settings.model_name)
    if current is None:
        return None, None
    split, key = prep.split, f"test_{config.primary_metric}"
    same_window = current.tags.get("test_start_ms") == str(
        split.test_start_ms
    ) and current.tags.get("end_ms") == str(split.end_ms)
    version = str(current.version)
    if same_window and key in current.tags:
        return float(current.tags[key]), version
    if int(current.tags.get("data_end_ms", split.end_ms)) < split.test_start_ms:
        # The deployed champion never saw this test window: score it as it is.
        path = registry.download_bundle(client, settings.model_name, version)
        bundle = ModelBundle.load(path)
        metrics = ev.evaluate(bundle_ranker(bundle, prep.train_val), prep.train_val, split.test)
        registry.clear_download_cache(path)
        return metrics[config.primary_metric], version
    # It saw part of this window: score its configuration refitted on this split instead.
    name, params = (
        current.tags.get("model", "popular"),
        json.loads(current.tags.get("params", "{}")),
    )
    model, _ = _fit(name, params, prep.train)
    metrics = ev.evaluate(ev.model_ranker(model, prep.train_val), prep.train_val, split.test)
    return metrics[config.primary_metric], version


def _bundle(
    prep: _Prepared,
    best: str,
    params: dict[str, Any],
    candidates: pd.DataFrame,
    feature_config: fp.FeatureConfig,
) -> ModelBundle:
    """Fit the served models on all the data, up to the last event."""
    data = Dataset.from_events(prep.events, prep.catalogue_all, config=feature_config)
    similar = "itemknn_bm25"
    if {"itemknn_bm25", "itemknn_cosine"} <= set(candidates.index):
        key = f"val_{PRIMARY_METRIC}"
        if candidates.loc["itemknn_cosine", key] > candidates.loc["itemknn_bm25", key]:
            similar = "itemknn_cosine"
    models = {
        "retrieval": make_model(best, **params).fit(data),
        "similar": make_model(similar).fit(data),
        "session": make_model("session").fit(data),
        "bought_together": make_model("bought_together").fit(data),
        "popular": make_model("popular").fit(data),
        "popular_7d": make_model("popular_7d").fit(data),
    }
    metadata = {
        "model": best,
        "params": params,
        "similar_model": similar,
        "trained_at_ms": int(time.time() * 1000),
        "data_end_ms": data.as_of_ms,
        "n_events": len(prep.events),
        "event_weights": dict(feature_config.event_weights),
        "recency_half_life_days": feature_config.recency_half_life_days,
    }
    return ModelBundle.from_dataset(models, data, metadata)
