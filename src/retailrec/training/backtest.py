"""``retailrec backtest``: does the engine beat the simple answer on this shop's own data?

The champion is scored on a held-out window exactly as the API answers it, beside the two answers
any shop could have without RetailRec: popularity, and a plain BM25 item-kNN (implicit, K=50, view
1 / cart 3 / purchase 5, no recency).

* ``--test FILE``: a held-out log that came after the store's (the week after an export, say).
  Every visitor's history is what the store holds before the file's first event, the clock is
  the newest of those events, and the champion's bundle is served as it is deployed.
* no ``--test``: the last window of the store (sized as training sizes it). The champion has seen
  that window, so its configuration is refitted on the events before it and bundled as training
  bundles it: the score of the champion's recipe, as served, on days it did not see.
* ``--api URL``: the champion's answers come over HTTP from a running API
  (``GET /v1/users/{id}/recommendations?exclude_seen=true``), which should serve the shop as it
  stood before the window; the baselines are computed here on the same histories.

Two protocols. **New items** (the headline): the truth is the items each visitor touched in the
window that they had not touched before, and the champion is asked with ``exclude_seen=true``.
**All items**: the truth is every item touched in the window, and the champion is asked as the
API answers by default (``exclude_seen=false``: the visitor's own items placed among the new ones
by the repeat curves), beside popularity and BM25 item-kNN that may return seen items, and a
"recently viewed" baseline (the visitor's own items, then popular ones). The report also says how
much of the window is re-visits: the share of returning visitors' (visitor, item) pairs that
were touched before, and of returning visitors with at least one.

Metrics (NDCG@10, Recall@20, HitRate@10) for any interaction and for carts plus purchases, on
returning visitors and on all visitors; and for anonymous sessions, next-item HitRate@20 of the
served answers against sequential rules computed on the days before the window. The report goes
to the terminal, and to ``reports/backtest-*.json`` and ``.html``; the dashboard's Models page
shows the latest.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retailrec.client import ApiClient
from retailrec.config import Settings
from retailrec.data_pipeline import etl
from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.errors import BacktestError
from retailrec.events import utc_text
from retailrec.feature_store import store
from retailrec.serving.rules import Rules
from retailrec.serving.service import RecommendationService
from retailrec.training import evaluate as ev
from retailrec.training import two_stage
from retailrec.training.split import choose_windows, time_split

#: The reported metrics, each for any interaction and for carts plus purchases.
METRICS = ("ndcg_at_10", "recall_at_20", "hit_rate_at_10")
RANKERS = ("champion", "popularity", "bm25_itemknn")
#: The all-items protocol's rankers: the same, and the visitor's own items first.
RANKERS_ALL_ITEMS = (*RANKERS, "recently_viewed")
#: The session report's rankers (see ``evaluate.session_rankers``).
SESSION_RANKERS = ("served", "sequence", "sequential_rules", "session_knn")
#: Returning visitors ranked at most (a seeded sample beyond): +-0.014 of noise at most.
MAX_WARM = 5_000


@dataclass
class BacktestReport:
    source: str
    served_by: str
    champion_version: str
    champion_model: str
    window_start_ms: int
    window_end_ms: int
    clock_ms: int
    n_test_events: int
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The all-items protocol: every item touched in the window is the truth.
    results_all_items: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``revisit_share`` (returning visitors' window pairs touched before) and
    #: ``visitors_with_revisit`` (share of returning visitors with one).
    repeat: dict[str, float] = field(default_factory=dict)
    #: Next-item HitRate@20 on the window's sessions, and MRR@20 (``<name>_mrr``): ``served``
    #: (``POST /v1/sessions/recommendations``), ``sequence`` (the bundle's sequence model alone),
    #: ``sequential_rules`` and ``session_knn`` (on the days before); ``examples``.
    sessions: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def rows(self, all_items: bool = False) -> list[dict[str, Any]]:
        """One row per ranker: every metric, for each target on returning and all visitors (of
        the all-items protocol with ``all_items``)."""
        out = []
        results = self.results_all_items if all_items else self.results
        for name in RANKERS_ALL_ITEMS if all_items else RANKERS:
            m = results[name]
            row: dict[str, Any] = {"ranker": name}
            for target in ("", "_buy"):
                for metric in METRICS:
                    row[f"{metric}{target}"] = m[f"{metric}{target}"]
                    row[f"{metric}{target}_all"] = ev.all_visitors(m, f"{metric}{target}")
            out.append(row)
        return out

    def session_rows(self) -> list[dict[str, Any]]:
        """The session figures as rows: ranker, HitRate@20, MRR@20."""
        s = self.sessions
        return [
            {"ranker": name, "hit_rate@20": s[name], "mrr@20": s[f"{name}_mrr"]}
            for name in SESSION_RANKERS
            if name in s and f"{name}_mrr" in s
        ]

    def ratio(self, against: str, metric: str = "ndcg_at_10", all_items: bool = False) -> float:
        """The champion's ``metric`` (returning visitors) over a baseline's."""
        results = self.results_all_items if all_items else self.results
        base = results[against][metric]
        return float("inf") if base == 0 else results["champion"][metric] / base

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows": self.rows(), "rows_all_items": self.rows(all_items=True)}


def revisits(histories: ev.Histories, window: pd.DataFrame) -> dict[str, float]:
    """How much of the window returning visitors spent on items they had touched before."""
    pairs = window.drop_duplicates(["visitorid", "itemid"])
    pairs = pairs[np.isin(pairs["visitorid"].to_numpy(), histories.visitors)]
    if pairs.empty:
        return {"revisit_share": 0.0, "visitors_with_revisit": 0.0, "returning_visitors": 0.0}
    before = pd.MultiIndex.from_arrays([histories._vis, histories._item]).unique()
    again = pd.MultiIndex.from_frame(pairs[["visitorid", "itemid"]]).isin(before)
    per_visitor = pd.Series(again).groupby(pairs["visitorid"].to_numpy()).any()
    return {
        "revisit_share": float(again.mean()),
        "visitors_with_revisit": float(per_visitor.mean()),
        "returning_visitors": float(len(per_visitor)),
    }


def _api_ranker(client: ApiClient, exclude_seen: bool = True) -> ev.Ranker:
    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        out = np.full((len(visitor_ids), n), -1, dtype=np.int64)
        for r, v in enumerate(visitor_ids):
            answer = client.for_visitor(int(v), n, {"exclude_seen": exclude_seen})
            if not answer.ok:
                raise BacktestError(f"{client.base} answered {answer.status} for visitor {int(v)}")
            items = [int(it["item_id"]) for it in answer.body["items"]][:n]
            out[r, : len(items)] = items
        return out

    return rank


def _api_session_ranker(client: ApiClient) -> ev.SessionRanker:
    def rank(items: np.ndarray, n: int) -> np.ndarray:
        answer = client.for_session(items[-100:].tolist(), n)
        if not answer.ok:
            raise BacktestError(f"{client.base} answered {answer.status} for a session")
        return np.array([int(it["item_id"]) for it in answer.body["items"]], dtype=np.int64)

    return rank


def _read_test_log(path: Path, settings: Settings) -> tuple[pd.DataFrame, list[str]]:
    """The held-out log, validated and de-duplicated by the ETL's own rules (bad rows are
    quarantined to ``rejected/`` with a reason, as ``retailrec etl`` does)."""
    report = etl.EtlReport(source=str(path), started_ms=int(time.time() * 1000))
    with closing(store.connect(":memory:")) as mem:
        etl.load_events(mem, Path(path), settings.rejected_dir, report)
        events = store.read_events(mem)
    notes = list(report.warnings)
    if report.rejected:
        notes.append(
            f"{report.rejected:,} rows of {path} were rejected ({report.rejected_file});"
            f" {report.loaded:,} events scored"
        )
    if events.empty:
        raise BacktestError(f"{path} holds no valid event to score")
    return events, notes


def backtest(
    settings: Settings,
    test_file: Path | None = None,
    api_url: str | None = None,
    feature_config: fp.FeatureConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> BacktestReport:
    """Score the champion and the baselines on a held-out window (see the module docstring)."""
    from retailrec import registry
    from retailrec.training.train import Stage, _fit, assemble, read_log

    step = progress or (lambda _s: None)
    feature_config = feature_config or fp.FeatureConfig.from_settings(settings)
    client = registry.configure(settings)
    champion = registry.champion(client, settings.model_name)
    if champion is None:
        raise BacktestError(f"no champion for {settings.model_name}: run `retailrec pipeline`")
    version, model_name = str(champion.version), champion.tags.get("model", "?")
    step("reading the feature store")
    log = read_log(settings)
    notes: list[str] = []
    if test_file is not None:
        step(f"reading {test_file}")
        window, notes = _read_test_log(test_file, settings)
        start = int(window["timestamp"].min())
        before = log[log["timestamp"].to_numpy() < start]
        if before.empty:
            raise BacktestError(
                f"the store holds no event before {test_file}'s first one: nothing to recommend"
                " from (load the shop's earlier log with `retailrec etl`)"
            )
        if int(champion.tags.get("data_end_ms", 0)) >= start:
            notes.append(
                f"champion {version} was trained on events from the test log's time: its"
                " scores are optimistic"
            )
        histories, clock = ev.Histories(before), int(before["timestamp"].max())
        bundle = registry.load_bundle(client, settings.model_name, version)
        source, served_note = str(test_file), f"champion version {version} as deployed"
    else:
        windows = choose_windows(log)
        split = time_split(log, windows.test_days, windows.val_days)
        stage = Stage.in_store(
            settings, "test", log, split.test_start_ms, split.end_ms, feature_config
        )
        stage.session_params = json.loads(champion.tags.get("session_params", "{}")) or None
        params = json.loads(champion.tags.get("params", "{}"))
        step(f"refitting {model_name} on the events before the window")
        if model_name == "ranker":  # its ranker trained on the window before, as training did
            before = Stage.in_store(
                settings, "val", log, split.val_start_ms, split.test_start_ms - 1, feature_config
            )
            before.session_params = stage.session_params
            bundle = two_stage.refit(before, stage, params)
        else:
            model, _ = _fit(model_name, params, stage.data)
            bundle = assemble(stage.data, model_name, params, model, stage.aux())
        # Measured on the validation window, before this one: the curves served with it.
        bundle.metadata["repeat"] = json.loads(champion.tags.get("repeat_curves", "null"))
        histories, clock, window = stage.histories, stage.clock_ms, stage.window
        start = split.test_start_ms
        source = f"the store's last {windows.test_days:g} days"
        served_note = f"champion {version}'s configuration ({model_name}) refitted before them"
    api = ApiClient(api_url) if api_url else None
    service = RecommendationService(bundle, version)

    def champion_ranker(exclude_seen: bool) -> ev.Ranker:
        if api is not None:
            return _api_ranker(api, exclude_seen)
        rules = ev.EVAL_RULES if exclude_seen else Rules()
        return ev.served_ranker(service, histories, clock, rules)

    report = BacktestReport(
        source=source,
        served_by=(f"the API at {api_url}" if api_url else "the serving path, in process")
        + f": {served_note}",
        champion_version=version,
        champion_model=model_name,
        window_start_ms=start,
        window_end_ms=int(window["timestamp"].max()),
        clock_ms=clock,
        n_test_events=len(window),
        warnings=notes,
    )
    bm25 = ev.bm25_rankers(histories)  # fitted once for both protocols
    rankers = {
        "champion": champion_ranker(exclude_seen=True),
        "popularity": ev.popularity_ranker(histories),
        "bm25_itemknn": bm25[True],
    }
    for name, ranker in rankers.items():
        step(f"scoring {name}")
        report.results[name] = ev.evaluate(
            ranker, histories, window, n_items=bundle.n_items, max_warm=MAX_WARM
        )
    step("measuring re-visits")
    report.repeat = revisits(histories, window)
    rankers_all = {
        "champion": champion_ranker(exclude_seen=False),
        "popularity": ev.popularity_ranker(histories, exclude_seen=False),
        "bm25_itemknn": bm25[False],
        "recently_viewed": ev.recently_viewed_ranker(histories),
    }
    for name, ranker in rankers_all.items():
        step(f"scoring {name}, all items")
        report.results_all_items[name] = ev.evaluate(
            ranker,
            histories,
            window,
            n_items=bundle.n_items,
            max_warm=MAX_WARM,
            exclude_seen=False,
        )
    step("scoring anonymous sessions")
    examples = ev.next_item_examples(window)
    session_rank = (
        _api_session_ranker(api) if api is not None else ev.served_session_ranker(service)
    )
    report.sessions = ev.session_comparison(
        ev.session_rankers(session_rank, service, histories.events), examples, 20
    )
    if api is not None:
        api.close()
    n = int(report.results["champion"]["n_relevant"])
    if n < 1_000:
        report.warnings.append(
            f"{n:,} returning visitors with new items in the window: differences under"
            f" ±{ev.noise_band(n):.3f} may be noise"
        )
    return report


def write_report(report: BacktestReport, reports_dir: Path) -> tuple[Path, Path]:
    """``backtest-<time>.json`` and ``.html`` in ``reports_dir``."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(report.created_ms / 1000))
    js = reports_dir / f"backtest-{stamp}.json"
    js.write_text(json.dumps(report.to_dict(), indent=2, default=float))
    page = reports_dir / f"backtest-{stamp}.html"
    page.write_text(_html(report))
    return js, page


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in rows[0] if c != "ranker"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["ranker", *cols])
    body = "".join(
        "<tr><td>"
        + html.escape(str(r["ranker"]))
        + "</td>"
        + "".join(f"<td>{r[c]:.4f}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(report: BacktestReport) -> str:
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings)
    rep = report.repeat
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>RetailRec backtest</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}table{{border-collapse:collapse}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>Backtest: champion {html.escape(report.champion_version)}
({html.escape(report.champion_model)})</h1>
<p>Window: {html.escape(report.source)}, {utc_text(report.window_start_ms)} to
{utc_text(report.window_end_ms)} ({report.n_test_events:,} events); clock
{utc_text(report.clock_ms)}. Answers: {html.escape(report.served_by)}.</p>
<h2>New items (<code>exclude_seen=true</code>)</h2>
<p>NDCG@10 of the champion: {report.ratio("bm25_itemknn"):.2f}&times; plain BM25 item-kNN,
{report.ratio("popularity"):.2f}&times; popularity (returning visitors, any interaction).</p>
{_table(report.rows())}
<h2>All items (<code>exclude_seen=false</code>, the API's default)</h2>
<p>Re-visits: {rep.get("revisit_share", 0):.1%} of returning visitors' (visitor, item) pairs in
the window were touched before; {rep.get("visitors_with_revisit", 0):.1%} of
{int(rep.get("returning_visitors", 0)):,} returning visitors came back to at least one item.
NDCG@10 of the champion: {report.ratio("bm25_itemknn", all_items=True):.2f}&times; BM25
item-kNN, {report.ratio("recently_viewed", all_items=True):.2f}&times; recently viewed.</p>
{_table(report.rows(all_items=True))}
<p>Anonymous sessions, next-item HitRate@20 and MRR@20 over
{int(report.sessions.get("examples", 0)):,} steps (the baselines fitted on the days before the
window).</p>
{_table(report.session_rows()) if report.session_rows() else ""}
<p>Columns without a suffix: returning visitors (truth: items new to them, or every item in the
all-items table); <code>_buy</code>: carts and purchases; <code>_all</code>: returning and new
visitors together.</p>
<ul>{notes}</ul></body></html>
"""
