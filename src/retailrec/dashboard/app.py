"""The RetailRec dashboard: data, models, a recommendations explorer and monitoring.

Run with ``retailrec dashboard`` (or ``streamlit run`` on this file). Pages are chosen in the
sidebar, or with ``?page=data|models|recommendations|monitoring`` in the URL. Expensive reads are
cached for a minute; the explorer serves answers with the API's own code (the serving package's
``RecommendationService``), or asks a running API when ``RETAILREC_API_URL`` is set.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from retailrec.config import Settings, get_settings
from retailrec.dashboard import data
from retailrec.errors import RetailRecError, UsageError

PAGES = {
    "data": "Data",
    "models": "Models",
    "recommendations": "Recommendations",
    "monitoring": "Monitoring",
}
TTL = 60


def _settings() -> Settings:
    return get_settings()


@st.cache_data(ttl=TTL, show_spinner="Reading the event log...")
def _overview(data_dir: str) -> data.DataOverview:
    return data.data_overview(_settings())


@st.cache_data(ttl=TTL, show_spinner="Reading MLflow...")
def _runs(data_dir: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    return data.model_runs(_settings())


@st.cache_data(ttl=TTL)
def _catalogue(data_dir: str) -> pd.DataFrame:
    return data.catalogue(_settings())


@st.cache_data(ttl=TTL)
def _visitors(data_dir: str) -> list[int]:
    return data.sample_visitors(_settings())


@st.cache_resource(show_spinner="Loading the champion...", max_entries=1)
def _served(data_dir: str, version: str) -> Any:
    """The champion as the API serves it (one copy per version, shared by sessions)."""
    from retailrec.serving.holder import ModelHolder

    served, _ = ModelHolder(_settings()).load(version)
    return served


def _champion_version(settings: Settings) -> str | None:
    from retailrec import registry

    current = registry.champion(registry.configure(settings), settings.model_name)
    return None if current is None else str(current.version)


# -- pages ------------------------------------------------------------------------------------


def page_data(settings: Settings) -> None:
    st.header("Data")
    overview = _overview(str(settings.data_dir))
    if overview.n_events == 0:
        st.info("The event log is empty: run `retailrec pipeline` (or `retailrec etl`).")
        return
    funnel = overview.funnel
    cols = st.columns(4)
    cols[0].metric("Events", f"{overview.n_events:,}")
    cols[1].metric("Visitors", f"{funnel.get('any', 0):,}")
    cols[2].metric("Items", f"{len(overview.item_popularity):,}")
    cols[3].metric(
        "Visitors who bought", f"{funnel.get('transaction', 0) / max(funnel.get('any', 1), 1):.2%}"
    )
    daily = overview.daily.melt(id_vars="day", var_name="event", value_name="events")
    fig = px.line(daily, x="day", y="events", color="event", log_y=True)
    fig.update_layout(title="Events per day, by type")
    st.plotly_chart(fig, key="daily")

    steps = ["any", "view", "addtocart", "transaction"]
    labels = ["any event", "viewed", "added to cart", "bought"]
    fig = go.Figure(go.Funnel(y=labels, x=[funnel.get(s, 0) for s in steps]))
    fig.update_layout(title="Conversion funnel (visitors)")
    st.plotly_chart(fig, key="funnel")

    left, right = st.columns(2)
    tail = data.long_tail(overview.item_popularity)
    fig = px.line(tail, x="item_share", y="event_share")
    fig.update_layout(
        title="Long tail: share of events on the top x of items",
        xaxis_tickformat=".0%",
        yaxis_tickformat=".0%",
    )
    left.plotly_chart(fig, key="tail")
    act = overview.visitor_activity.rename_axis("events").reset_index()
    fig = px.bar(act.head(30), x="events", y="visitors", log_y=True)
    fig.update_layout(title="Visitor activity: visitors per number of events")
    right.plotly_chart(fig, key="activity")

    fig = px.bar(overview.top_categories, x="categoryid", y="share")
    fig.update_layout(title="Top categories (share of events)", yaxis_tickformat=".1%")
    st.plotly_chart(fig, key="categories")

    st.subheader("Last ETL run")
    report = overview.etl_report
    if report is None:
        st.info("No ETL run recorded yet.")
        return
    cols = st.columns(4)
    for col, key in zip(cols, ("rows_read", "loaded", "duplicates", "rejected"), strict=True):
        col.metric(key.replace("_", " "), f"{report.get(key, 0):,}")
    reasons = report.get("rejected_by_reason") or {}
    if reasons:
        st.dataframe(
            pd.DataFrame({"reason": list(reasons), "rows": list(reasons.values())}),
            hide_index=True,
            key="rejects",
        )
    else:
        st.caption("No row was rejected.")
    examples = data.rejected_rows(report)
    if examples is not None:
        st.caption(f"The first rejected rows, as read (all of them: {report['rejected_file']}):")
        st.dataframe(examples, hide_index=True, key="rejected_rows")
    for warning in report.get("warnings") or []:
        st.warning(f"ETL: {warning}")
    if report.get("item_properties_read"):
        st.caption(
            f"Item property rows: {report['item_properties_read']:,} read ="
            f" {report.get('item_properties_kept', 0):,} categoryid/available"
            f" + {report.get('item_properties_other', 0):,} other (hashed) properties"
            f" + {report.get('item_properties_rejected', 0):,} rejected."
        )
    if report.get("categories_read"):
        st.caption(
            f"Category tree rows: {report['categories_read']:,} read,"
            f" {report.get('categories_rejected', 0):,} rejected."
        )
    st.caption(f"Source: {report.get('source', '?')}")


def page_models(settings: Settings) -> None:
    st.header("Models")
    runs, versions, history = _runs(str(settings.data_dir))
    if runs.empty:
        st.info("No training run yet: run `retailrec train`.")
        return
    latest = runs["training_run"].iloc[0]
    show_all = st.toggle("All training runs", value=False, key="all_runs")
    table = runs if show_all else runs[runs["training_run"] == latest]
    st.dataframe(table, hide_index=True, key="runs")
    metric = st.selectbox(
        "Metric",
        ["ndcg_at_10", "recall_at_20", "ndcg_at_10_buy", "hit_rate_at_10", "coverage_at_10"],
        key="metric",
    )
    latest_runs = runs[runs["training_run"] == latest]
    candidates = latest_runs[latest_runs["role"] != "oracle"]
    fig = px.bar(candidates, x="model", y=metric)
    oracle = latest_runs[latest_runs["role"] == "oracle"]
    if not oracle.empty and pd.notna(oracle[metric].iloc[0]):
        fig.add_hline(
            y=float(oracle[metric].iloc[0]),
            line_dash="dash",
            annotation_text="oracle (true preferences)",
        )
    fig.update_layout(title=f"{metric} on the test window, latest training run")
    st.plotly_chart(fig, key="metrics_chart")

    st.subheader("Backtest")
    report = data.latest_backtest(settings)
    if report is None:
        st.info(
            "No backtest yet: `retailrec backtest` scores the champion through the serving path"
            " beside popularity and plain BM25 item-kNN."
        )
    else:
        rows = pd.DataFrame(report["rows"]).set_index("ranker")
        champion, bm25 = rows.loc["champion", "ndcg_at_10"], rows.loc["bm25_itemknn", "ndcg_at_10"]
        st.metric(
            f"Champion {report['champion_version']} ({report['champion_model']}), NDCG@10",
            f"{champion:.4f}",
            f"{champion - bm25:+.4f} vs plain BM25 item-kNN",
        )
        st.dataframe(rows, key="backtest")
        if report.get("rows_all_items"):  # reports written before the all-items protocol lack it
            rep = report["repeat"]
            st.markdown(
                f"**All items** (`exclude_seen=false`, the API's default): re-visits are"
                f" {rep['revisit_share']:.1%} of returning visitors' pairs in the window."
            )
            st.dataframe(
                pd.DataFrame(report["rows_all_items"]).set_index("ranker"),
                key="backtest_all_items",
            )
        st.caption(
            f"Window: {report['source']}; {report['served_by']}."
            + "".join(f" Warning: {w}" for w in report["warnings"])
            + f" ({report['_path']})"
        )

    st.subheader("Champion")
    if versions.empty:
        st.info("No registered version yet.")
        return
    champion = versions[versions["champion"]]
    if champion.empty:
        st.warning("No version holds the champion alias: run `retailrec promote`.")
    else:
        row = champion.iloc[0]
        st.metric(
            f"Champion: version {row['version']} ({row['model']})",
            f"NDCG@10 {row['test_ndcg_at_10']:.4f}",
        )
    st.caption("Champion history (oldest first): " + (" → ".join(history) or "none"))
    st.dataframe(versions, hide_index=True, key="versions")


def page_recommendations(settings: Settings) -> None:
    st.header("Recommendations explorer")
    catalogue = _catalogue(str(settings.data_dir))
    mode = st.radio("For", ["a visitor", "a session"], horizontal=True, key="mode")
    k = st.slider("How many", 1, 50, 10, key="k")
    visitor: int | None = None
    items: list[int] = []
    if mode == "a visitor":
        known = _visitors(str(settings.data_dir))
        typed = st.text_input("Visitor id (empty: pick one below)", key="visitor_typed")
        picked = st.selectbox("Active visitors", known, key="visitor_pick") if known else None
        try:
            visitor = data.parse_id(typed, "visitor") if typed.strip() else picked
        except UsageError as exc:
            st.error(str(exc))
            return
        c1, c2 = st.columns(2)
        exclude_purchased = c1.checkbox("Exclude purchased", True, key="ex_purchased")
        exclude_seen = c2.checkbox("Exclude seen", False, key="ex_seen")
    else:
        text = st.text_input("Item ids just viewed, latest last", key="session_items")
        try:
            items = data.parse_ids(text, "item")
        except UsageError as exc:
            st.error(str(exc))
            return
    if visitor is None and not items:
        st.info("Choose a visitor or type some item ids.")
        return
    if visitor is not None:
        history = data.visitor_history(settings, visitor)
        history["categoryid"] = catalogue["categoryid"].reindex(history["itemid"]).to_numpy()
        st.subheader(f"History of visitor {visitor} (latest first)")
        st.dataframe(history, hide_index=True, key="history")
    started = time.perf_counter()
    answer = _recommend(
        settings,
        visitor,
        items,
        k,
        exclude_purchased if visitor else True,
        exclude_seen if visitor else False,
    )
    if answer is None:
        return
    ms = (time.perf_counter() - started) * 1000
    recs = pd.DataFrame(answer["items"])
    recs["categoryid"] = catalogue["categoryid"].reindex(recs["item_id"]).to_numpy()
    st.subheader("Recommendations")
    st.markdown(
        f"strategy **{answer['strategy']}** · model version {answer['model_version']} · "
        f"{ms:.0f} ms · via {answer['via']}"
    )
    st.dataframe(recs, hide_index=True, key="recommendations")


def _recommend(
    settings: Settings,
    visitor: int | None,
    items: list[int],
    k: int,
    exclude_purchased: bool,
    exclude_seen: bool,
) -> dict[str, Any] | None:
    if settings.api_url:
        try:
            answer = data.recommend_via_api(
                settings.api_url,
                visitor,
                items,
                k,
                {"exclude_purchased": exclude_purchased, "exclude_seen": exclude_seen},
            )
        except OSError as exc:
            st.error(f"the API at {settings.api_url} did not answer: {exc}")
            return None
        return {**answer, "via": settings.api_url}
    from retailrec.errors import UnknownEntityError
    from retailrec.feature_store import store
    from retailrec.serving.rules import Rules

    version = _champion_version(settings)
    if version is None:
        st.warning("No champion yet: run `retailrec pipeline`.")
        return None
    served = _served(str(settings.data_dir), version)
    try:
        if visitor is not None:
            with store.open_store(settings.feature_store) as conn:
                got = served.for_visitor(conn, visitor, k, Rules(exclude_purchased, exclude_seen))
        else:
            got = served.for_session(items, k, Rules(exclude_purchased=False))
    except UnknownEntityError as exc:
        st.error(str(exc))
        return None
    return {
        "items": [{"item_id": i, "score": s} for i, s in zip(got.items, got.scores, strict=True)],
        "strategy": got.strategy,
        "model_version": version,
        "via": "the API's code, in process",
    }


def page_monitoring(settings: Settings) -> None:
    st.header("Monitoring")
    off = not settings.api_key
    typed = st.text_input(
        "API key (actions need it)", type="password", key="action_key", disabled=off
    )
    if off:
        st.caption("Actions are off: set RETAILREC_API_KEY where the dashboard runs.")
    if st.button("Run the monitor now", key="run_monitor", disabled=off):
        refusal = data.action_refusal(settings, typed)
        if refusal is not None:
            st.error(refusal)
        else:
            from retailrec.monitoring.monitor import run_monitor

            with st.spinner("Checking drift and online metrics..."):
                try:
                    run_monitor(settings)
                except RetailRecError as exc:
                    st.error(str(exc))
    payload = data.latest_monitor_report(settings)
    if payload is None:
        st.info("No monitoring report yet: run `retailrec monitor` or press the button.")
        return
    drift = payload["drift"]
    (st.error if drift["drifted"] else st.success)(drift["verdict"])
    st.caption(f"Report: {payload['_path']}")
    signals = pd.DataFrame(drift["signals"])[
        ["name", "statistic", "value", "threshold", "p_value", "noise_floor", "drifted"]
    ]
    st.dataframe(
        signals,
        hide_index=True,
        key="signals",
        column_config={
            "p_value": st.column_config.NumberColumn(format="%.2e"),
            "value": st.column_config.NumberColumn(format="%.4f"),
            "noise_floor": st.column_config.NumberColumn(format="%.4f"),
        },
    )
    from retailrec.monitoring.report import figures

    for i, fig in enumerate(figures(payload)):
        st.plotly_chart(fig, key=f"monitor_fig_{i}")
    st.subheader("Online quality")
    online = payload.get("online") or {}
    if not online.get("requests"):
        st.info("Nothing served in the window yet.")
    else:
        cols = st.columns(4)
        ctr = online["click_through"]["rate"]
        cols[0].metric("Answers served", f"{online['requests']:,}")
        cols[1].metric("Click-through proxy", "-" if ctr is None else f"{ctr:.2%}")
        fallback = online["fallback_rate"]
        cols[2].metric("Fallback rate", "-" if fallback is None else f"{fallback:.2%}")
        cols[3].metric("Coverage", f"{online['coverage']['rate']:.2%}")
        st.json(online, expanded=False)
    if payload.get("retrain"):
        st.subheader("Last retraining")
        st.json(payload["retrain"], expanded=False)


RENDER = {
    "data": page_data,
    "models": page_models,
    "recommendations": page_recommendations,
    "monitoring": page_monitoring,
}


def main() -> None:
    st.set_page_config(page_title="RetailRec", layout="wide")
    settings = _settings()
    asked = st.query_params.get("page", "data")
    keys = list(PAGES)
    page = st.sidebar.radio(
        "Page",
        keys,
        index=keys.index(asked) if asked in keys else 0,
        format_func=PAGES.__getitem__,
        key="page",
    )
    st.sidebar.caption(f"Data: {settings.data_dir}")
    if settings.api_url:
        st.sidebar.caption(f"API: {settings.api_url}")
    missing = data.missing_store(settings)
    if missing is not None:
        st.warning(f"No feature store at {missing}: run `retailrec pipeline` first.")
        return
    RENDER[page](settings)


main()
