"""``retailrec train``: fit, evaluate through the serving path, log to MLflow, register a bundle.

1. Read the event log and the catalogue from the feature store (the source serving reads too).
2. Split it once in time: train | validation | test, windows sized to the log
   (:func:`~retailrec.training.split.choose_windows`; at most 7 days each).
3. For each candidate model, twice: fitted on everything before the validation window and scored
   on it (selection, tuning), then fitted on everything before the test window and scored on it
   (the reported numbers and the promotion gate). Each score comes from the serving path: the
   model is bundled as the API would serve it (:func:`assemble`) and every returning visitor is
   answered by :meth:`~retailrec.serving.service.RecommendationService.for_history` with the
   history the store held at the window's start and the shop's clock then, with
   ``exclude_seen``; the truth is what they touched in the window that they had not touched
   before. On synthetic data the oracle is scored on the same windows.
4. Choose the best on validation; within the noise band, the simpler model (:func:`select`).
5. Log a parent run (data fingerprint, git commit, windows, a metrics table and chart) and one
   nested run per model (params, ``val_*`` and test metrics, fit time).
6. Score the current champion on the same test window, for the promotion gate.
7. Refit the chosen configuration on all the data, so what is served knows the latest days;
   bundle it with the similar-items, session, bought-together and popularity models; register it.

With ``engine="spark"`` ALS fits on Apache Spark (MLlib, ``ALSRecommender(engine="spark")``) on
one session for the whole run; everything else is the same, evaluation included.

A log too short for any split still gets a bundle: popularity and the item-to-item models fitted
on all of it, registered as unevaluated (it becomes champion only where there is none).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from retailrec.config import Settings
from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.errors import DataFileError, LogTooShortError, NoDataError, UsageError
from retailrec.events import DAY_MS, utc_text
from retailrec.feature_store import store
from retailrec.models import Dataset, make_model
from retailrec.models.base import BaseRecommender
from retailrec.models.bundle import ModelBundle
from retailrec.models.ranker import CandidateRanker
from retailrec.serving.service import RecommendationService
from retailrec.training import evaluate as ev
from retailrec.training import two_stage
from retailrec.training.split import (
    MIN_TEST_VISITORS,
    TimeSplit,
    Windows,
    choose_windows,
    time_split,
)

if TYPE_CHECKING:
    from retailrec.synthetic.oracle import Oracle

log = logging.getLogger(__name__)

#: Candidates for the personalised (retrieval) role, in the order they are tried.
DEFAULT_MODELS = (
    "popular",
    "popular_category",
    "itemknn_cosine",
    "itemknn_bm25",
    "ease",
    "als",
    "bpr",
    "two_tower",
    "ranker",
)
#: Every model that can be the personalised one (``popular_7d`` is served as a fallback anyway).
#: ``ranker`` is the two-stage answer: a learned ranker over the candidates of the best other
#: model and the bundle's item-to-item, session and popularity models (:mod:`.two_stage`).
CANDIDATES = (*DEFAULT_MODELS, "popular_7d")
#: Never the ranker's base: the models that only count events (they are its sources anyway),
#: and those that score the whole catalogue for each answer: the two-tower model, and BPR, whose
#: vector lengths do not bound its scores (11 ms for a base's 50 items on the full shop, against
#: about 0.4 for EASE, ALS or item-kNN; docs/BENCHMARKS.md).
NOT_A_BASE = ("popular", "popular_7d", "popular_category", "two_tower", "bpr")
PRIMARY_METRIC = "ndcg_at_10"
#: Models that need PyTorch, which a serving image may leave out (so does the sequence model,
#: which ``aux_models`` fits only where PyTorch is installed).
NEEDS_TORCH = ("two_tower",)
#: Where training runs: ``embedded`` (in process), or ``spark``, where the models in
#: :data:`ON_SPARK` fit on Apache Spark (the others have no distributed fit and stay in process).
ENGINES = ("embedded", "spark")
ON_SPARK = ("als",)


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
    #: Window sizes in days; None: sized to the log (see :func:`~.split.choose_windows`).
    test_days: float | None = None
    val_days: float | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The synthetic shop's ``truth/`` folder: score the oracle beside the models (a test
    #: instrument: only the synthetic generator writes one).
    truth_dir: Path | None = None
    #: One of :data:`ENGINES`.
    engine: str = "embedded"


@dataclass
class TrainResult:
    version: str
    best_model: str
    best_params: dict[str, Any]
    table: pd.DataFrame  # one row per model (and the oracle): val and test metrics
    run_id: str
    champion_metric: float | None
    windows: Windows | None = None
    #: Why nothing was evaluated, when the log is too short for a split.
    note: str = ""
    #: Next-item HitRate@20 on the test window's sessions: served, and sequential rules.
    sessions: dict[str, float] = field(default_factory=dict)


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


#: Simplest first: when candidates are within the noise band of each other, the first of them in
#: this order is chosen (fewer parameters, fewer ways to be wrong on next week's visitors).
SIMPLICITY = (
    "popular",
    "popular_7d",
    "popular_category",
    "itemknn_bm25",
    "itemknn_cosine",
    "ease",
    "als",
    "bpr",
    "two_tower",
    "ranker",
)


#: The session blends tried on the validation window's sessions (decay, co-occurrence weight,
#: popularity weight), plainest first: a tie keeps the earlier.
SESSION_GRID = tuple(
    {"decay": d, "cooc_weight": c, "pop_weight": p}
    for p in (0.0, 0.005, 0.02, 0.1)
    for c in (0.0, 0.01)
    for d in (0.4, 0.1, 0.7, 0.0)
)


def aux_models(
    data: Dataset, similar: str = "itemknn_bm25", session: dict[str, Any] | None = None
) -> dict[str, BaseRecommender]:
    """The similar-items, session, bought-together and popularity (overall, recent, in the
    visitor's categories) models, fitted on ``data``; and the sequence model that the session
    answers mix in, where PyTorch is installed to train it (a serving image may leave it out:
    the session blend then gets no sequence share)."""
    models = {
        "similar": make_model(similar).fit(data),
        "session": make_model("session", **(session or {})).fit(data),
        "bought_together": make_model("bought_together").fit(data),
        "popular": make_model("popular").fit(data),
        "popular_7d": make_model("popular_7d").fit(data),
        "popular_category": make_model("popular_category").fit(data),
    }
    if torch_installed():
        models["sequence"] = make_model("sequence").fit(data)
    elif models["session"].sequence_weight > 0:  # type: ignore[attr-defined]
        raise UsageError(
            "the session blend mixes in the sequence model, which needs PyTorch: not installed"
            " here (pip install torch==2.13.0, or build the image with --build-arg WITH_TORCH=1)"
        )
    return models


def assemble(
    data: Dataset,
    name: str,
    params: dict[str, Any],
    retrieval: BaseRecommender,
    aux: dict[str, BaseRecommender],
    similar: str = "itemknn_bm25",
) -> ModelBundle:
    """The bundle the API would serve: ``retrieval`` plus ``aux``, over ``data``'s catalogue, with
    the weights and half-life its histories are weighed with. Evaluation and registration both
    build bundles here, so what is scored is what is served."""
    metadata = {
        "model": name,
        "params": params,
        "similar_model": similar,
        "trained_at_ms": int(time.time() * 1000),
        "data_end_ms": data.as_of_ms,
        "n_events": len(data.events),
        "event_weights": dict(data.config.event_weights),
        "recency_half_life_days": data.config.recency_half_life_days,
    }
    return ModelBundle.from_dataset({"retrieval": retrieval, **aux}, data, metadata)


@dataclass
class Stage:
    """A window to score on, and the shop as it stood when the window began.

    ``data`` holds every event before ``start_ms``, weighed at ``clock_ms`` (the newest of them:
    the shop's clock then), with the catalogue as stated then; ``histories`` is what the store
    held for each visitor. A model fitted on ``data`` and served over ``histories`` at
    ``clock_ms`` is exactly what the API would have answered at the window's start.
    """

    name: str
    start_ms: int
    clock_ms: int
    window: pd.DataFrame
    data: Dataset
    histories: ev.Histories
    #: The session model's blend (default: the model's own).
    session_params: dict[str, Any] | None = None
    _aux: dict[str, BaseRecommender] | None = None

    @classmethod
    def make(
        cls,
        name: str,
        events: pd.DataFrame,
        catalogue: pd.DataFrame,
        start_ms: int,
        end_ms: int,
        config: fp.FeatureConfig,
    ) -> Stage:
        ts = events["timestamp"].to_numpy()
        before = events[ts < start_ms]
        clock = int(before["timestamp"].max())
        data = Dataset.from_events(before, catalogue, as_of_ms=clock, config=config)
        del before  # the dataset's frame holds the same events (and the columns it indexed)
        return cls(
            name,
            start_ms,
            clock,
            events[(ts >= start_ms) & (ts <= end_ms)].reset_index(drop=True),
            data,
            # The same events: the store's order is the history's own, and a second copy of
            # the frame cost 108 MiB a window on the full shop.
            ev.Histories(data.events),
        )

    @classmethod
    def in_store(
        cls,
        settings: Settings,
        name: str,
        events: pd.DataFrame,
        start_ms: int,
        end_ms: int,
        config: fp.FeatureConfig,
    ) -> Stage:
        """:meth:`make` with the catalogue as the store stated it just before ``start_ms``."""
        catalogue = _catalogue(settings, start_ms - 1)
        return cls.make(name, events, catalogue, start_ms, end_ms, config)

    def aux(self) -> dict[str, BaseRecommender]:
        if self._aux is None:
            self._aux = aux_models(self.data, session=self.session_params)
        return self._aux

    def served(
        self,
        name: str = "popular",
        params: dict[str, Any] | None = None,
        model: BaseRecommender | None = None,
    ) -> RecommendationService:
        """The bundle the API would serve, built on this stage (``model``, fitted on
        :attr:`data`, as the personalised role; popularity by default)."""
        aux = self.aux()
        bundle = assemble(self.data, name, params or {}, model or aux["popular"], aux)
        return RecommendationService(bundle, "evaluation")

    def session_hit_rates(self, k: int = 20) -> dict[str, float]:
        """Next-item HitRate@k and MRR@k on the window's sessions: the served answers to
        ``POST /v1/sessions/recommendations``; the sequence model alone; and sequential rules
        and session-kNN computed on the same days before the window."""
        served = self.served()
        rankers = ev.session_rankers(
            ev.served_session_ranker(served), served, self.histories.events
        )
        rates = ev.session_comparison(rankers, ev.next_item_examples(self.window), k)
        out = {"session_examples": rates["examples"]}
        for name in rankers:
            suffix = "" if name == "served" else f"_{name}"
            out[f"session_hit_rate_at_{k}{suffix}"] = rates[name]
            out[f"session_mrr_at_{k}{suffix}"] = rates[f"{name}_mrr"]
        return out

    def score_bundle(
        self, bundle: ModelBundle, per_visitor: dict[str, np.ndarray] | None = None
    ) -> dict[str, float]:
        """Metrics of a bundle served over this stage's histories at its clock."""
        return self._evaluate(RecommendationService(bundle, "evaluation"), per_visitor)

    def _evaluate(
        self, served: RecommendationService, per_visitor: dict[str, np.ndarray] | None
    ) -> dict[str, float]:
        return ev.evaluate(
            ev.served_ranker(served, self.histories, self.clock_ms),
            self.histories,
            self.window,
            n_items=served.bundle.n_items,
            per_visitor=per_visitor,
        )

    def score(
        self,
        name: str,
        params: dict[str, Any],
        model: BaseRecommender,
        per_visitor: dict[str, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Metrics of ``model`` (fitted on :attr:`data`) as the personalised role of a bundle."""
        return self._evaluate(self.served(name, params, model), per_visitor)


@dataclass
class _Prepared:
    events: pd.DataFrame
    split: TimeSplit
    windows: Windows
    val: Stage
    test: Stage
    catalogue_all: pd.DataFrame
    oracle: Oracle | None  # only when asked to score against a synthetic shop's truth


def _catalogue(settings: Settings, as_of_ms: int | None) -> pd.DataFrame:
    with store.open_store(settings.feature_store) as conn:
        return fp.item_category_as_of(conn, as_of_ms)


def read_log(settings: Settings) -> pd.DataFrame:
    with store.open_store(settings.feature_store) as conn:
        events = store.read_events(conn)
    if events.empty:
        raise NoDataError("the feature store has no events: run `retailrec etl` first")
    return events


def prepare(
    settings: Settings,
    config: TrainConfig,
    feature_config: fp.FeatureConfig,
    events: pd.DataFrame | None = None,
) -> _Prepared:
    """Read the log, choose the windows and build the validation and test stages.

    Raises:
        LogTooShortError: no split fits the log.
    """
    events = read_log(settings) if events is None else events
    windows = choose_windows(events, config.test_days, config.val_days)
    split = time_split(events, windows.test_days, windows.val_days)
    val = Stage.in_store(
        settings, "val", events, split.val_start_ms, split.test_start_ms - 1, feature_config
    )
    test = Stage.in_store(
        settings, "test", events, split.test_start_ms, split.end_ms, feature_config
    )
    oracle = None
    if config.truth_dir is not None:  # asked for: score against a synthetic shop's truth
        from retailrec.synthetic.oracle import Oracle

        if not (config.truth_dir / "params.json").is_file():
            raise DataFileError(
                f"{config.truth_dir}: no params.json (a synthetic shop's truth/ folder, written"
                " by `retailrec synth`)"
            )
        oracle = Oracle.load(config.truth_dir)
    return _Prepared(events, split, windows, val, test, _catalogue(settings, None), oracle)


#: The sequence model's shares of the served session answer tried after the blend (none first).
SEQUENCE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def tune_session(stage: Stage, k: int = 20, max_examples: int = 2_000) -> dict[str, Any]:
    """The session blend whose served answers to the stage's window sessions have the best
    next-item HitRate@k + MRR@k: first the session model's own (:data:`SESSION_GRID`), then the
    sequence model's share (:data:`SEQUENCE_WEIGHTS`). The stage's session model is left
    blended so."""
    from retailrec.models.item_item import SessionRecommender

    session = stage.aux()["session"]
    assert isinstance(session, SessionRecommender)
    examples = ev.next_item_examples(stage.window, max_examples=max_examples)
    served = stage.served()

    def quality() -> float:
        return sum(ev.session_scores(ev.served_session_ranker(served), examples, k))

    best, best_rate = {**SESSION_GRID[0], "sequence_weight": 0.0}, -1.0
    for params in SESSION_GRID if examples else ():
        session.blend(**params)
        rate = quality()
        if rate > best_rate:
            best, best_rate = {**params, "sequence_weight": 0.0}, rate
    for weight in SEQUENCE_WEIGHTS[1:] if examples and "sequence" in stage.aux() else ():
        session.blend(**{**best, "sequence_weight": weight})
        rate = quality()
        if rate > best_rate:
            best, best_rate = {**best, "sequence_weight": weight}, rate
    session.blend(**best)
    stage.session_params = best
    return best


#: EASE's lambda is chosen among these multiples of the Gram matrix's mean diagonal (the
#: average item's total squared confidence), so the grid fits any log's confidence scale.
EASE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def tune_ease(
    stage: Stage, params: dict[str, Any], primary: str = PRIMARY_METRIC
) -> tuple[BaseRecommender, float]:
    """EASE fitted on the stage's data with the lambda of :data:`EASE_GRID` whose served
    ``primary`` metric on the stage's window is best (one Gram matrix, one solve per lambda),
    and its fit time: the validation model, not fitted twice."""
    from retailrec.models.ease import EASERecommender

    model, seconds = _fit("ease", params, stage.data)
    assert isinstance(model, EASERecommender)
    scale = model.lambda_scale()
    best, best_score = float(model.lam), -1.0
    for factor in EASE_GRID:
        lam = factor * scale
        score = stage.score("ease", {**params, "lam": lam}, model.with_lambda(lam))[primary]
        log.info("EASE lambda %.4g: validation %s %.4f", lam, primary, score)
        if score > best_score:
            best, best_score = lam, score
    return model.with_lambda(best), seconds


def select(
    table: pd.DataFrame, per_visitor: dict[str, np.ndarray], primary: str
) -> tuple[str, dict[str, str]]:
    """The model to serve, and why, from validation metrics.

    The best on validation wins unless simpler models (:data:`SIMPLICITY`) are within the noise
    band of it: then the simplest of those. The band is two standard errors of the per-visitor
    difference on the same visitors (paired; for NDCG@10) or ``1/sqrt(n)`` otherwise.

    Returns:
        ``(chosen, reason per model)``.
    """
    val = table[f"val_{primary}"]
    top = str(val.idxmax())
    n = int(table.loc[top, "val_n_warm"])

    def band(name: str) -> float:
        if primary == "ndcg_at_10" and name in per_visitor and top in per_visitor:
            return ev.paired_band(per_visitor[name], per_visitor[top])
        return ev.noise_band(n)

    tied = [m for m in val.index if val[top] - val[m] <= band(str(m))]
    rank = {m: i for i, m in enumerate(SIMPLICITY)}
    chosen = str(min(tied, key=lambda m: (rank.get(str(m), len(rank)), -val[m])))
    reasons: dict[str, str] = {}
    for m in val.index:
        name = str(m)
        if name == chosen and name == top:
            others = [str(t) for t in tied if t != m]
            reasons[name] = f"best on validation ({val[m]:.4f})" + (
                f"; within noise of it: {', '.join(others)}, none simpler" if others else ""
            )
        elif name == top:
            reasons[name] = (
                f"best on validation ({val[m]:.4f}), but the simpler {chosen} is within noise"
            )
        elif name == chosen:
            reasons[name] = (
                f"within noise of {top} ({val[m]:.4f} vs {val[top]:.4f}, band ±{band(name):.4f})"
                " and simpler"
            )
        elif m in tied:
            reasons[name] = f"within noise of the best (band ±{band(name):.4f}), less simple"
        else:
            reasons[name] = f"below the best by more than noise (band ±{band(name):.4f})"
    return chosen, reasons


def train(
    settings: Settings,
    config: TrainConfig | None = None,
    feature_config: fp.FeatureConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole training procedure described in the module docstring; with
    ``config.engine == "spark"``, ALS's fits on one Spark session (``settings.spark_master``)."""
    config = config or TrainConfig()
    if config.engine not in ENGINES:
        raise UsageError(f"unknown engine {config.engine!r}: choose {' or '.join(ENGINES)}")
    on_spark = [m for m in config.models if m in ON_SPARK] if config.engine == "spark" else []
    if config.engine == "spark" and not on_spark:
        log.warning("--engine spark: none of %s fits on Spark (%s do)", config.models, ON_SPARK)
    with contextlib.ExitStack() as stack:
        if on_spark:
            from retailrec.spark import running

            stack.enter_context(running(settings.spark_master))
            params = dict(config.params)
            for name in on_spark:
                params[name] = {"engine": "spark", **params.get(name, {})}
            config = dataclasses.replace(config, params=params)
        return _train(settings, config, feature_config, progress)


def _train(
    settings: Settings,
    config: TrainConfig,
    feature_config: fp.FeatureConfig | None,
    progress: Callable[[str], None] | None,
) -> TrainResult:
    import mlflow

    from retailrec import registry

    feature_config = feature_config or fp.FeatureConfig()
    step = progress or (lambda _s: None)
    unknown = [m for m in config.models if m not in CANDIDATES]
    if unknown:
        raise UsageError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}"
        )
    torchless = [m for m in config.models if m in NEEDS_TORCH]
    if torchless and not torch_installed():
        raise UsageError(
            f"{', '.join(torchless)} needs PyTorch, which is not installed here "
            "(pip install torch==2.13.0, or build the image with --build-arg WITH_TORCH=1)"
        )
    step("reading the feature store")
    events = read_log(settings)
    client = registry.configure(settings)
    registry.mark_killed_runs(client)  # before this run starts one of its own
    champion = registry.champion(client, settings.model_name)
    if champion is not None and registry.UNEVALUATED_TAG in champion.tags:
        champion = None  # a short log's champion: it was never judged on a window either
    try:
        prep = prepare(settings, config, feature_config, events)
    except LogTooShortError as exc:
        if champion is not None:
            raise _refusal(str(exc), str(champion.version), events) from exc
        return _train_unsplit(settings, events, feature_config, str(exc), step)
    split, windows = prep.split, prep.windows
    if champion is not None and windows.test_visitors < MIN_TEST_VISITORS:
        raise _refusal(
            f"the {windows.test_days:g}-day test window holds {windows.test_visitors} returning"
            f" visitor(s), fewer than {MIN_TEST_VISITORS}",
            str(champion.version),
            events,
        )
    rows: list[dict[str, Any]] = []
    data_fp, commit = fingerprint(prep.events), git_commit()

    with mlflow.start_run(
        run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}", tags=registry.process_tags()
    ) as parent:
        mlflow.set_tags({"git_commit": commit, "data_fingerprint": data_fp, "role": "training"})
        mlflow.log_params(
            {
                "n_events": len(prep.events),
                "val_start_ms": split.val_start_ms,
                "test_start_ms": split.test_start_ms,
                "end_ms": split.end_ms,
                "val_days": windows.val_days,
                "test_days": windows.test_days,
                "windows": windows.reason[:500],
                "models": ",".join(config.models),
                "trials": config.trials,
                "event_weights": json.dumps(dict(feature_config.event_weights)),
                "recency_half_life_days": feature_config.recency_half_life_days,
            }
        )
        step("choosing the session blend on the validation sessions")
        session_params = tune_session(prep.val)
        prep.test.session_params = session_params
        sessions = prep.test.session_hit_rates()
        mlflow.log_params({f"session_{k}": v for k, v in session_params.items()})
        mlflow.log_metrics({f"test_{k}": v for k, v in sessions.items()})
        if prep.oracle is not None:
            step("scoring the oracle")
            scores = [
                ev.evaluate(
                    ev.oracle_ranker(prep.oracle, stage.histories, stage.start_ms),
                    stage.histories,
                    stage.window,
                    n_items=stage.data.n_items,
                    personal_cold=True,
                )
                for stage in (prep.val, prep.test)
            ]
            rows.append(_row("oracle", {}, scores[0], scores[1], 0.0))
            with mlflow.start_run(run_name="oracle", nested=True, tags=registry.process_tags()):
                mlflow.set_tag("role", "oracle")
                mlflow.log_metrics({**scores[1], **{f"val_{k}": v for k, v in scores[0].items()}})

        scored = _candidates(prep, config, step)
        rows += scored.rows
        chosen_params, val_per_visitor = scored.chosen_params, scored.val_per_visitor
        val_hits, val_visitors = scored.val_hits, scored.val_visitors

        ranked: two_stage.Fitted | None = None
        if "ranker" in config.models:
            base = two_stage.base_model(
                {r["model"]: r[f"val_{config.primary_metric}"] for r in rows}, NOT_A_BASE
            )
            base_params = chosen_params.get(base, dict(config.params.get(base, {})))
            step(f"training the ranker over {base}'s candidates (validation window)")
            ranked = two_stage.fit_and_score(
                prep.val, prep.test, base, base_params, scored.fits.pop(base, None)
            )
            if ranked is None:
                log.warning("no returning visitor of the validation window touched a candidate")
            else:
                val_per_visitor["ranker"] = ranked.val_per_visitor["ndcg_at_10"]
                val_hits["ranker"] = ranked.val_per_visitor["hits_at_rank"]
                val_visitors = ranked.val_per_visitor["visitors"]  # the same sample as the others'
                chosen_params["ranker"] = ranked.params
                rows.append(_row("ranker", ranked.params, ranked.val, ranked.test, ranked.seconds))
                with mlflow.start_run(run_name="ranker", nested=True, tags=registry.process_tags()):
                    mlflow.set_tags({"role": "candidate", "model": "ranker"})
                    mlflow.log_params({"base": base, **ranked.booster.info})
                    mlflow.log_metrics(
                        {**ranked.test, **{f"val_{k}": v for k, v in ranked.val.items()}}
                        | {f"gain_{k}": v for k, v in ranked.booster.importance().items()}
                    )

        table = pd.DataFrame(rows).set_index("model")
        candidates = table.drop(index="oracle", errors="ignore")
        best, reasons = select(candidates, val_per_visitor, config.primary_metric)
        table["selection"] = pd.Series(reasons).reindex(table.index).fillna("reference")
        mlflow.set_tags({"best_model": best, "selection": reasons[best][:5000]})
        _log_table(table, config.primary_metric)

        step("scoring the champion on the same window")
        champion_metric, champion_version = _champion_on_window(client, settings, prep, config)

        step("measuring repeat interest on the validation window")
        curves = ev.repeat_curves(
            prep.val.served(), prep.val.histories, prep.val.window, val_visitors, val_hits[best]
        ).to_metadata()
        mlflow.log_metrics(
            {f"val_repeat_seen_at_{j + 1}": curves["seen"][j] for j in (0, 4, 9)}
            | {f"val_repeat_new_at_{r + 1}": curves["new"][r] for r in (0, 4, 9)}
        )

        served, served_params, serving_ranker = best, chosen_params[best], None
        if best == "ranker" and ranked is not None:
            step("training the served ranker on the test window's labels")
            serving_ranker = ranked.for_serving(prep.test)
            served, served_params = ranked.base, ranked.base_params
        events, catalogue = prep.events, prep.catalogue_all
        # Past here the windows' stages (each a Dataset, Histories and fitted models) and the
        # candidates fitted on them are not needed: freed before the final refit, which would
        # otherwise hold its own beside them (docs/BENCHMARKS.md, "Whole pipeline").
        del prep, scored, ranked
        release_memory()
        step(f"refitting {best} on all the data")
        bundle = _bundle(
            events,
            catalogue,
            served,
            served_params,
            candidates,
            feature_config,
            session_params,
            ranker=serving_ranker,
        )
        bundle.metadata |= {
            "repeat": curves,
            "run_id": parent.info.run_id,
            "test_metrics": {
                k: float(v) for k, v in table.loc[best].items() if str(k).startswith("test_")
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
                "selection": reasons[best][:5000],
                "session_params": json.dumps(session_params, sort_keys=True),
                "repeat_curves": json.dumps(curves),
                **{f"test_{k}": repr(float(v)) for k, v in sessions.items()},
                **{
                    k: repr(float(v))
                    for k, v in table.loc[best].items()
                    if str(k).startswith("test_")
                },
            }
            if champion_version is not None and champion_metric is not None:
                tags["gate_champion_version"] = champion_version
                tags[f"gate_champion_{config.primary_metric}"] = repr(champion_metric)
            step("registering the bundle")
            version = registry.register_bundle(client, settings, bundle_dir, tags)
    return TrainResult(
        version,
        best,
        chosen_params[best],
        table,
        parent.info.run_id,
        champion_metric,
        windows=windows,
        sessions=sessions,
    )


@dataclass
class _Scored:
    """The candidates' figures, from :func:`_candidates`."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    chosen_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    val_per_visitor: dict[str, np.ndarray] = field(default_factory=dict)
    val_hits: dict[str, np.ndarray] = field(default_factory=dict)
    val_visitors: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: The ranker's base is the best of the learned models (not in NOT_A_BASE) on validation:
    #: its two fits (before the validation and the test windows) are kept for it, by name.
    fits: dict[str, tuple[BaseRecommender, BaseRecommender]] = field(default_factory=dict)


def _candidates(prep: _Prepared, config: TrainConfig, step: Callable[[str], None]) -> _Scored:
    """Tune, fit and score each candidate but the ranker on both windows, each in a nested run.
    Each fit is let go once scored, but for the best learned model's (:attr:`_Scored.fits`)."""
    import mlflow

    from retailrec import registry
    from retailrec.training import tune

    out = _Scored()
    best_learned = -1.0
    val_model: BaseRecommender | None = None
    for name in config.models:
        if name == "ranker":
            continue  # after the others: it builds on the best of them
        params = dict(config.params.get(name, {}))
        tuned: tuple[BaseRecommender, float] | None = None
        if config.trials and name in tune.SPACES:
            step(f"tuning {name} ({config.trials} trials)")

            def objective(
                p: dict[str, Any], name: str = name, fixed: dict[str, Any] = params
            ) -> float:
                model = make_model(name, **(fixed | p)).fit(prep.val.data)
                return prep.val.score(name, p, model)[config.primary_metric]

            params |= tune.tune(name, objective, config.trials)
        elif name == "ease" and "lam" not in params:
            step("choosing EASE's lambda (validation)")
            tuned = tune_ease(prep.val, params, config.primary_metric)
            params["lam"] = tuned[0].params()["lam"]
        step(f"fitting {name} (validation)")
        model, seconds = tuned or _fit(name, params, prep.val.data)
        per_visitor: dict[str, np.ndarray] = {}
        val = prep.val.score(name, params, model, per_visitor)
        out.val_per_visitor[name] = per_visitor["ndcg_at_10"]
        out.val_hits[name] = per_visitor["hits_at_rank"]
        out.val_visitors = per_visitor["visitors"]
        chosen = out.chosen_params[name] = {**model.params(), **params}
        stats = dict(getattr(model, "train_stats_", {}))
        kept = name not in NOT_A_BASE and val[config.primary_metric] > best_learned
        if kept:  # the best learned model so far: the ranker's base, unless a better one comes
            best_learned, out.fits, val_model = val[config.primary_metric], {}, model
        # Only one window's fit is alive while the other is fitted (issue 15's memory).
        del model
        tuned = None
        release_memory()
        step(f"fitting {name} (test)")
        test_model, _ = _fit(name, params, prep.test.data)
        test = prep.test.score(name, params, test_model)
        out.rows.append(_row(name, chosen, val, test, seconds))
        if kept and val_model is not None:
            out.fits = {name: (val_model, test_model)}
        del test_model
        val_model = None
        with mlflow.start_run(run_name=name, nested=True, tags=registry.process_tags()):
            mlflow.set_tags({"role": "candidate", "model": name})
            mlflow.log_params(chosen)
            mlflow.log_metrics(
                {**test, **{f"val_{k}": v for k, v in val.items()}, "fit_seconds": seconds}
            )
            if stats:
                mlflow.log_metrics({f"train_{k}": v for k, v in stats.items()})
    return out


def release_memory() -> None:
    """Collect what is no longer referenced and hand the freed pages back to the system: glibc's
    allocator keeps freed heap pages resident until trimmed, and Arrow's pool its buffers."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _refusal(why: str, champion: str, events: pd.DataFrame) -> LogTooShortError:
    """Training on a log whose newest window cannot judge, where an evaluated champion exists:
    a shop that had enough data does not lose it overnight, so the likelier cause is an event
    dated far past the rest of the log, which moved the shop's clock."""
    ts = events["timestamp"].to_numpy()
    ts = np.partition(ts, len(ts) - 2)[-2:] if len(ts) > 1 else ts  # the two newest, unsorted
    gap = (ts.max() - ts.min()) / DAY_MS
    return LogTooShortError(
        f"{why}: champion version {champion} was chosen on a window that could judge, so nothing"
        f" is registered; the shop's clock is {utc_text(int(ts.max()))}, {gap:.1f} days after the"
        " event before it (an event dated far past the log moves the clock: check the newest"
        " events)"
    )


def _train_unsplit(
    settings: Settings,
    events: pd.DataFrame,
    feature_config: fp.FeatureConfig,
    why: str,
    step: Callable[[str], None],
) -> TrainResult:
    """A log too short for any split: no model can be chosen on evidence, so the bundle serves
    popularity, with the item-to-item, session and bought-together models, fitted on all of it."""
    import mlflow

    from retailrec import registry

    client = registry.configure(settings)
    note = (
        f"{why}: nothing could be evaluated, so the bundle serves popularity and the item-to-item,"
        " session and bought-together models, fitted on the whole log"
    )
    step("fitting popularity and the item-to-item models on the whole log")
    data = Dataset.from_events(events, _catalogue(settings, None), config=feature_config)
    bundle = assemble(data, "popular", {}, make_model("popular").fit(data), aux_models(data))
    data_fp = fingerprint(events)
    with mlflow.start_run(
        run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}", tags=registry.process_tags()
    ) as run:
        mlflow.set_tags({"role": "training", "data_fingerprint": data_fp, "unevaluated": note})
        mlflow.log_params({"n_events": len(events), "models": "popular"})
        bundle.metadata |= {"run_id": run.info.run_id, "data_fingerprint": data_fp, "note": note}
        with tempfile.TemporaryDirectory() as tmp:
            bundle_dir = bundle.save(Path(tmp) / "bundle")
            tags = {
                "model": "popular",
                "params": "{}",
                "data_end_ms": str(int(events["timestamp"].max())),
                "data_fingerprint": data_fp,
                "git_commit": git_commit(),
                registry.UNEVALUATED_TAG: note[:5000],
            }
            version = registry.register_bundle(client, settings, bundle_dir, tags)
    return TrainResult(version, "popular", {}, pd.DataFrame(), run.info.run_id, None, note=note)


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
    """The current champion's primary metric on this run's test window, through the serving
    path (None without a champion)."""
    from retailrec import registry

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
        # The deployed champion never saw this test window: serve it as it is.
        metrics = prep.test.score_bundle(registry.load_bundle(client, settings.model_name, version))
        return metrics[config.primary_metric], version
    # It saw part of this window: score its configuration refitted before the window instead.
    name, params = (
        current.tags.get("model", "popular"),
        json.loads(current.tags.get("params", "{}")),
    )
    if name == "ranker":
        bundle = two_stage.refit(prep.val, prep.test, params)
        return prep.test.score_bundle(bundle)[config.primary_metric], version
    model, _ = _fit(name, params, prep.test.data)
    return prep.test.score(name, params, model)[config.primary_metric], version


def _bundle(
    events: pd.DataFrame,
    catalogue: pd.DataFrame,
    best: str,
    params: dict[str, Any],
    candidates: pd.DataFrame,
    feature_config: fp.FeatureConfig,
    session: dict[str, Any] | None = None,
    ranker: CandidateRanker | None = None,
) -> ModelBundle:
    """Fit the served models on all the data, up to the last event (with ``ranker``: the
    two-stage bundle, ``best`` its base)."""
    data = Dataset.from_events(events, catalogue, config=feature_config)
    similar = "itemknn_bm25"
    if {"itemknn_bm25", "itemknn_cosine"} <= set(candidates.index):
        key = f"val_{PRIMARY_METRIC}"
        if candidates.loc["itemknn_cosine", key] > candidates.loc["itemknn_bm25", key]:
            similar = "itemknn_cosine"
    bundle = assemble(
        data,
        best,
        params,
        make_model(best, **params).fit(data),
        aux_models(data, similar, session),
        similar,
    )
    bundle.metadata["n_events"] = len(events)
    if ranker is not None:
        two_stage.attach(two_stage.with_item_features(bundle, data), ranker)
    return bundle
