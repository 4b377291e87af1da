"""The two-stage ranker against its base and popularity in the visitor's categories, through the
serving path, on a synthetic shop or a held-out log (bench/heldout_logs.py).

The log's last ``--days`` are cut off first for held-out logs (what bench_heldout.py scores
through the API); the rest is split into validation and test windows as training splits it. The
ranker is trained on the validation window (its figure there out of fold), served over the test
window's candidates; the single models are fitted before each window and served the same way.

    python bench/bench_ranker.py [--log small|walk|fashion] [--base ease] [--seed 42]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import heldout_logs
from _util import report
from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
from retailrec.synthetic import synth
from retailrec.training import two_stage
from retailrec.training.split import choose_windows, time_split
from retailrec.training.train import Stage, _fit

DAY_MS = 86_400_000


def _log(name: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if name in ("walk", "fashion"):
        log = heldout_logs.walk_shop() if name == "walk" else heldout_logs.fashion_shop()
        events = log.events
        events = events[events["timestamp"] <= events["timestamp"].max() - 7 * DAY_MS]
        return events.drop_duplicates(), log.item_properties
    shop = synth.generate(synth.config_for(name), random_state=seed)
    return shop.events.drop_duplicates(), shop.item_properties


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default="small")
    parser.add_argument("--base", default="ease")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    events, properties = _log(args.log, args.seed)
    windows = choose_windows(events)
    split = time_split(events, windows.test_days, windows.val_days)
    empty = pd.DataFrame(
        {
            "itemid": pd.Series(dtype="int64"),
            "categoryid": pd.Series(dtype="Int64"),
            "available": pd.Series(dtype="boolean"),
        }
    )

    def stage(name: str, start: int, end: int) -> Stage:
        catalogue = item_catalogue(properties, start - 1) if properties is not None else empty
        return Stage.make(name, events, catalogue, start, end, FeatureConfig())

    val = stage("val", split.val_start_ms, split.test_start_ms - 1)
    test = stage("test", split.test_start_ms, split.end_ms)
    result: dict[str, object] = {"log": args.log, "base": args.base, "seed": args.seed}
    for name in (args.base, "popular_category"):
        scores = []
        for st in (val, test):
            model, _ = _fit(name, {}, st.data)
            scores.append(round(st.score(name, {}, model)["ndcg_at_10"], 4))
        result[name] = {"val": scores[0], "test": scores[1]}
    start = time.perf_counter()
    fitted = two_stage.fit_and_score(val, test, args.base, {})
    result["ranker_seconds"] = round(time.perf_counter() - start, 1)
    if fitted is None:
        result["ranker"] = "no returning visitor touched a candidate"
    else:
        result["ranker"] = {
            "val_out_of_fold": round(fitted.val["ndcg_at_10"], 4),
            "test": round(fitted.test["ndcg_at_10"], 4),
            "visitors": fitted.booster.info["visitors"],
            "rows": fitted.booster.info["rows"],
            "top_features": {
                k: round(v, 3)
                for k, v in sorted(fitted.booster.importance().items(), key=lambda kv: -kv[1])[:6]
            },
        }
    report(f"ranker-{args.log}", result)


if __name__ == "__main__":
    main()
