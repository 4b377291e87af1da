"""The ``retailrec`` command line. Commands parse their arguments and call library code.

Exit codes: 0 success, 1 failure (with a one-line reason), 2 bad usage.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.exceptions import TyperException

from retailrec.config import get_settings
from retailrec.errors import RetailRecError, UsageError, error_line

app = typer.Typer(
    name="retailrec",
    help="RetailRec: recommendations for an online shop, from event log to served model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help texts are paragraphs, rewrapped to the terminal
)


def _console(stderr: bool = False) -> Console:
    """Rich's console; where the output is not a terminal (a log file, CI, a container's log)
    and COLUMNS is not set, 120 columns instead of Rich's 80, so that tables are not cut."""
    import os

    found = Console(stderr=stderr)
    if found.is_terminal or "COLUMNS" in os.environ:
        return found
    return Console(stderr=stderr, width=120)


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(RetailRecError):
    """A failure of the command line itself (a data dir it cannot write, a child run that
    failed), reported as one line, exit code 1."""


#: Set by ``--debug``: an unexpected exception shows its traceback.
_debug = False


def _one_line_errors(func: F) -> F:
    """Report the library's errors (:class:`RetailRecError`) as one line and exit code 1.

    Anything else is a bug: one line that says so, or with ``--debug`` the whole traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RetailRecError as exc:
            typer.echo(f"error: {error_line(exc)}", err=True)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, TyperException):  # usage errors: typer reports them
            raise
        except Exception as exc:
            if _debug:
                raise
            typer.echo(
                f"error: unexpected {type(exc).__name__}: {error_line(exc)} (a bug in RetailRec:"
                " run again with `retailrec --debug ...` for the traceback, and report it)",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")
    ] = False,
) -> None:
    """Configure logging once, at the entry point."""
    global _debug
    _debug = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # MLflow narrates every step at INFO and WARNING; keep the CLI's output ours
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="mlflow")


def _spinner(first: str) -> tuple[Progress, Any]:
    """A progress line for steps of unknown length: the stage's name and the time so far."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    return progress, progress.add_task(first, total=None)


def _stage_progress(total: int) -> tuple[Progress, Callable[[str], None]]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    task = progress.add_task("starting", total=total)
    seen: list[str] = []

    def step(stage: str) -> None:
        if seen:
            progress.advance(task)
        seen.append(stage)
        progress.update(task, description=stage)

    return progress, step


def _session_figures(figures: list[tuple[str, float, float]], steps: int) -> str:
    """``next-item HitRate@20 / MRR@20 over N steps: name h / m, ...``."""
    parts = ", ".join(f"{name} {hit:.4f} / {mrr:.4f}" for name, hit, mrr in figures)
    return f"next-item HitRate@20 / MRR@20 over {steps:,} steps: {parts}"


@app.command()
@_one_line_errors
def synth(
    scale: Annotated[
        str,
        typer.Option(
            help="tiny (1%), small (10%), full (100%) or 10x (ten full shops side by side) of"
            " Retailrocket."
        ),
    ] = "small",
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed writes identical files.")
    ] = 42,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <data dir>/raw).")
    ] = None,
    drift: Annotated[bool, typer.Option("--drift", help="Shift the last three weeks.")] = False,
) -> None:
    """Write a synthetic shop: Retailrocket's three files, and truth/ for evaluation."""
    from retailrec.synthetic.synth import write_shop

    out_dir = out if out is not None else get_settings().raw_dir
    progress, step = _stage_progress(total=5)
    with progress:
        written = write_shop(scale, seed, out_dir, drift=drift, progress=step)
    _print_synth(written)


def _print_generated(written: Any) -> None:
    """The pipeline's synth stage: why a synthetic shop was written, then what it holds."""
    console.print(
        f"no events.csv in {written.paths['events'].parent}: generated a synthetic shop"
        f" ({written.scale})",
        soft_wrap=True,
    )
    _print_synth(written)


