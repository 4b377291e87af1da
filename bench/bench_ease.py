"""Benchmark: EASE's fit time and peak memory at ``full`` scale, by head size, against plain BM25
item-kNN on the same matrix (the baseline, same run).

Issue 15 asks for EASE's fit time and memory at ``full`` scale. Each fit runs in a process of
its own (peak RSS is the process's, matrix building included), on the events of a
``retailrec pipeline`` data folder (``processed/events.parquet``) or a fresh synthetic shop.

    python bench/bench_ease.py [--data DIR | --scale full] [--heads 1024,4096,8192]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _util import report, run_measured

FIT = """
import json, sys, time
from pathlib import Path
import pandas as pd
from retailrec.models import Dataset, make_model
events = pd.read_parquet(sys.argv[1])
data = Dataset.from_events(events)
started = time.perf_counter()
model = make_model(sys.argv[2], **json.loads(sys.argv[3])).fit(data)
fit = time.perf_counter() - started
Path(sys.argv[4]).write_text(json.dumps({"fit_s": round(fit, 2), "items": data.n_items,
                                         "users": data.n_users,
                                         "weights": int(model.similarity_.nnz)}))
"""

SYNTH = """
import sys
from pathlib import Path
from retailrec.synthetic import synth
data = synth.generate(synth.config_for(sys.argv[1]), random_state=42)
data.events.drop_duplicates().to_parquet(sys.argv[2])
"""


def _fit(events: Path, name: str, params: dict[str, object]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        seconds, peak = run_measured(FIT, str(events), name, json.dumps(params), str(out))
        fitted: dict[str, object] = json.loads(out.read_text())
    return {**fitted, "wall_s": round(seconds, 1), "peak_mib": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--scale", default="full")
    parser.add_argument("--heads", default="1024,4096,8192")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is not None:
            events = args.data / "processed" / "events.parquet"
        else:
            events = Path(tmp) / "events.parquet"
            run_measured(SYNTH, args.scale, str(events))
        result: dict[str, object] = {"scale": args.scale if args.data is None else str(args.data)}
        result["itemknn_bm25"] = _fit(events, "itemknn_bm25", {})
        for head in (int(h) for h in args.heads.split(",")):
            result[f"ease_{head}"] = _fit(events, "ease", {"max_items": head})
    report("ease", result)


if __name__ == "__main__":
    main()
