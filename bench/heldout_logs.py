"""Held-out shop logs, made differently from ``retailrec synth``, to judge quality on data that no
one tuned to.

``retailrec synth`` draws a category-taste shop: a visitor's taste is a few categories of a
25-root tree, and sessions browse one category. The logs here are made by other mechanisms:

* ``walk``: items and visitors live in a 16-dimensional latent space (no categories at all, no
  item properties file); a session is a walk along "people who viewed this viewed that" links,
  steered by the visitor's taste, with re-views of earlier items; 2019, 60 days.
* ``fashion``: a catalogue that turns over: items live about three weeks, new ones arrive every
  day, tastes are over 40 flat categories (item properties given, no tree) and drift slowly;
  visitors come back often; 2021, 45 days.
* ``real``: the real Retailrocket sample in ``../shared`` (1,500 visitors: too sparse to rank
  models, kept as a check that everything runs on real data).
* ``movielens``: a public ratings log, MovieLens 100k (943 people, 1,682 films, 100,000 ratings,
  1997-09 to 1998-04), read from the RecBole wheel that ``make heldout-data`` fetches (pinned by
  hash) into ``bench/data/``. A rating is an event at its time: ``addtocart`` for 4 or 5 stars
  (liked), ``view`` for 1 to 3; a film's first genre is its category (``categoryid``). The
  clock is moved on by 1,096 weeks (to 2018-19, weekdays kept): the ETL rejects timestamps
  before 2000 as a unit mistake.

Each log is written in Retailrocket's format (``timestamp,visitorid,event,itemid,transactionid``,
milliseconds). ``split(log, days)`` cuts it into the history a shop would have and the held-out
last days, scored by ``bench/bench_heldout.py`` through the API.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DAY_MS = 86_400_000
SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/retailrocket-sample/events.csv"
MOVIELENS_WHEEL = Path(__file__).resolve().parent / "data/recbole-1.2.1-py3-none-any.whl"
_ML100K = "recbole/dataset_example/ml-100k/ml-100k"
#: MovieLens 100k's clock moved on by whole weeks, past the ETL's lower bound (2000).
_ML_SHIFT_MS = 1_096 * 7 * DAY_MS


@dataclass
class Log:
    name: str
    events: pd.DataFrame
    item_properties: pd.DataFrame | None = None


def _softmax_pick(rng: np.random.Generator, logits: np.ndarray) -> int:
    p = np.exp(logits - logits.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def _events_frame(rows: list[tuple[int, int, str, int, int | None]]) -> pd.DataFrame:
    ts, vis, ev, item, tx = zip(*rows, strict=True)
    frame = pd.DataFrame(
        {
            "timestamp": np.array(ts, dtype=np.int64),
            "visitorid": np.array(vis, dtype=np.int64),
            "event": list(ev),
            "itemid": np.array(item, dtype=np.int64),
            "transactionid": pd.array(list(tx), dtype="Int64"),
        }
    )
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _funnel(
    rng: np.random.Generator,
    rows: list[tuple[int, int, str, int, int | None]],
    visitor: int,
    t: int,
    item: int,
    affinity: float,
    basket: list[int],
    tx_id: int,
) -> int:
    """A view, and maybe a cart and a purchase, growing with affinity; returns the time."""
    rows.append((t, visitor, "view", item, None))
    if rng.random() < 0.02 + 0.05 * max(affinity, 0.0):
        t += int(rng.integers(5_000, 120_000))
        rows.append((t, visitor, "addtocart", item, None))
        if rng.random() < 0.35:
            basket.append(item)
    return t


def walk_shop(seed: int = 11, n_items: int = 6_000, n_visitors: int = 30_000) -> Log:
    """Sessions are taste-steered walks over item-to-item links (see the module docstring)."""
    rng = np.random.default_rng(seed)
    dim = 16
    item_vec = rng.normal(size=(n_items, dim)) / np.sqrt(dim)
    log_pop = np.log(1.0 / np.arange(1, n_items + 1) ** 0.9)[rng.permutation(n_items)]
    # Each item links to 15 others: nearest in the latent space among a random 400, by popularity.
    links = np.empty((n_items, 15), dtype=np.int64)
    for i in range(n_items):
        cand = rng.choice(n_items, 400, replace=False)
        score = item_vec[cand] @ item_vec[i] * 4 + 0.5 * log_pop[cand]
        links[i] = cand[np.argsort(-score)[:15]]
    start = 1_551_398_400_000  # 2019-03-01
    days = 60
    rows: list[tuple[int, int, str, int, int | None]] = []
    tx_next = 1
    item_ids = rng.choice(np.arange(100_000, 999_999), n_items, replace=False)
    for v in range(n_visitors):
        taste = rng.normal(size=dim) / np.sqrt(dim) * 3
        visitor = 10_000_000 + v * 7
        n_sessions = 1 + rng.geometric(0.55) - 1
        times = np.sort(rng.uniform(0, days * DAY_MS, n_sessions)).astype(np.int64) + start
        for t0 in times:
            t = int(t0)
            cand = rng.choice(n_items, 300, replace=False)
            cur = int(cand[_softmax_pick(rng, item_vec[cand] @ taste + log_pop[cand])])
            seen: list[int] = []
            basket: list[int] = []
            for _step in range(1 + rng.geometric(0.35)):
                affinity = float(item_vec[cur] @ taste)
                t = _funnel(rng, rows, visitor, t, int(item_ids[cur]), affinity, basket, tx_next)
                seen.append(cur)
                t += int(rng.integers(10_000, 300_000))
                r = rng.random()
                if r < 0.6:  # follow a link, steered by taste
                    nxt = links[cur]
                    cur = int(nxt[_softmax_pick(rng, item_vec[nxt] @ taste)])
                elif r < 0.75 and seen:  # look again at something seen
                    cur = int(rng.choice(seen))
                else:
                    cand = rng.choice(n_items, 300, replace=False)
                    cur = int(cand[_softmax_pick(rng, item_vec[cand] @ taste + log_pop[cand])])
            if basket:
                t += int(rng.integers(60_000, 600_000))
                for it in dict.fromkeys(basket):
                    rows.append((t, visitor, "transaction", it, tx_next))
                tx_next += 1
    return Log("walk", _events_frame(rows))


def fashion_shop(seed: int = 23, n_visitors: int = 25_000) -> Log:
    """A catalogue that turns over, with flat categories and drifting tastes."""
    rng = np.random.default_rng(seed)
    n_cats, days = 40, 45
    start = 1_614_556_800_000  # 2021-03-01
    # Items arrive every day and live about three weeks.
    arrive = np.repeat(np.arange(-20, days), 120)
    n_items = len(arrive)
    life = rng.gamma(3.0, 7.0, n_items)
    cat = rng.integers(0, n_cats, n_items)
    appeal = rng.lognormal(0, 1.0, n_items)
    item_ids = rng.choice(np.arange(2_000_000, 9_999_999), n_items, replace=False)
    rows: list[tuple[int, int, str, int, int | None]] = []
    tx_next = 1
    for v in range(n_visitors):
        visitor = 500_000 + v * 3
        likes = rng.dirichlet(np.full(n_cats, 0.08))
        n_sessions = 1 + rng.geometric(0.4) - 1
        times = np.sort(rng.uniform(0, days * DAY_MS, n_sessions)).astype(np.int64)
        for t0 in times:
            day = t0 / DAY_MS
            live = np.flatnonzero((arrive <= day) & (arrive + life > day))
            # Taste drifts: a little of a random category mixes in per session.
            likes = 0.9 * likes + 0.1 * rng.dirichlet(np.full(n_cats, 0.08))
            fresh = np.exp(-(day - arrive[live]) / 10.0)
            weight = likes[cat[live]] * appeal[live] * fresh + 1e-12
            t = int(start + t0)
            basket: list[int] = []
            n_views = 1 + rng.geometric(0.3)
            picks = rng.choice(live, size=min(n_views, len(live)), p=weight / weight.sum())
            for it in picks:
                affinity = float(likes[cat[it]] * 3 - 0.3)
                t = _funnel(rng, rows, visitor, t, int(item_ids[it]), affinity, basket, tx_next)
                t += int(rng.integers(10_000, 240_000))
            if basket:
                t += int(rng.integers(60_000, 600_000))
                for it in dict.fromkeys(basket):
                    rows.append((t, visitor, "transaction", it, tx_next))
                tx_next += 1
    events = _events_frame(rows)
    seen = np.isin(item_ids, events["itemid"].unique())
    props = pd.DataFrame(
        {
            "timestamp": start + np.maximum(arrive[seen], 0) * DAY_MS,
            "itemid": item_ids[seen],
            "property": "categoryid",
            "value": (cat[seen] + 1000).astype(str),
        }
    )
    return Log("fashion", events, props)


def real_sample() -> Log | None:
    if not SHARED_SAMPLE.is_file():
        return None
    return Log("real", pd.read_csv(SHARED_SAMPLE))


def movielens() -> Log:
    """MovieLens 100k as a shop's log (see the module's docstring)."""
    if not MOVIELENS_WHEEL.is_file():
        raise SystemExit(f"{MOVIELENS_WHEEL} is missing: run `make heldout-data` first")
    with zipfile.ZipFile(MOVIELENS_WHEEL) as wheel:
        ratings = pd.read_csv(wheel.open(f"{_ML100K}.inter"), sep="\t")
        films = pd.read_csv(wheel.open(f"{_ML100K}.item"), sep="\t", quoting=csv.QUOTE_NONE)
    ratings.columns = ["visitorid", "itemid", "rating", "timestamp"]
    liked = ratings["rating"].to_numpy() >= 4
    events = pd.DataFrame(
        {
            "timestamp": ratings["timestamp"].to_numpy(np.int64) * 1000 + _ML_SHIFT_MS,
            "visitorid": ratings["visitorid"].to_numpy(np.int64),
            "event": np.where(liked, "addtocart", "view"),
            "itemid": ratings["itemid"].to_numpy(np.int64),
            "transactionid": pd.array([None] * len(ratings), dtype="Int64"),
        }
    ).sort_values(["timestamp", "visitorid", "itemid"], kind="stable")
    genre = films.iloc[:, 3].fillna("unknown").str.split(" ").str[0]
    codes = {name: i for i, name in enumerate(sorted(genre.unique()))}
    properties = pd.DataFrame(
        {
            "timestamp": int(events["timestamp"].min()),
            "itemid": films.iloc[:, 0].to_numpy(np.int64),
            "property": "categoryid",
            "value": genre.map(codes).astype(str).to_numpy(),
        }
    )
    return Log("movielens", events.reset_index(drop=True), properties)


def split(log: pd.DataFrame, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shop's history, and its last ``days`` days held out."""
    cut = int(log["timestamp"].max()) - int(days * DAY_MS)
    ts = log["timestamp"].to_numpy()
    return log[ts < cut], log[ts >= cut]


def write(log: Log, history: pd.DataFrame, held_out: pd.DataFrame, out: Path) -> Path:
    """``out/raw/events.csv`` (+ item properties) for the pipeline, ``out/held_out.csv``."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    history.to_csv(raw / "events.csv", index=False)
    if log.item_properties is not None:
        cut = int(held_out["timestamp"].min())
        props = log.item_properties
        props[props["timestamp"] < cut].to_csv(raw / "item_properties.csv", index=False)
    held_out.to_csv(out / "held_out.csv", index=False)
    return raw