def _print_synth(written: Any) -> None:
    stats = written.stats
    drift = ", drift" if written.drift else ""
    table = Table(title=f"synthetic shop, scale {written.scale}, seed {written.seed}{drift}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key in ("rows", "visitors", "items", "transactions", "duplicates"):
        table.add_row(key, f"{stats[key]:,}")
    for key in ("view_share", "addtocart_share", "transaction_share", "one_event_visitor_share"):
        table.add_row(key, f"{stats[key]:.2%}")
    console.print(table)
    files = ", ".join(str(p) for p in written.paths.values())
    if written.truth_dir is None:
        console.print(f"wrote {files} (shards past full scale: no truth/)", soft_wrap=True)
    else:
        console.print(f"wrote {files} and {written.truth_dir}/", soft_wrap=True)


def _feature_config() -> Any:
    from retailrec.data_pipeline.feature_pipeline import FeatureConfig

    return FeatureConfig.from_settings(get_settings())


#: ``--raw`` of ``etl`` and ``pipeline``.
RawOption = Annotated[
    str | None,
    typer.Option(
        help="Folder with events.csv, or the events file itself (default: <data dir>/raw);"
        " with --engine spark, also a folder of CSV parts, Parquet, or a URL that Spark reads"
        " (s3a://, gs://, hdfs://, file://; Parquet).",
        show_default=False,
    ),
]


def _raw(raw: str | None) -> Path | str | None:
    """``--raw`` as a path, or as given where it is a URL (a path would fold its ``//``)."""
    from retailrec.data_pipeline.spark_etl import is_url

    return raw if raw is None or is_url(raw) else Path(raw)


#: ``--engine`` of ``etl``, ``train`` and ``pipeline``.
EngineOption = Annotated[
    str,
    typer.Option(
        help="embedded (in process: pandas, Arrow, implicit; the default; also 'local') or spark"
        " (pyspark and Java 17; master: RETAILREC_SPARK_MASTER, default local[2]): the ETL,"
        " and ALS's fit (MLlib). Same rules, same report, same bundle."
    ),
]
ENGINES = ("embedded", "spark")
#: Other names an engine answers to: DESIGN.md writes the embedded one ``local``.
ENGINE_ALIASES = {"local": "embedded"}


def _engine(name: str) -> str:
    name = ENGINE_ALIASES.get(name, name)
    if name not in ENGINES:
        raise CommandError(f"unknown engine {name!r}: choose {' or '.join(ENGINES)}")
    return name


@app.command()
@_one_line_errors
def etl(
    raw: RawOption = None,
    engine: EngineOption = "embedded",
) -> None:
    """Validate, quarantine, dedupe and load the raw files into the feature store and parquet."""
    from retailrec.data_pipeline.etl import run_etl
    from retailrec.feature_store import open_store

    settings = get_settings()
    with contextlib.ExitStack() as stack:
        spark = None
        if _engine(engine) == "spark":
            from retailrec.spark import running

            spark = stack.enter_context(running(settings.spark_master))
        progress, task = _spinner("reading")
        with progress, open_store(settings.feature_store) as conn:
            report = run_etl(
                _raw(raw) or settings.raw_dir,
                conn=conn,
                rejected_dir=settings.rejected_dir,
                processed_dir=settings.processed_dir,
                reports_dir=settings.reports_dir,
                config=_feature_config(),
                progress=lambda stage: progress.update(task, description=stage),
                spark=spark,
            )
    _print_etl(report)


def _print_etl(report: Any) -> None:
    title = f"ETL of {report.source}"
    table = Table(title=title, min_width=min(len(title), console.width))
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", f"{report.rows_read:,}")
    table.add_row("loaded", f"{report.loaded:,}")
    table.add_row("duplicates", f"{report.duplicates:,}")
    table.add_row("rejected", f"{report.rejected:,}")
    for reason, count in report.rejected_by_reason.items():
        table.add_row(f"  {reason}", f"{count:,}")
    table.add_row("events in the store", f"{report.events_in_store:,}")
    if report.item_properties_read:
        table.add_section()
        table.add_row("item property rows read", f"{report.item_properties_read:,}")
        table.add_row("  categoryid / available", f"{report.item_properties_kept:,}")
        table.add_row("  other properties (not used)", f"{report.item_properties_other:,}")
        table.add_row("  rejected", f"{report.item_properties_rejected:,}")
    if report.categories_read:
        table.add_section()
        table.add_row("category tree rows read", f"{report.categories_read:,}")
        table.add_row("  rejected", f"{report.categories_rejected:,}")
    console.print(table)
    for warning in report.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    quarantined = (
        report.rejected_file,
        report.item_properties_rejected_file,
        report.categories_rejected_file,
    )
    for path in filter(None, quarantined):
        console.print(f"quarantined rows: {path}", soft_wrap=True)


@app.command()
@_one_line_errors
def features(
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Point in time: Unix ms, or a date and time in UTC such as 2015-08-01 or"
            " 2015-08-01T12:00 (default: the last event).",
        ),
    ] = None,
) -> None:
    """Compute point-in-time user and item features into the feature store."""
    from retailrec.data_pipeline.feature_pipeline import build_features
    from retailrec.feature_store import open_store

    settings = get_settings()
    with open_store(settings.feature_store) as conn:
        snap = build_features(conn, None if as_of is None else _ms(as_of), _feature_config())
    _print_features(snap)


