"""Benchmark: the sequential session model, its training throughput and what it adds to sessions.

One synthetic shop; its last 7 days are the test window, the 7 before them validation. As
training does: the session blend and the sequence model's share are chosen on the validation
sessions, then each ranker is scored on the test window's sessions (next distinct item from the
prefix, HitRate@20 and MRR@20): the served answer (``for_session``, as the API answers
``POST /v1/sessions/recommendations``) with and without the sequence model, the sequence model
alone, sequential rules and session-kNN.

Also timed: the sequence model's fit (examples/s, on each device asked for that is present) and
a served session answer with the sequence model mixed in against one without, in the same run.

    python bench/bench_sequence.py [--scale small] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    import torch

    from retailrec.data_pipeline.feature_pipeline import FeatureConfig, item_catalogue
    from retailrec.models import make_model
    from retailrec.serving.rules import Rules
    from retailrec.synthetic import synth
    from retailrec.training import evaluate as ev
    from retailrec.training.split import time_split
    from retailrec.training.train import Stage, tune_session

    shop = synth.generate(synth.config_for(args.scale), random_state=args.seed)
    log = shop.events.drop_duplicates()
    split = time_split(log, 7, 7)
    catalogue = item_catalogue(shop.item_properties)
    config = FeatureConfig()
    result: dict[str, object] = {"command": " ".join(sys.argv), "events": len(log)}

    start = time.perf_counter()
    val = Stage.make("val", log, catalogue, split.val_start_ms, split.test_start_ms - 1, config)
    blend = tune_session(val)
    result["chosen_on_validation"] = blend
    result["validation_seconds"] = round(time.perf_counter() - start, 1)

    test = Stage.make("test", log, catalogue, split.test_start_ms, split.end_ms, config)
    test.session_params = blend
    aux = test.aux()  # fits the sequence model on the test stage's data, on the default device
    fits = {}
    for device in args.devices.split(","):
        if device == "cuda" and not torch.cuda.is_available():
            fits[device] = "no GPU on this machine"
            continue
        model = make_model("sequence", device=device).fit(test.data)
        fits[device] = model.train_stats_  # type: ignore[attr-defined]
    result["fit"] = fits
    result["training_examples"] = aux["sequence"].train_stats_["examples"]  # type: ignore[attr-defined]

    served = test.served()
    session = aux["session"]
    examples = ev.next_item_examples(test.window)
    rankers = ev.session_rankers(ev.served_session_ranker(served), served, test.histories.events)
    share = float(blend["sequence_weight"])
    figures = ev.session_comparison(rankers, examples)
    session.sequence_weight = 0.0  # type: ignore[attr-defined]
    plain = ev.session_scores(ev.served_session_ranker(served), examples, 20)
    figures["served_without_sequence"], figures["served_without_sequence_mrr"] = plain
    result["test_sessions"] = {k: round(v, 4) for k, v in figures.items()}
    rules = figures["sequential_rules"], figures["sequential_rules_mrr"]
    result["served_over_sequential_rules"] = {
        "hit_rate_at_20": round(figures["served"] / max(rules[0], 1e-9), 3),
        "mrr_at_20": round(figures["served_mrr"] / max(rules[1], 1e-9), 3),
    }

    # Latency of one served session answer, with and without the sequence model, same run.
    prefixes = [p.tolist() for p, _ in examples[: args.calls]]
    rules_k = Rules(exclude_purchased=False)
    timing = {}
    for name, weight in (("without_sequence", 0.0), ("with_sequence", max(share, 0.5))):
        session.sequence_weight = weight  # type: ignore[attr-defined]
        for items in prefixes[:50]:
            served.for_session(items, 10, rules_k)  # warm
        t0 = time.perf_counter()
        for items in prefixes:
            served.for_session(items, 10, rules_k)
        timing[name] = round((time.perf_counter() - t0) / max(len(prefixes), 1) * 1e3, 3)
    session.sequence_weight = share  # type: ignore[attr-defined]
    result["ms_per_session_answer"] = timing
    result["with_over_without"] = round(timing["with_sequence"] / timing["without_sequence"], 2)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["torch"] = torch.__version__
    report(f"sequence-{args.scale}", result)


if __name__ == "__main__":
    main()
