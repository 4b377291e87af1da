"""The one orchestrator: the pipeline, and retrain-then-promote, as library functions read top to
bottom. The command line, the container's bootstrap, the monitor and the API's retrain endpoint
all call these; none of them strings the stages together itself.

    run_pipeline         synth (only for the default raw folder, when it is empty) -> etl ->
                         features -> train -> promote
    retrain_and_promote  train on everything in the store -> promote through the gate
    monitor              drift and online report -> (retrain_and_promote, ask the API to reload)
    in_child             run one of these in a fresh process (the API and the bootstrap do, so
                         that serving neither blocks on training nor keeps its memory)

Heavy modules (training, MLflow, the generator) are imported where a stage runs, so that the API
can import this module without loading any of them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retailrec.client import ApiClient, not_configured
from retailrec.config import Settings
from retailrec.errors import DataFileError, RetailRecError, RetrainRunningError, error_line

if TYPE_CHECKING:
    from retailrec.data_pipeline.etl import EtlReport
    from retailrec.data_pipeline.feature_pipeline import FeatureConfig, FeatureSnapshot
    from retailrec.monitoring.monitor import MonitorConfig, MonitorResult
    from retailrec.registry import PromotionResult
    from retailrec.synthetic.synth import WrittenShop
    from retailrec.training.train import TrainResult

log = logging.getLogger(__name__)

#: ``on_stage(name, result)`` hears each stage's result as soon as it is done.
StageHook = Callable[[str, Any], None]
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _unheard(_stage: str, _result: Any) -> None:
    return None


@dataclass
class PipelineResult:
    """What each stage of one pipeline run did."""

    raw_dir: Path | str
    synthetic: WrittenShop | None  # set when this run generated the shop
    etl: EtlReport
    features: FeatureSnapshot
    training: TrainResult
    promotion: PromotionResult


def run_pipeline(
    settings: Settings,
    *,
    raw: Path | str | None = None,
    scale: str = "small",
    seed: int = 42,
    models: tuple[str, ...] | None = None,
    test_days: float | None = None,
    val_days: float | None = None,
    progress: Progress | None = None,
    on_stage: StageHook | None = None,
    engine: str = "embedded",
) -> PipelineResult:
    """Synth when the default raw folder has no event log, then etl, features, train, promote.
    ``engine="spark"``: the ETL runs on Spark (:mod:`retailrec.data_pipeline.spark_etl`), and so
    does ALS's fit (MLlib).

    Only the default raw folder gets a synthetic shop: a folder or file given as ``raw`` is the
    user's data, so when it holds no event log that is an error, not a reason to write there.
    The oracle is scored only when the default folder holds a synthetic shop's ``truth/``.

    Raises:
        DataFileError: ``raw`` holds no event log; RetailRecError: a stage failed.
    """
    from retailrec.data_pipeline.etl import run_etl
    from retailrec.data_pipeline.feature_pipeline import FeatureConfig, build_features
    from retailrec.data_pipeline.files import locate
    from retailrec.data_pipeline.spark_etl import holds_events_csv, is_url
    from retailrec.feature_store import open_store

    step = progress or _quiet
    hook = on_stage or _unheard
    feature_config = FeatureConfig.from_settings(settings)
    raw_dir = raw if raw is not None else settings.raw_dir
    written = None
    try:
        # Spark reads parts, Parquet and URLs too: it says what it cannot read (and the ETL
        # says that only Spark reads a URL).
        if not is_url(raw_dir) and (engine != "spark" or raw is None or holds_events_csv(raw_dir)):
            locate(Path(raw_dir))
    except DataFileError:
        if raw is not None:
            raise
        from retailrec.synthetic.synth import write_shop

        step(f"generating a synthetic shop ({scale})")
        written = write_shop(scale, seed, settings.raw_dir, progress=step)
        hook("synth", written)
    step("etl")
    with contextlib.ExitStack() as stack, open_store(settings.feature_store) as conn:
        spark = None
        if engine == "spark":
            from retailrec.spark import running

            spark = stack.enter_context(running(settings.spark_master))
        etl_report = run_etl(
            raw_dir,
            conn=conn,
            rejected_dir=settings.rejected_dir,
            processed_dir=settings.processed_dir,
            reports_dir=settings.reports_dir,
            config=feature_config,
            progress=step,
            spark=spark,
        )
        stack.close()  # Spark's memory is not the training's
        hook("etl", etl_report)
        step("features")
        snapshot = build_features(conn, None, feature_config)
        hook("features", snapshot)
    # What synth, the ETL and the features freed goes back to the system before training: 434 of
    # the 877 MiB this process held then on the full shop (docs/BENCHMARKS.md, "Whole pipeline").
    from retailrec.training.train import release_memory

    release_memory()
    # The synthetic shop's truth (written by synth, never by a shop) adds the oracle's line.
    default_truth = settings.raw_dir / "truth"
    truth = default_truth if raw is None and default_truth.is_dir() else None
    outcome = retrain_and_promote(
        settings,
        models,
        test_days=test_days,
        val_days=val_days,
        truth_dir=truth,
        feature_config=feature_config,
        progress=step,
        on_stage=hook,
        engine=engine,
    )
    return PipelineResult(
        raw_dir, written, etl_report, snapshot, outcome.training, outcome.promotion
    )


@dataclass
class Retrained:
    """A training run and what the gate made of it."""

    training: TrainResult
    promotion: PromotionResult

    def to_dict(self) -> dict[str, Any]:
        """The shape reports keep (``retrain`` in the monitor's JSON)."""
        return {
            "version": self.training.version,
            "best_model": self.training.best_model,
            "champion_score_on_window": self.training.champion_metric,
            "promoted": self.promotion.promoted,
            "previous_champion": self.promotion.previous,
            "reason": self.promotion.reason,
        }


def retrain_and_promote(
    settings: Settings,
    models: tuple[str, ...] | None = None,
    *,
    test_days: float | None = None,
    val_days: float | None = None,
    truth_dir: Path | None = None,
    feature_config: FeatureConfig | None = None,
    progress: Progress | None = None,
    on_stage: StageHook | None = None,
    engine: str = "embedded",
) -> Retrained:
    """Train on everything in the feature store, then promote through the registry's gate (the
    challenger must beat the champion on the same test window)."""
    from retailrec import registry
    from retailrec.data_pipeline.feature_pipeline import FeatureConfig
    from retailrec.training.train import TrainConfig, default_models, train

    hook = on_stage or _unheard
    step = progress or _quiet
    config = TrainConfig(
        models=models or default_models(),
        test_days=test_days,
        val_days=val_days,
        truth_dir=truth_dir,
        engine=engine,
    )
    step("training")
    result = train(
        settings, config, feature_config or FeatureConfig.from_settings(settings), progress=step
    )
    hook("train", result)
    step("promoting")
    promotion = registry.promote(registry.configure(settings), settings.model_name, result.version)
    hook("promote", promotion)
    return Retrained(result, promotion)


def monitor(
    settings: Settings, config: MonitorConfig | None = None, *, ask_api: bool = True
) -> MonitorResult:
    """One monitoring pass; with ``config.retrain``, a gated retraining after it and, when the
    champion changed and ``ask_api``, a request that the API at ``RETAILREC_API_URL`` reload."""
    from retailrec.monitoring.monitor import MonitorConfig, run_monitor

    config = config or MonitorConfig()

    def retrain() -> dict[str, Any]:
        outcome = retrain_and_promote(settings, config.models)
        out = outcome.to_dict()
        if not outcome.promotion.promoted:
            out["reload"] = {"asked": False, "reason": "the champion did not change"}
        elif not ask_api:
            out["reload"] = {"asked": False, "reason": "the caller serves the champion itself"}
        else:
            out["reload"] = request_reload(settings).to_dict()
        return out

    return run_monitor(settings, config, retrain=retrain if config.retrain else None)


def request_reload(settings: Settings) -> Any:
    """Ask the API at ``RETAILREC_API_URL`` to load the champion (a big one takes a while)."""
    client = ApiClient.from_settings(settings, timeout=120.0)
    if client is None:
        return not_configured()
    with client:
        return client.reload()


def bootstrap(settings: Settings, scale: str, models: tuple[str, ...] | None) -> str | None:
    """Run the pipeline when there is no champion the API would serve yet (none, or one the gate
    never approved), in a child process, so that the server that starts next does not keep the
    training's memory. Returns the new champion's version, or None when there already was one."""
    from retailrec import registry

    client = registry.configure(settings)
    current = registry.champion(client, settings.model_name)
    if current is not None and registry.approved(client, current):
        return None  # (a champion the gate never approved is not served: train a fresh one)
    summary: dict[str, Any] = in_child(_pipeline_summary, settings, scale, models)
    return str(summary["version"])


def _pipeline_summary(
    settings: Settings, scale: str, models: tuple[str, ...] | None
) -> dict[str, Any]:
    logging.basicConfig(  # this child's own output: each stage as it starts
        level=logging.INFO, format="%(asctime)s bootstrap: %(message)s", stream=sys.stderr
    )
    result = run_pipeline(settings, scale=scale, models=models, progress=log.info)
    return {"version": result.training.version, "promoted": result.promotion.promoted}


# -- out of process -------------------------------------------------------------------------------


def in_child(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in a fresh (spawned) process; its result, or its exception, comes back.

    The parent keeps none of the child's memory, and a thread that waits on it holds no GIL.
    ``func`` must be a module-level function and its arguments picklable.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_name_main) as pool:
        return pool.submit(func, *args).result()


def _name_main() -> None:
    """The child of a ``python -m`` parent (``python -m retailrec``, ``python -m pytest``) starts
    with a bare ``__main__``: no file, no spec. PySpark's Spark Connect check takes that for a
    doctest run and exits the process, and MLflow imports ``pyspark.sql`` wherever it is
    installed (logging a model with an input example): the child would quit, status 0, at
    registration. The child's main is multiprocessing's spawn module, so it is named so."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None and not hasattr(main, "__file__"):
        main.__file__ = multiprocessing.spawn.__file__


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout, stderr and log records to ``path``."""
    with path.open("a", encoding="utf-8", buffering=1) as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old
            root.removeHandler(handler)


def _monitor_and_retrain(
    settings: Settings, models: tuple[str, ...] | None, log_path: Path
) -> dict[str, Any]:
    """The API's retraining run, in its child process: its output goes to ``log_path``; what
    comes back is plain data (exit code 0 with the report, or 1 with the error)."""
    from retailrec.monitoring.monitor import MonitorConfig

    with _output_to(log_path):
        try:
            result = monitor(settings, MonitorConfig(retrain=True, models=models), ask_api=False)
        except RetailRecError as exc:
            print(f"error: {error_line(exc)}")
            return {"exit_code": 1, "error": error_line(exc)}
        except Exception as exc:  # a bug: its traceback goes to the run's log
            log.exception("the retraining run failed")
            return {"exit_code": 1, "error": f"unexpected {type(exc).__name__}: {error_line(exc)}"}
        retrain = result.retrain or {}
        verb = "promoted" if retrain.get("promoted") else "not promoted"
        print(f"retrained: version {retrain.get('version')} {verb}: {retrain.get('reason')}")
        return {"exit_code": 0, "report": result.json_path.name, "retrain": retrain}


@dataclass
class BackgroundRetrain:
    """``POST /v1/admin/retrain``: one monitor-and-retrain run at a time, out of process (serving
    keeps its memory and its GIL). When the run promotes a new champion, ``on_promoted`` swaps it
    in before the run counts as done: a poller never sees "done" without the new model."""

    settings: Settings
    on_promoted: Callable[[], str]  # loads the champion; returns the version now served
    last: dict[str, Any] | None = field(default=None, init=False)
    _started_ms: int | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _idle: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def running(self) -> bool:
        return not self._idle.is_set()

    def start(self, models: tuple[str, ...] | None = None) -> int:
        """Start a run; returns its start time (ms). Its output goes to
        ``reports/retrain-<start ms>.log``.

        Raises:
            RetrainRunningError: a run is already going.
        """
        with self._lock:
            if self.running:
                raise RetrainRunningError(
                    f"a retraining run started at {self._started_ms} is running"
                )
            self._started_ms = int(time.time() * 1000)
            reports = self.settings.reports_dir
            reports.mkdir(parents=True, exist_ok=True)
            log_path = reports / f"retrain-{self._started_ms}.log"
            self._idle.clear()
            threading.Thread(target=self._run, args=(models, log_path), daemon=True).start()
            return self._started_ms

    def _run(self, models: tuple[str, ...] | None, log_path: Path) -> None:
        result: dict[str, Any] = {"started_ms": self._started_ms}
        try:
            result |= in_child(_monitor_and_retrain, self.settings, models, log_path)
            if result.get("retrain", {}).get("promoted"):
                try:
                    result["reloaded"] = self.on_promoted()
                except Exception as exc:  # the old model keeps serving; the status says why
                    result["reload_error"] = error_line(exc)
        except Exception as exc:  # the child died (killed, out of memory): say so, stay up
            result |= {"exit_code": 1, "error": f"the run's process failed: {error_line(exc)}"}
        finally:
            self.last = result
            self._idle.set()

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "started_ms": self._started_ms, "last": self.last}