def _print_features(snap: Any) -> None:
    console.print(
        f"features as of {snap.as_of_ms}: {len(snap.users):,} visitors, {len(snap.items):,} items,"
        f" {len(snap.pairs):,} item pairs",
        soft_wrap=True,
    )


def _ms(text: str) -> int:
    """Unix milliseconds from digits, or from a date and time (UTC unless it says otherwise)."""
    import pandas as pd

    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        stamp = pd.Timestamp(text)
    except ValueError as exc:
        raise CommandError(
            f"not a point in time: {text!r} (give Unix ms or a date such as 2015-08-01)"
        ) from exc
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return int(stamp.value // 1_000_000)


#: Fewer warm test visitors than this and the figures say next to nothing.
MIN_VISITORS_TO_COMPARE = 30


def _print_training(result: Any, primary: str) -> None:
    from retailrec.training.split import TARGET_VISITORS

    if result.note:  # a log too short for any split: nothing was evaluated
        err_console.print(f"warning: {result.note}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"registered version {result.version} (popular, unevaluated)")
        return
    table = Table(title=f"models on the test window (chosen on validation: {result.best_model})")
    table.add_column("model", no_wrap=True)
    for col in ("val NDCG@10", "NDCG@10", "R@20", "buy NDCG@10", "HR@10", "cov", "fit s"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, row in result.table.iterrows():
        table.add_row(
            str(name) + (" *" if name == result.best_model else ""),
            f"{row[f'val_{primary}']:.4f}",
            f"{row[f'test_{primary}']:.4f}",
            f"{row['test_recall_at_20']:.4f}",
            f"{row['test_ndcg_at_10_buy']:.4f}",
            f"{row['test_hit_rate_at_10']:.4f}",
            f"{row['test_coverage_at_10']:.3f}",
            f"{row['fit_seconds']:.1f}",
        )
    n_warm = int(result.table["test_n_warm"].max()) if "test_n_warm" in result.table else 0
    # A per-visitor metric lies in [0, 1], so its standard deviation is at most 0.5 and two
    # standard errors of the mean at most 1 / sqrt(n): a bound on what noise alone can move.
    noise = f"; differences under ±{1 / n_warm**0.5:.3f} may be noise" if n_warm else ""
    w = result.windows
    table.caption = (
        f"scored on {n_warm:,} returning test-window visitors, as the API answers them{noise}"
        + (f"\nwindows: {w.val_days:g} + {w.test_days:g} days, {w.reason}" if w else "")
    )
    console.print(table)
    console.print(
        f"chose {result.best_model}: {result.table.loc[result.best_model, 'selection']}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    if result.sessions.get("session_examples"):
        from retailrec.training.backtest import SESSION_RANKERS

        rates, figures = result.sessions, []
        for name in SESSION_RANKERS:
            sfx = "" if name == "served" else f"_{name}"
            if f"session_hit_rate_at_20{sfx}" in rates:
                figures.append(
                    (name, rates[f"session_hit_rate_at_20{sfx}"], rates[f"session_mrr_at_20{sfx}"])
                )
        console.print(
            "anonymous sessions on the test window, "
            + _session_figures(figures, int(rates["session_examples"])),
            soft_wrap=True,
        )
    if n_warm < MIN_VISITORS_TO_COMPARE:
        err_console.print(
            f"warning: only {n_warm} visitors in the test window had a history: too few to tell"
            " models apart until the shop has more data",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif w is not None and min(w.val_visitors, w.test_visitors) < TARGET_VISITORS:
        err_console.print(
            f"warning: the windows hold {w.val_visitors:,} and {w.test_visitors:,} returning"
            f" visitors (aim: {TARGET_VISITORS:,}): differences under ±{1 / n_warm**0.5:.3f}"
            " are noise",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"registered version {result.version} ({result.best_model})", soft_wrap=True)


def _model_names(models: str | None) -> tuple[str, ...] | None:
    """``--models a,b`` as a tuple of names; None when not given."""
    return tuple(m.strip() for m in models.split(",") if m.strip()) if models else None


def _train(
    models: str | None,
    trials: int,
    test_days: float | None = None,
    val_days: float | None = None,
    truth: Path | None = None,
    engine: str = "embedded",
) -> Any:
    from retailrec.training.train import TrainConfig, default_models
    from retailrec.training.train import train as run_train

    given = _model_names(models)
    names = default_models() if given is None else given
    progress, task = _spinner("training")
    with progress:
        result = run_train(
            get_settings(),
            TrainConfig(
                models=names,
                trials=trials,
                test_days=test_days,
                val_days=val_days,
                truth_dir=truth,
                engine=engine,
            ),
            _feature_config(),
            progress=lambda stage: progress.update(task, description=stage),
        )
    _print_training(result, "ndcg_at_10")
    return result


ModelsOption = Annotated[
    str | None, typer.Option(help="Comma-separated model names (default: all).")
]


def _days_option(window: str) -> Any:
    return typer.Option(
        min=0.01,
        help=f"{window} window in days (default: sized to the log, at most 7).",
        show_default=False,
    )


TestDaysOption = Annotated[float | None, _days_option("Test")]
ValDaysOption = Annotated[float | None, _days_option("Validation")]
TruthOption = Annotated[
    Path | None,
    typer.Option(
        help="A synthetic shop's truth/ folder: also score the oracle (true preferences).",
        show_default=False,
    ),
]


@app.command()
@_one_line_errors
def train(
    models: ModelsOption = None,
    trials: Annotated[
        int, typer.Option(min=0, help="Optuna trials per tunable model (validation window).")
    ] = 0,
    test_days: TestDaysOption = None,
    val_days: ValDaysOption = None,
    truth: TruthOption = None,
    engine: EngineOption = "embedded",
) -> None:
    """Fit, evaluate through the serving path on a global time split, log to MLflow and register
    a model bundle."""
    _train(models, trials, test_days, val_days, truth, _engine(engine))


def _registry() -> Any:
    from retailrec import registry

    return registry, registry.configure(get_settings())


@app.command()
@_one_line_errors
def promote(
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: the latest).")
    ] = None,
    metric: Annotated[str, typer.Option(help="Primary metric of the gate.")] = "ndcg_at_10",
) -> None:
    """Move the champion alias to a version if it beats the champion on the same test window."""
    registry, client = _registry()
    _print_promotion(registry.promote(client, get_settings().model_name, version, metric))


def _print_promotion(result: Any) -> None:
    verb = "promoted" if result.promoted else "kept the champion; not promoted"
    console.print(f"{verb}: version {result.version}: {result.reason}", soft_wrap=True)


@app.command()
@_one_line_errors
def rollback() -> None:
    """Move the champion alias back to the previous champion."""
    registry, client = _registry()
    result = registry.rollback(client, get_settings().model_name)
    console.print(f"rolled back: {result.reason} (was {result.previous})", soft_wrap=True)


@app.command()
@_one_line_errors
def pipeline(
    scale: Annotated[
        str, typer.Option(help="Synthetic scale when there is no raw data.")
    ] = "small",
    raw: RawOption = None,
    models: ModelsOption = None,
    seed: Annotated[int, typer.Option(help="Seed for the synthetic data.")] = 42,
    test_days: TestDaysOption = None,
    val_days: ValDaysOption = None,
    engine: EngineOption = "embedded",
) -> None:
    """Synth when there is no raw data, then etl, features, train and promote.

    Only the default raw folder gets a synthetic shop: a folder or file given with `--raw` is
    the user's data, so when it holds no event log that is an error, not a reason to write there.
    """
    from retailrec.pipeline import run_pipeline

    printers: dict[str, Callable[[Any], None]] = {
        "synth": _print_generated,
        "etl": _print_etl,
        "features": _print_features,
        "train": lambda result: _print_training(result, "ndcg_at_10"),
        "promote": _print_promotion,
    }
    progress, task = _spinner("pipeline")
    with progress:
        run_pipeline(
            get_settings(),
            raw=_raw(raw),
            scale=scale,
            seed=seed,
            models=_model_names(models),
            test_days=test_days,
            val_days=val_days,
            progress=lambda stage: progress.update(task, description=stage),
            on_stage=lambda stage, result: printers[stage](result),
            engine=_engine(engine),
        )


def _check_writable(data_dir: Path) -> None:
    """The API appends events and logs answers: fail at once, and say why, on a read-only
    data dir (a volume or disk mounted for another user)."""
    import os
    import tempfile

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise CommandError(
            f"the data dir {data_dir} is not writable by uid {os.getuid()} ({exc.strerror}):"
            " mount it writable for this user or set RETAILREC_DATA_DIR"
        ) from None


def _bootstrap(scale: str, models: str | None) -> None:
    """Train a first champion when there is none (the orchestrator runs the pipeline in a child
    process, so that the server does not keep the training's memory)."""
    from retailrec.pipeline import bootstrap

    err_console.print(f"checking for a champion (else running the pipeline, {scale}, first)")
    version = bootstrap(get_settings(), scale, _model_names(models))
    if version is not None:
        err_console.print(f"the pipeline registered a first champion: version {version}")


@app.command()
@_one_line_errors
def serve(
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind: this machine only by default; 0.0.0.0 to serve other"
            " machines (the container does)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT", help="Port (Render sets $PORT).")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="RETAILREC_WORKERS",
            help="Worker processes (one core each). A reload on any worker reaches the others"
            " within RETAILREC_RELOAD_POLL_S; on several machines, share one PostgreSQL store"
            " (RETAILREC_STORE_URL).",
        ),
    ] = 1,
    bootstrap: Annotated[
        bool,
        typer.Option(
            "--bootstrap",
            help="With no champion yet, run the pipeline first (a child process), then serve.",
        ),
    ] = False,
    bootstrap_scale: Annotated[
        str,
        typer.Option(
            envvar="RETAILREC_BOOTSTRAP_SCALE", help="Synthetic scale when there is no raw data."
        ),
    ] = "small",
    bootstrap_models: Annotated[
        str | None,
        typer.Option(envvar="RETAILREC_BOOTSTRAP_MODELS", help="Models the bootstrap trains."),
    ] = None,
) -> None:
    """Serve the API: the champion from the registry, recommendations, events, metrics."""
    _check_writable(get_settings().data_dir)
    if bootstrap:
        _bootstrap(bootstrap_scale, bootstrap_models)
    run_uvicorn(
        "retailrec.api.main:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        workers=workers,
    )


