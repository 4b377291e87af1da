"""Benchmark: how long each dashboard page's data takes to load, cold (the first visit; later
visits within a minute are served from Streamlit's cache).

Target (issue 7): each page on ``full`` data appears within a few seconds. Measured on a data
folder made by ``retailrec pipeline`` (``--data``), each loader in a fresh process so that nothing
is cached or imported already, against a baseline of starting Python and importing the package.

    python bench/bench_dashboard.py [--data DIR] [--scale full]

Without ``--data`` a pipeline and a monitor run go first, into a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _util import report, retailrec, run_measured

SETUP = """
import os, sys
os.environ["RETAILREC_DATA_DIR"] = sys.argv[1]
from retailrec.config import get_settings
from retailrec.dashboard import data
settings = get_settings()
"""

PAGES = {
    "baseline_import": "",
    "data": "data.data_overview(settings)",
    "models": "data.model_runs(settings)",
    "recommendations": (
        "from retailrec.serving.holder import ModelHolder\n"
        "from retailrec.serving.rules import Rules\n"
        "from retailrec.feature_store import store\n"
        "cat = data.catalogue(settings)\n"
        "visitors = data.sample_visitors(settings)\n"
        "served, _ = ModelHolder(settings).load()\n"
        "data.visitor_history(settings, visitors[0])\n"
        "with store.open_store(settings.feature_store_path) as conn:\n"
        "    served.for_visitor(conn, visitors[0], 10, Rules())"
    ),
    "monitoring": "data.latest_monitor_report(settings)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--scale", default="full")
    parser.add_argument("--models", default="popular_category,als")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    data = args.data or tmp / "data"
    try:
        if args.data is None:
            retailrec(data, "pipeline", "--scale", args.scale, "--models", args.models)
            retailrec(data, "monitor")
        result: dict[str, object] = {"scale": args.scale if args.data is None else str(data)}
        for page, code in PAGES.items():
            seconds, peak = run_measured(SETUP + code, str(data))
            result[f"{page}_s"] = round(seconds, 2)
            result[f"{page}_peak_mib"] = round(peak)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report("dashboard", result)


if __name__ == "__main__":
    main()
