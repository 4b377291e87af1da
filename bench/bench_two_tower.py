"""Benchmark: the two-tower model's training throughput on a GPU against the CPU, same run.

The same full synthetic shop, the same examples and schedule, fitted once on each device (the
CPU with all its cores); prints examples/s for both and their ratio, and how close the two
fits' item vectors rank (the same seed, different kernels: near, not identical). Needs only
numpy, pandas, scipy, pyarrow, threadpoolctl and torch, so it runs on a machine with an
accelerator and none of the serving stack.

    python bench/bench_two_tower.py [--scale full] [--epochs 5] [--max-examples 400000]
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-examples", type=int, default=400_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--devices", default="cuda,cpu")
    args = parser.parse_args()

    import numpy as np
    import torch

    from retailrec.data_pipeline.feature_pipeline import item_catalogue
    from retailrec.models import Dataset
    from retailrec.models.two_tower import TwoTowerRecommender
    from retailrec.synthetic import synth

    start = time.perf_counter()
    shop = synth.generate(synth.config_for(args.scale), random_state=args.seed)
    data = Dataset.from_events(shop.events.drop_duplicates(), item_catalogue(shop.item_properties))
    result: dict[str, object] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, Python"
        f" {platform.python_version()}, torch {torch.__version__}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "scale": args.scale,
        "items": data.n_items,
        "data_seconds": round(time.perf_counter() - start, 1),
    }
    vectors = {}
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            result[device] = "no GPU"
            continue
        model = TwoTowerRecommender(
            epochs=args.epochs,
            max_examples=args.max_examples,
            batch_size=args.batch_size,
            device=device,
        )
        model.fit(data)
        result[device] = {k: round(v, 3) for k, v in model.train_stats_.items()}
        vectors[device] = model.item_factors_
    if len(vectors) == 2:
        a, b = vectors.values()
        gpu = result["cuda"]
        cpu = result["cpu"]
        assert isinstance(gpu, dict)
        assert isinstance(cpu, dict)
        result["gpu_over_cpu_examples_per_second"] = round(
            gpu["examples_per_second"] / cpu["examples_per_second"], 2
        )
        # Do the two fits agree? Share of each item's 10 nearest items (cosine) in common.
        rng = np.random.default_rng(0)
        probe = rng.choice(len(a), 200, replace=False)
        overlap = [
            len(
                set(np.argsort(-(a @ a[i]))[1:11].tolist())
                & set(np.argsort(-(b @ b[i]))[1:11].tolist())
            )
            / 10
            for i in probe
        ]
        result["nearest_10_overlap_gpu_vs_cpu"] = round(float(np.mean(overlap)), 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