def run_uvicorn(app: str, *, workers: int = 1, **options: Any) -> None:
    """``uvicorn.run(app, access_log=False, **options)``, except that several workers share a
    listener from :func:`_listener` (bench/bench_replicas.py serves its ceiling this way too)."""
    import uvicorn

    if workers == 1:
        uvicorn.run(app, access_log=False, **options)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, access_log=False, workers=workers, **options)
    Multiprocess(config, sockets=[_listener(options["host"], options["port"])]).run()


def _listener(host: str, port: int) -> socket.socket:
    """The workers' shared listening socket, made as uvicorn's ``bind_socket`` makes it but for
    its protocol: asyncio sets TCP_NODELAY only on accepted sockets whose ``proto`` says TCP,
    and they inherit the listener's. uvicorn's own (proto 0) leaves Nagle's algorithm on, and on
    Linux each keep-alive answer (headers and body written apart) then waits ~40 ms for the
    client's delayed ACK: two workers answered 360/s where one answered 1,600/s (uvicorn issue
    3149, open for 0.54.0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RetailRecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@app.command()
@_one_line_errors
def dashboard(
    port: Annotated[int, typer.Option(help="Port of the Streamlit server.")] = 8501,
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind: this machine only by default. Its actions need"
            " RETAILREC_API_KEY; bind 0.0.0.0 only behind a proxy that authenticates."
        ),
    ] = "127.0.0.1",
) -> None:
    """The Streamlit dashboard: data, models, a recommendations explorer and monitoring."""
    import os
    import sys

    script = Path(__file__).resolve().parent / "dashboard" / "app.py"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--client.showErrorDetails",
        "none",  # a traceback shows source paths: the page says what went wrong, the log the rest
    ]
    os.execv(sys.executable, cmd)  # become Streamlit: signals reach it, no orphan is left


store_app = typer.Typer(
    help="The feature store itself: move a shop's store to another backend.",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")


@store_app.command("migrate")
@_one_line_errors
def store_migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Where the store goes: postgresql://user:pass@host/db (or sqlite:///path, to"
            " come back). A row it holds with the same key takes the source's values: a second"
            " run completes the first, or brings over what changed since.",
        ),
    ],
) -> None:
    """Copy the feature store (RETAILREC_STORE_URL, else the SQLite file) to another one, table
    by table, and verify that every table's count is the same in both."""
    from retailrec.feature_store import store

    settings = get_settings()
    source_url = settings.feature_store
    if store.describe(to) == store.describe(source_url):
        raise UsageError(f"--to names the store itself ({store.describe(to)})")
    if not store.exists(source_url):
        raise UsageError(f"no feature store at {store.describe(source_url)}: nothing to migrate")
    progress, task = _spinner("copying")
    with progress, store.open_store(source_url) as source, store.open_store(to) as target:
        counts = store.copy_store(
            source,
            target,
            lambda table, rows: progress.update(task, description=f"{table}: {rows:,} rows"),
        )
    table = Table(title=f"{store.describe(source_url)} -> {store.describe(to)}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("verified", justify="right")
    for name, (rows, copied) in counts.items():
        table.add_row(name, f"{rows:,}", "yes" if rows == copied else "NO")
    console.print(table)
    console.print(
        f"Serve from it with RETAILREC_STORE_URL={store.describe(to)} (with its password)",
        soft_wrap=True,
    )


@app.command()
@_one_line_errors
def download() -> None:
    """Fetch the real Retailrocket files into <data dir>/raw with your Kaggle credentials."""
    from retailrec.data_pipeline.download import download as fetch

    paths = fetch(get_settings().raw_dir)
    console.print(
        f"Retailrocket files in {paths[0].parent}: {', '.join(p.name for p in paths)}",
        soft_wrap=True,
    )


def _print_monitor(result: Any) -> None:
    drift, online = result.drift, result.online
    table = Table(title=drift.verdict)
    table.add_column("signal", no_wrap=True)
    for col in ("value", "threshold", "p", "noise floor", ""):
        table.add_column(col, justify="right", no_wrap=True)
    for s in drift.signals:
        table.add_row(
            s.name,
            f"{s.value:.4f}",
            f"{s.threshold:g}",
            f"{s.p_value:.2g}",
            "-" if s.noise_floor is None else f"{s.noise_floor:.4f}",
            "[bold red]DRIFT[/]" if s.drifted else "ok",
        )
    console.print(table)
    if online.get("requests"):
        ctr = online["click_through"]
        console.print(
            f"online: {online['requests']:,} answers served, click-through proxy "
            f"{_share(ctr['rate'])}, fallback rate {_share(online['fallback_rate'])}, coverage "
            f"{_share(online['coverage']['rate'])},"
            f" p99 {online['latency']['all']['p99_ms']:.1f} ms",
            soft_wrap=True,
        )
    else:
        console.print("online: nothing served in the window", soft_wrap=True)
    if result.retrain is not None:
        r = result.retrain
        verb = "promoted" if r["promoted"] else "not promoted"
        console.print(
            f"retrained: version {r['version']} ({r['best_model']}) {verb}: {r['reason']}",
            soft_wrap=True,
        )
        reload = r["reload"]
        if reload.get("asked"):
            console.print(f"API reload: status {reload.get('status')}", soft_wrap=True)
    console.print(f"report: {result.json_path} and {result.html_path.name}", soft_wrap=True)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


@app.command()
@_one_line_errors
def backtest(
    test: Annotated[
        Path | None,
        typer.Option(
            help="A held-out events.csv that came after the store's log (default: the store's"
            " last window, with the champion's configuration refitted before it).",
            show_default=False,
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help="Ask a running API (serving the shop as it stood before the window) instead of"
            " serving in process.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Score the champion on a held-out window through the serving path, beside popularity and
    plain BM25 item-kNN, and write the report to reports/."""
    from retailrec.client import api_base
    from retailrec.training.backtest import backtest as run_backtest
    from retailrec.training.backtest import write_report

    settings = get_settings()
    progress, task = _spinner("backtest")
    with progress:
        report = run_backtest(
            settings,
            test,
            api_base(api) if api else None,
            _feature_config(),
            progress=lambda stage: progress.update(task, description=stage),
        )
    metrics = {
        "NDCG@10": "ndcg_at_10",
        "Recall@20": "recall_at_20",
        "HitRate@10": "hit_rate_at_10",
        "buy NDCG@10": "ndcg_at_10_buy",
        "buy Recall@20": "recall_at_20_buy",
        "buy HitRate@10": "hit_rate_at_10_buy",
        "all NDCG@10": "ndcg_at_10_all",
        "all Recall@20": "recall_at_20_all",
        "all buy NDCG@10": "ndcg_at_10_buy_all",
    }
    for all_items in (False, True):
        protocol = "all items, exclude_seen=false" if all_items else "new items"
        table = Table(
            title=f"backtest of champion {report.champion_version} ({report.champion_model}):"
            f" {report.source}; {protocol}"
        )
        table.add_column("metric", no_wrap=True)
        rows = report.rows(all_items)
        for row in rows:
            table.add_column(str(row["ranker"]), justify="right", no_wrap=True)
        for label, key in metrics.items():
            table.add_row(label, *(f"{row[key]:.4f}" for row in rows))
        truth = "every item they touched" if all_items else "items new to them"
        table.caption = (
            f"{report.served_by}. Returning visitors (truth: {truth}) unless 'all';"
            " 'buy': carts and purchases"
        )
        console.print(table)
        against = "recently viewed" if all_items else "popularity"
        console.print(
            f"champion NDCG@10 ({protocol}) ="
            f" {report.ratio('bm25_itemknn', all_items=all_items):.2f}x plain BM25 item-kNN,"
            f" {report.ratio(against.replace(' ', '_'), all_items=all_items):.2f}x {against}",
            soft_wrap=True,
        )
    rep = report.repeat
    console.print(
        f"re-visits: {rep['revisit_share']:.1%} of returning visitors' (visitor, item) pairs in"
        f" the window were touched before; {rep['visitors_with_revisit']:.1%} of"
        f" {int(rep['returning_visitors']):,} returning visitors came back to one",
        soft_wrap=True,
    )
    console.print(
        "anonymous sessions, "
        + _session_figures(
            [(r["ranker"], r["hit_rate@20"], r["mrr@20"]) for r in report.session_rows()],
            int(report.sessions["examples"]),
        ),
        soft_wrap=True,
    )
    for note in report.warnings:
        err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    paths = write_report(report, settings.reports_dir)
    console.print(f"report: {paths[0]} and {paths[1]}", soft_wrap=True)


@app.command()
@_one_line_errors
def monitor(
    fail_on_drift: Annotated[
        bool,
        typer.Option(
            "--fail-on-drift",
            help="Exit 3 when drift is detected, 4 when the log cannot say (too little history).",
        ),
    ] = False,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Then retrain on the latest data, promote only a better model, reload the API.",
        ),
    ] = False,
    models: Annotated[
        str | None, typer.Option(help="Models to retrain (comma-separated; default: all).")
    ] = None,
    every: Annotated[
        str | None, typer.Option(help="Run again every interval (e.g. 1h, 30m) until stopped.")
    ] = None,
    current_days: Annotated[int, typer.Option(min=1, help="Length of the current window.")] = 7,
    reference_days: Annotated[
        int, typer.Option(min=1, help="Length of the reference window before it.")
    ] = 56,
    reference: Annotated[
        str,
        typer.Option(help="weeks: the weeks before; champion: up to the champion's data end."),
    ] = "weeks",
    online_days: Annotated[
        float,
        typer.Option(min=0, help="Served answers from the last N days feed online metrics."),
    ] = 7.0,
    attribution_hours: Annotated[
        float, typer.Option(min=0, help="An event this soon after serving counts as followed.")
    ] = 24.0,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Ask the API at RETAILREC_API_URL to run this with --retrain beside its data"
            " (for schedulers without the data disk, such as a Render cron job).",
        ),
    ] = False,
    max_runs: Annotated[int | None, typer.Option(hidden=True, min=1)] = None,
) -> None:
    """Drift and online-quality report into reports/; optionally retrain through the gate."""
    from retailrec import pipeline
    from retailrec.client import ApiClient
    from retailrec.monitoring import monitor as mon
    from retailrec.monitoring.drift_detector import DriftConfig

    names = _model_names(models)
    if remote:
        client = ApiClient.from_settings(get_settings())
        if client is None:
            raise CommandError(
                "the API did not start a retraining run: RETAILREC_API_URL is not set"
            )
        with client:
            answer = client.retrain(names)
        if answer.status != 202:
            why = answer.error or answer.reason
            status = f" ({answer.status})" if answer.status else ""
            raise CommandError(f"the API did not start a retraining run{status}: {why}")
        console.print(f"the API started a retraining run at {answer.body['started_ms']}")
        return
    if every is not None and fail_on_drift:
        raise typer.BadParameter("--fail-on-drift ends a single run; leave it out with --every")
    if reference not in ("weeks", "champion"):
        raise typer.BadParameter("--reference is weeks or champion")
    config = mon.MonitorConfig(
        drift=DriftConfig(current_days=current_days, reference_days=reference_days),
        reference=reference,
        online_days=online_days,
        attribution_hours=attribution_hours,
        retrain=retrain,
        models=names,
    )

    def once() -> Any:
        progress, _task = _spinner("monitoring" + (" and retraining" if retrain else ""))
        with progress:
            result = pipeline.monitor(get_settings(), config)
        _print_monitor(result)
        return result

    if every is not None:
        try:
            interval = mon.parse_interval(every)
        except UsageError as exc:
            raise typer.BadParameter(str(exc)) from None
        console.print(f"monitoring every {every}; Ctrl-C stops", soft_wrap=True)
        try:
            mon.run_every(interval, once, max_runs=max_runs)
        except KeyboardInterrupt:
            console.print("stopped")
        return
    result = once()
    if fail_on_drift and result.drifted:
        raise typer.Exit(mon.EXIT_DRIFT)
    if fail_on_drift and not result.drift.judged:
        err_console.print(
            f"error: drift cannot be judged: {result.drift.verdict}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(mon.EXIT_UNJUDGED)
