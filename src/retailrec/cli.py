"""The ``retailrec`` command line. Commands parse their arguments and call library code.

Exit codes: 0 success, 1 failure (with a one-line reason), 2 bad usage.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from retailrec.config import get_settings

app = typer.Typer(
    name="retailrec",
    help="RetailRec: recommendations for an online shop, from event log to served model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(Exception):
    """A failure to report to the user as one line, exit code 1."""


def _one_line_errors(func: F) -> F:
    """Turn the library's user-facing errors into a one-line message and exit code 1."""
    from retailrec.data_pipeline.download import DownloadError
    from retailrec.data_pipeline.readers import DataFileError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (CommandError, DataFileError, DownloadError, ValueError, OSError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Configure logging once, at the entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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


@app.command()
@_one_line_errors
def synth(
    scale: Annotated[
        str, typer.Option(help="tiny (1%), small (10%) or full (100%) of Retailrocket.")
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
    from retailrec.data_pipeline import synth as synth_mod

    out_dir = out if out is not None else get_settings().raw_dir
    config = synth_mod.config_for(scale, drift=drift)
    progress, step = _stage_progress(total=5)
    with progress:
        data = synth_mod.generate(config, random_state=seed, progress=step)
        step("writing")
        paths = synth_mod.write(data, out_dir)
    stats = synth_mod.summarize(data.events)
    table = Table(title=f"synthetic shop, scale {scale}, seed {seed}{', drift' if drift else ''}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key in ("rows", "visitors", "items", "transactions", "duplicates"):
        table.add_row(key, f"{stats[key]:,}")
    for key in ("view_share", "addtocart_share", "transaction_share", "one_event_visitor_share"):
        table.add_row(key, f"{stats[key]:.2%}")
    console.print(table)
    console.print(
        f"wrote {', '.join(str(p) for p in paths.values())} and {out_dir / 'truth'}/",
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
