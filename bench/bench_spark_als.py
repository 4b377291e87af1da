"""Benchmark: ALS fitted by MLlib (``train --engine spark``) against implicit, on the same matrix.

Issue 18: fit time of MLlib's ALS against implicit's, with the same settings and the same
confidences, and the quality each reaches through the serving path (NDCG@10 on the synthetic
shop's test window, both folded in by the serving code, as ``tests/models/test_spark_als.py``
checks at 32 factors). Spark runs on ``RETAILREC_SPARK_MASTER`` (default ``local[2]``) with
``--driver-memory`` (in local mode the executors run inside the driver's JVM).

    python bench/bench_spark_als.py [--scale small] [--factors 32,64] [--driver-memory 2g]
"""

from __future__ import annotations

import argparse
import os
import time

from _util import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--factors", default="32,64")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--driver-memory", default="2g")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from retailrec.config import get_settings
    from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
    from retailrec.models import make_model
    from retailrec.spark import session
    from retailrec.synthetic import synth
    from retailrec.training.split import time_split
    from retailrec.training.train import Stage

    shop = synth.generate(synth.config_for(args.scale), random_state=args.seed)
    events = shop.events.drop_duplicates()
    split = time_split(events)
    catalogue = item_catalogue(shop.item_properties, split.test_start_ms - 1)
    stage = Stage.make(
        "test", events, catalogue, split.test_start_ms, split.end_ms, FeatureConfig()
    )
    matrix = stage.data.matrix
    master = get_settings().spark_master
    spark = session(master, {"spark.driver.memory": args.driver_memory})
    result: dict[str, object] = {
        "scale": args.scale,
        "matrix": f"{matrix.shape[0]:,} visitors x {matrix.shape[1]:,} items, {matrix.nnz:,} cells",
        "iterations": args.iterations,
        "spark": f"{master}, driver memory {args.driver_memory}",
    }
    try:
        for factors in [int(f) for f in args.factors.split(",")]:
            settings = {"factors": factors, "regularization": 0.05, "alpha": 2.0}
            settings["iterations"] = args.iterations
            for engine in ("implicit", "spark"):
                start = time.perf_counter()
                model = make_model("als", engine=engine, **settings).fit(stage.data)
                seconds = time.perf_counter() - start
                ndcg = stage.score("als", settings, model)["ndcg_at_10"]
                result[f"{engine} {factors}f"] = f"fit {seconds:.1f} s, NDCG@10 {ndcg:.4f}"
                print(engine, factors, f"{seconds:.1f} s", f"{ndcg:.4f}", flush=True)
    finally:
        spark.stop()
    report(f"spark_als_{args.scale}", result)


if __name__ == "__main__":
    main()
