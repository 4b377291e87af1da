"""The readable drift report: one HTML page with interactive plotly charts.

The plotly library is written once, as ``plotly.min.js`` beside the reports, and each page refers
to it: the reports open offline and an hourly monitor does not store 4 MB per run.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

PLOTLY_JS = "plotly.min.js"


def _fmt_time(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def _signals_figure(signals: list[dict[str, Any]]) -> go.Figure:
    names = [s["name"] for s in signals]
    ratio = [s["value"] / s["threshold"] if s["threshold"] else 0 for s in signals]
    floor = [(s["noise_floor"] or 0) * 2 / s["threshold"] if s["threshold"] else 0 for s in signals]
    colors = ["#d62728" if s["drifted"] else "#1f77b4" for s in signals]
    fig = go.Figure(
        [
            go.Bar(x=names, y=ratio, marker_color=colors, name="statistic / threshold"),
            go.Scatter(x=names, y=floor, mode="markers", name="2 x noise floor / threshold"),
        ]
    )
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="threshold")
    fig.update_layout(title="Signals (red: drifted)", yaxis_title="relative to threshold")
    return fig


def _shares_figure(title: str, ref: dict[str, float], cur: dict[str, float]) -> go.Figure:
    keys = list(dict.fromkeys([*ref, *cur]))
    fig = go.Figure(
        [
            go.Bar(x=keys, y=[ref.get(k, 0) for k in keys], name="reference"),
            go.Bar(x=keys, y=[cur.get(k, 0) for k in keys], name="current"),
        ]
    )
    fig.update_layout(title=title, barmode="group", yaxis_title="share")
    return fig


def _daily_figure(daily: dict[str, dict[str, int]], current_start_ms: int) -> go.Figure:
    days = sorted(daily, key=int)
    x = [_fmt_time(int(d))[:10] for d in days]
    fig = go.Figure(
        [
            go.Scatter(x=x, y=[daily[d].get(kind, 0) for d in days], name=kind, mode="lines")
            for kind in ("view", "addtocart", "transaction")
        ]
    )
    fig.add_vline(x=_fmt_time(current_start_ms)[:10], line_dash="dash")
    fig.update_layout(title="Events per day (dashed: the current window starts)", yaxis_type="log")
    return fig


def _latency_figure(latency: dict[str, dict[str, float]]) -> go.Figure:
    names = list(latency)
    fig = go.Figure(
        [
            go.Bar(x=names, y=[latency[n][p] for n in names], name=p)
            for p in ("p50_ms", "p95_ms", "p99_ms")
        ]
    )
    fig.update_layout(title="Latency per endpoint", barmode="group", yaxis_title="ms")
    return fig


def figures(payload: dict[str, Any]) -> list[go.Figure]:
    """The report's charts; the dashboard shows the same ones."""
    drift = payload["drift"]
    signals = {s["name"]: s for s in drift["signals"]}
    figs = [_signals_figure(drift["signals"])]
    if payload.get("daily"):
        figs.append(_daily_figure(payload["daily"], drift["current_start_ms"]))
    for name, title in (("category_mix", "Top categories"), ("item_popularity", "Top items")):
        if name in signals and signals[name]["reference"]:
            s = signals[name]
            figs.append(_shares_figure(title, s["reference"], s["current"]))
    online = payload.get("online") or {}
    if online.get("latency"):
        figs.append(_latency_figure(online["latency"]))
    return figs


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(payload: dict[str, Any], path: Path) -> Path:
    """Write the report page for a monitor payload (the JSON report's content) to ``path``."""
    js = path.parent / PLOTLY_JS
    if not js.is_file():
        js.write_text(get_plotlyjs(), encoding="utf-8")
    drift = payload["drift"]
    rows = [
        [
            s["name"],
            s["statistic"],
            f"{s['value']:.4f}",
            f"{s['threshold']:g}",
            f"{s['p_value']:.2g}",
            "-" if s["noise_floor"] is None else f"{s['noise_floor']:.4f}",
            "DRIFT" if s["drifted"] else "ok",
        ]
        for s in drift["signals"]
    ]
    online = payload.get("online") or {}
    ctr = online.get("click_through") or {}
    online_rows = [
        ["requests", str(online.get("requests", 0))],
        ["click-through proxy", _pct(ctr.get("rate"))],
        ["fallback rate (personalised requests)", _pct(online.get("fallback_rate"))],
        ["coverage", _pct((online.get("coverage") or {}).get("rate"))],
        [
            "served popularity percentile",
            _num((online.get("served_popularity") or {}).get("mean_percentile")),
        ],
        ["p99 latency (ms)", _num(((online.get("latency") or {}).get("all") or {}).get("p99_ms"))],
    ]
    retrain = payload.get("retrain")
    charts = "".join(f.to_html(full_html=False, include_plotlyjs=False) for f in figures(payload))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>RetailRec drift report</title>
<script src="{PLOTLY_JS}"></script>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}.verdict{{font-size:1.3em}}</style></head>
<body><h1>RetailRec drift report</h1>
<p class="verdict"><b>{html.escape(drift["verdict"])}</b></p>
<p>Current window {_fmt_time(drift["current_start_ms"])} to {_fmt_time(drift["current_end_ms"])}
({drift["current_events"]:,} events); reference {_fmt_time(drift["reference_start_ms"])} to
{_fmt_time(drift["reference_end_ms"])} ({drift["reference_events"]:,} events,
{drift["reference_weeks"]} weeks).</p>
{_table(rows, ["signal", "statistic", "value", "threshold", "p", "noise floor", "verdict"])}
<h2>Online quality</h2>{_table(online_rows, ["metric", "value"])}
<h2>Retraining</h2><p>{html.escape(_retrain_line(retrain))}</p>
{charts}</body></html>"""
    path.write_text(page, encoding="utf-8")
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _retrain_line(retrain: dict[str, Any] | None) -> str:
    if retrain is None:
        return "not requested (retailrec monitor --retrain)"
    verb = "promoted" if retrain["promoted"] else "not promoted"
    return f"version {retrain['version']} ({retrain['best_model']}) {verb}: {retrain['reason']}"
