"""Benchmark: each model's fit time, ALS against a bare implicit fit, two-tower examples/s.

Targets (issue 4): the ALS fit within 1.3x a bare ``implicit`` fit on the same matrix with the
same parameters, in the same run; every model's fit time recorded; the two-tower model's training
throughput on CPU (and on a GPU where one is lent: ``--device cuda``).

    python bench/bench_models.py [--scale full] [--seed 42] [--device auto]
"""

from __future__ import annotations

import argparse
import time

from _util import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    from retailrec.data_pipeline.feature_pipeline import item_catalogue
    from retailrec.models import Dataset, make_model
    from retailrec.models.factors import ALSRecommender
    from retailrec.synthetic import synth

    shop = synth.generate(synth.config_for(args.scale), random_state=args.seed)
    data = Dataset.from_events(shop.events.drop_duplicates(), item_catalogue(shop.item_properties))
    result: dict[str, object] = {
        "scale": args.scale,
        "users": data.n_users,
        "items": data.n_items,
        "nnz": int(data.matrix.nnz),
    }

    # ALS: ours against implicit used plainly, alternating, best of N each.
    from implicit.cpu.als import AlternatingLeastSquares

    params = ALSRecommender().params()
    ours, bare = [], []
    for _ in range(args.repeats):
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(**params, random_state=0, num_threads=0)
            t = time.perf_counter()
            model.fit(data.matrix, show_progress=False)
            bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        make_model("als").fit(data)
        ours.append(time.perf_counter() - t)
    result["als_fit_seconds"] = round(min(ours), 2)
    result["bare_implicit_als_fit_seconds"] = round(min(bare), 2)
    result["als_over_bare"] = round(min(ours) / min(bare), 3)

    for name in (
        "popular",
        "popular_7d",
        "popular_category",
        "itemknn_cosine",
        "itemknn_bm25",
        "bpr",
        "session",
        "bought_together",
    ):
        t = time.perf_counter()
        make_model(name).fit(data)
        result[f"{name}_fit_seconds"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    tower = make_model("two_tower", device=args.device).fit(data)
    result["two_tower_fit_seconds"] = round(time.perf_counter() - t, 2)
    stats = tower.train_stats_  # type: ignore[attr-defined]
    result["two_tower_device"] = "cuda" if stats["device"] else "cpu"
    result["two_tower_examples_per_second"] = round(stats["examples_per_second"])
    result["two_tower_examples"] = int(stats["examples"])

    report(f"models-{args.scale}", result)


if __name__ == "__main__":
    main()
