"""Synthetic Retailrocket-shaped data with a known answer.

The generator reproduces the statistics of Retailrocket's full ``events.csv`` (scaled), and plants a
structure that a recommender can learn and an oracle can score exactly:

* The catalogue is a category tree (25 roots). Every item sits in one leaf category, has a
  long-tailed base popularity, a quality (how likely a view converts), an introduction day
  (new items keep appearing), a popularity trend, and a weekly availability.
* Every visitor has a latent taste: a distribution over one to three leaf categories, often
  siblings in the tree. Each session picks one category (from the taste, or with probability
  ``epsilon`` from the shop-wide category mix) and browses items of that category, chosen by their
  popularity in that week. So a visitor's true preference for item ``i`` at week ``w`` is

      P(i | visitor, w) = [(1 - eps) * taste(cat(i)) + eps * mix(cat(i))] * P(i | cat(i), w)

  which is what :class:`Oracle` ranks by.
* Carting and buying become more likely as the affinity ``quality(i) * (taste(cat(i)) + 0.05)``
  grows; busier visitors are likelier to cart.
* With ``drift=True`` the last three weeks shift: a wave of new items takes over trending
  categories, the category mix moves towards them, and carting drops.

Everything the models must not see goes to ``truth/``. The same seed always gives byte-identical
files.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from retailrec.errors import UsageError
from retailrec.events import DAY_MS

log = logging.getLogger(__name__)

WEEK_MS = 7 * DAY_MS

#: Statistics of the full Retailrocket ``events.csv`` (shared/data/retailrocket-sample/README.md).
FULL: dict[str, float] = {
    "rows": 2_756_101,
    "visitors": 1_407_580,
    "items": 235_061,
    "categories": 1_669,
    "category_roots": 25,
    "days": 138,
    "start_ms": 1_430_622_000_000,  # 2015-05-03T03:00Z
    "duplicates": 460,
    "view_share": 0.9667,
    "addtocart_share": 0.0252,
    "transaction_share": 0.0081,
    "one_event_visitor_share": 0.712,
    "items_per_transaction": 1.27,
    "viewers_carting": 0.0269,
    "carters_buying": 0.311,
    "visitors_buying": 0.0083,
    "cart_per_view": 0.0260,
    "transaction_per_cart": 0.324,
    "max_events_per_visitor": 7_757,
}

SCALES: dict[str, float] = {"tiny": 0.01, "small": 0.10, "full": 1.0, "10x": 10.0}
#: Ids of shard ``k`` of a shop past ``full`` scale start at ``k * SHARD_ID_STRIDE`` (every id of
#: one full-scale shop is below it: visitors 1.4M, items and categories fewer).
SHARD_ID_STRIDE = 10_000_000

EVENTS_COLUMNS = ["timestamp", "visitorid", "event", "itemid", "transactionid"]


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator. The defaults reproduce Retailrocket's statistics.

    Args:
        scale: Fraction of the full dataset's visitors and items (``SCALES`` names three).
        drift: Shift the last ``drift_days`` (new items, category mix, conversion).
    """

    scale: float = 0.01
    drift: bool = False
    # Catalogue.
    catalogue_factor: float = 1.55  # catalogue size / items that get at least one event
    popularity_sigma: float = 1.7  # log-normal spread of base popularity: the long tail
    quality_sigma: float = 0.6
    initial_item_share: float = 0.72  # items that exist on day 0; the rest appear later
    trend_sd_per_day: float = 0.008
    novelty_boost: float = 1.5  # extra popularity of a new item, fading over ~2 weeks
    unavailable_weight: float = 0.15  # how much an unavailable item is still viewed
    # Visitors and sessions.
    views_head: tuple[float, float, float, float] = (0.725, 0.141, 0.054, 0.025)  # P(1..4 views)
    views_tail_alpha: float = 1.70  # Pareto exponent of the >= 5 views tail
    taste_sizes: tuple[float, float, float] = (0.45, 0.35, 0.20)  # P(1, 2, 3 categories)
    sibling_share: float = 0.6  # extra taste categories that are siblings of the first
    epsilon: float = 0.10  # sessions that follow the shop-wide category mix
    new_session_p: float = 0.22
    repeat_view_p: float = 0.24
    session_gap_days: float = 4.0
    within_session_gap_s: float = 75.0
    # Funnel.
    carter_activity_power: float = 0.75
    buyer_cart_power: float = 2.0
    # Drift.
    drift_days: int = 21
    drift_new_item_share: float = 0.04
    drift_new_item_boost: float = 12.0
    drift_trending_share: float = 0.08
    drift_trending_boost: float = 10.0
    drift_epsilon: float = 0.6
    drift_cart_factor: float = 0.55

    @property
    def n_visitors(self) -> int:
        return max(50, round(FULL["visitors"] * self.scale))

    @property
    def n_target_items(self) -> int:
        return max(20, round(FULL["items"] * self.scale))

    @property
    def n_categories(self) -> int:
        return max(60, round(FULL["categories"] * float(np.sqrt(self.scale))))

    @property
    def start_ms(self) -> int:
        return int(FULL["start_ms"])

    @property
    def end_ms(self) -> int:
        return int(FULL["start_ms"] + FULL["days"] * DAY_MS)

    @property
    def n_weeks(self) -> int:
        return int(-(-FULL["days"] // 7))

    @property
    def drift_start_day(self) -> int:
        """The week boundary nearest ``drift_days`` before the end: the catalogue changes weekly."""
        return int(7 * round((FULL["days"] - self.drift_days) / 7))

    @property
    def drift_start_ms(self) -> int | None:
        return self.start_ms + self.drift_start_day * DAY_MS if self.drift else None

    @property
    def max_views(self) -> int:
        return max(200, round(FULL["max_events_per_visitor"] * min(1.0, self.scale * 4)))


@dataclass
class SynthData:
    """What the generator produces: the three Retailrocket files and the hidden truth."""

    events: pd.DataFrame
    item_properties: pd.DataFrame
    category_tree: pd.DataFrame
    truth_items: pd.DataFrame
    truth_visitors: pd.DataFrame
    truth_categories: pd.DataFrame
    item_week_prob: np.ndarray  # (n_weeks, n_catalogue) P(item | its category, week)
    params: dict[str, object] = field(default_factory=dict)


ProgressFn = Callable[[str], None]


def config_for(scale: str | float, drift: bool = False) -> SynthConfig:
    """A config for a named scale (``tiny``, ``small``, ``full``) or a fraction of the full data."""
    if isinstance(scale, str):
        if scale not in SCALES:
            raise UsageError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        fraction = SCALES[scale]
    else:
        fraction = float(scale)
    if not 0 < fraction <= 10:
        raise UsageError(f"scale must be in (0, 10], got {fraction}")
    return SynthConfig(scale=fraction, drift=drift)


def generate(
    config: SynthConfig, random_state: int = 0, progress: ProgressFn | None = None
) -> SynthData:
    """Generate a synthetic shop.

    Args:
        config: The generator's knobs; see :class:`SynthConfig`.
        random_state: Seed; the same seed gives the same data.
        progress: Called with the name of each stage as it starts.

    Returns:
        A :class:`SynthData` whose ``events`` has Retailrocket's columns, timestamps in Unix ms.
    """
    step = progress or (lambda _stage: None)
    rng = np.random.default_rng(random_state)
    step("catalogue")
    tree = _category_tree(config, rng)
    cat = _catalogue(config, rng, tree)
    step("visitors")
    vis = _visitors(config, rng, cat)
    step("sessions")
    ev = _view_events(config, rng, cat, vis)
    step("funnel")
    events = _funnel(config, rng, cat, vis, ev)
    step("files")
    events = _add_duplicates_and_shuffle(rng, events)
    item_properties = _item_properties(config, cat)
    data = SynthData(
        events=events,
        item_properties=item_properties,
        category_tree=tree[["categoryid", "parentid"]],
        truth_items=pd.DataFrame(
            {
                "itemid": cat.item_ids,
                "categoryid": cat.leaf_ids[cat.item_leaf],
                "base_popularity": cat.base,
                "quality": cat.quality,
                "intro_ms": config.start_ms + cat.intro_day.astype(np.int64) * DAY_MS,
                "drift_item": cat.drift_item,
            }
        ),
        truth_visitors=vis.taste_frame,
        truth_categories=pd.DataFrame(
            {
                "categoryid": cat.leaf_ids,
                "mix": cat.mix,
                "drift_mix": cat.drift_mix,
            }
        ),
        item_week_prob=cat.week_prob.astype(np.float32),
        params={
            "config": asdict(config),
            "seed": random_state,
            "start_ms": config.start_ms,
            "end_ms": config.end_ms,
            "week_ms": WEEK_MS,
            "epsilon": config.epsilon,
            "drift_epsilon": config.drift_epsilon,
            "drift_start_ms": config.drift_start_ms,
        },
    )
    return data


def write(data: SynthData, out_dir: Path) -> dict[str, Path]:
    """Write the Retailrocket files and ``truth/`` under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = out_dir / "truth"
    truth.mkdir(exist_ok=True)
    paths = {
        "events": out_dir / "events.csv",
        "item_properties": out_dir / "item_properties.csv",
        "category_tree": out_dir / "category_tree.csv",
    }
    # Retailrocket leaves transactionid empty on non-transactions; Int64 writes <NA> as "".
    data.events.to_csv(paths["events"], index=False, lineterminator="\n")
    data.item_properties.to_csv(paths["item_properties"], index=False, lineterminator="\n")
    data.category_tree.to_csv(paths["category_tree"], index=False, lineterminator="\n")
    data.truth_items.to_parquet(truth / "items.parquet", index=False)
    data.truth_visitors.to_parquet(truth / "visitors.parquet", index=False)
    data.truth_categories.to_parquet(truth / "categories.parquet", index=False)
    np.save(truth / "item_week_prob.npy", data.item_week_prob)
    (truth / "params.json").write_text(json.dumps(data.params, indent=2, sort_keys=True) + "\n")
    return paths


@dataclass
class WrittenShop:
    """A synthetic shop written to disk: what was asked, its statistics and where it went."""

    scale: str
    seed: int
    drift: bool
    stats: dict[str, float]
    paths: dict[str, Path]
    #: None for a shop past ``full`` scale: its shards have no single oracle.
    truth_dir: Path | None


def write_shop(
    scale: str,
    seed: int,
    out_dir: Path,
    *,
    drift: bool = False,
    progress: Callable[[str], None] | None = None,
) -> WrittenShop:
    """Generate a shop at ``scale`` with ``seed`` and write it (and ``truth/``) to ``out_dir``.

    Past ``full`` scale (``10x``) the shop is written as shards, one full-scale shop at a time,
    so that memory stays that of one (:func:`write_sharded`)."""
    step = progress or (lambda _s: None)
    config = config_for(scale, drift=drift)
    if config.scale > 1:
        return write_sharded(scale, config, seed, out_dir, progress=step)
    data = generate(config, random_state=seed, progress=step)
    step("writing")
    paths = write(data, out_dir)
    return WrittenShop(scale, seed, drift, summarize(data.events), paths, out_dir / "truth")


def write_sharded(
    scale: str,
    config: SynthConfig,
    seed: int,
    out_dir: Path,
    *,
    shards: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> WrittenShop:
    """A shop ``config.scale`` times Retailrocket's as ``shards`` (default ``ceil(scale)``)
    independent shards, each a shop of ``scale / shards`` (one full shop each for ``10x``) over
    the same days, with its own seed and its ids moved by ``k * SHARD_ID_STRIDE``: visitors,
    items, categories and transactions of two shards never meet. The three files are appended
    shard by shard, so memory is one shard's. No ``truth/`` is written: ten shops side by side
    have no single oracle (an earlier shop's is removed).

    The statistics are the shards' combined exactly where they can be (counts, event shares,
    one-event visitors); the long-tail measures of :func:`summarize` are left out."""
    step = progress or (lambda _s: None)
    n = shards or int(np.ceil(config.scale))
    shard_config = SynthConfig(**{**asdict(config), "scale": config.scale / n})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "events": out_dir / "events.csv",
        "item_properties": out_dir / "item_properties.csv",
        "category_tree": out_dir / "category_tree.csv",
    }
    tmp = {name: path.with_name(f".{path.name}.partial") for name, path in paths.items()}
    stale = out_dir / "truth"
    if (stale / "params.json").is_file():  # an earlier shop's oracle: not this one's
        shutil.rmtree(stale)
    stats: list[dict[str, float]] = []
    for k in range(n):
        step(f"shard {k + 1} of {n}")
        data = _moved(generate(shard_config, random_state=seed * 1_000 + k), k * SHARD_ID_STRIDE)
        for name, frame in (
            ("events", data.events),
            ("item_properties", data.item_properties),
            ("category_tree", data.category_tree),
        ):
            frame.to_csv(
                tmp[name], index=False, header=k == 0, mode="a" if k else "w", lineterminator="\n"
            )
        stats.append(summarize(data.events))
        del data
    for name, path in paths.items():
        tmp[name].replace(path)
    return WrittenShop(scale, seed, config.drift, _combined(stats), paths, None)


def _moved(data: SynthData, offset: int) -> SynthData:
    """``data`` with every id (visitor, item, category, transaction) moved up by ``offset``."""
    if not offset:
        return data
    events = data.events
    events["visitorid"] += offset
    events["itemid"] += offset
    events["transactionid"] += offset  # <NA> stays <NA>
    tree = data.category_tree.copy()
    tree["categoryid"] += offset
    tree["parentid"] += offset  # a root's NaN stays NaN
    props = data.item_properties
    props["itemid"] += offset
    is_category = (props["property"] == "categoryid").to_numpy()
    props.loc[is_category, "value"] = (
        props.loc[is_category, "value"].astype(np.int64) + offset
    ).astype(str)
    data.category_tree = tree
    return data


def _combined(stats: list[dict[str, float]]) -> dict[str, float]:
    """The statistics of shards with disjoint ids, from each one's :func:`summarize`: counts
    add up, shares are weighted by what they are shares of."""
    total = {key: sum(s[key] for s in stats) for key in ("rows", "visitors", "items")}
    total |= {key: sum(s[key] for s in stats) for key in ("transactions", "duplicates")}
    for key in ("view_share", "addtocart_share", "transaction_share"):
        total[key] = sum(s[key] * s["rows"] for s in stats) / max(total["rows"], 1)
    total["one_event_visitor_share"] = sum(
        s["one_event_visitor_share"] * s["visitors"] for s in stats
    ) / max(total["visitors"], 1)
    total["events_per_visitor"] = total["rows"] / max(total["visitors"], 1)
    total["max_events_per_visitor"] = max(s["max_events_per_visitor"] for s in stats)
    total["span_days"] = max(s["span_days"] for s in stats)
    return total


# --------------------------------------------------------------------------------------------
# Catalogue


@dataclass
class _Catalogue:
    item_ids: np.ndarray  # (n,) int64 public ids
    item_leaf: np.ndarray  # (n,) index into ``leaves``
    leaves: np.ndarray  # (L,) tree row indices of leaf categories that hold items
    leaf_ids: np.ndarray  # (L,) their public category ids
    base: np.ndarray
    quality: np.ndarray
    intro_day: np.ndarray
    drift_item: np.ndarray  # (n,) bool
    available: np.ndarray  # (n_weeks, n) bool
    week_prob: np.ndarray  # (n_weeks, n) P(item | its leaf, week)
    mix: np.ndarray  # (L,) shop-wide category mix
    drift_mix: np.ndarray  # (L,) category mix during drift (== mix without drift)
    siblings_ptr: np.ndarray  # CSR over leaves: leaf -> leaves with the same parent
    siblings: np.ndarray
    seg_cum: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    seg_items: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.int64))


def _category_tree(config: SynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = config.n_categories
    roots = int(FULL["category_roots"])
    parent = np.full(n, -1, dtype=np.int64)
    # A random recursive tree: each node hangs under an earlier one, favouring recent nodes so
    # the tree gets a few levels of depth like Retailrocket's.
    for k in range(roots, n):
        lo = max(0, k - max(roots, k // 2))
        parent[k] = rng.integers(lo, k)
    ids = np.sort(rng.choice(round(n * 1.02) + 1, size=n, replace=False))
    ids = rng.permutation(ids)
    parentid = pd.array(np.where(parent >= 0, ids[np.maximum(parent, 0)], 0), dtype="Int64")
    parentid[parent < 0] = pd.NA
    return pd.DataFrame({"categoryid": ids, "parentid": parentid, "parent_idx": parent})


def _catalogue(config: SynthConfig, rng: np.random.Generator, tree: pd.DataFrame) -> _Catalogue:
    parent = tree["parent_idx"].to_numpy()
    n_nodes = len(parent)
    has_child = np.zeros(n_nodes, dtype=bool)
    has_child[parent[parent >= 0]] = True
    leaf_nodes = np.flatnonzero(~has_child)

    n_base = round(config.n_target_items * config.catalogue_factor)
    n_drift = round(n_base * config.drift_new_item_share) if config.drift else 0
    n = n_base + n_drift
    n_weeks = config.n_weeks

    leaf_size = rng.lognormal(0.0, 1.0, size=len(leaf_nodes))
    item_leafnode = rng.choice(len(leaf_nodes), size=n_base, p=leaf_size / leaf_size.sum())
    base = rng.lognormal(0.0, config.popularity_sigma, size=n)
    quality = rng.lognormal(0.0, config.quality_sigma, size=n)
    quality /= quality.mean()
    # New items enter the catalogue at a weekly snapshot, as Retailrocket's properties do.
    intro_day = np.where(
        rng.random(n_base) < config.initial_item_share, 0, 7 * rng.integers(1, n_weeks, n_base)
    )
    trend = rng.normal(0.0, config.trend_sd_per_day, size=n)
    drift_item = np.zeros(n, dtype=bool)

    # Trending categories for drift, and the new items that flood them.
    trending = np.zeros(len(leaf_nodes), dtype=bool)
    if config.drift:
        k = max(1, round(len(leaf_nodes) * config.drift_trending_share))
        trending[rng.choice(len(leaf_nodes), size=k, replace=False)] = True
        drift_day = config.drift_start_day
        item_leafnode = np.concatenate(
            [item_leafnode, rng.choice(np.flatnonzero(trending), size=n_drift)]
        )
        intro_day = np.concatenate([intro_day, np.full(n_drift, drift_day)])
        base[n_base:] *= config.drift_new_item_boost
        trend[n_base:] = 0.0
        drift_item[n_base:] = True

    # Only leaves that hold items take part; every such leaf gets one item from day 0.
    used, item_leaf = np.unique(item_leafnode, return_inverse=True)
    leaves = leaf_nodes[used]
    trending = trending[used]
    first_in_leaf = np.unique(item_leaf[:n_base], return_index=True)[1]
    intro_day[first_in_leaf] = 0

    # Weekly availability: a two-state Markov chain per item.
    available = np.empty((n_weeks, n), dtype=bool)
    available[0] = rng.random(n) < 0.9
    for w in range(1, n_weeks):
        u = rng.random(n)
        available[w] = np.where(available[w - 1], u >= 0.05, u < 0.45)
    # Popularity by week: base x trend x novelty, zero before introduction.
    age = (np.arange(n_weeks) * 7 + 3.5)[:, None] - intro_day[None, :]  # days, mid-week
    weight = base[None, :] * np.exp(trend[None, :] * np.maximum(age, 0))
    weight *= 1.0 + config.novelty_boost * np.exp(-np.maximum(age, 0) / 14.0)
    weight *= np.where(available, 1.0, config.unavailable_weight)
    weight[age < 0] = 0.0
    weight[:, first_in_leaf] = np.maximum(weight[:, first_in_leaf], 1e-6)

    leaf_total = np.zeros((n_weeks, len(leaves)))
    for w in range(n_weeks):
        leaf_total[w] = np.bincount(item_leaf, weights=weight[w], minlength=len(leaves))
    week_prob = weight / leaf_total[:, item_leaf]

    mix = np.bincount(item_leaf[:n_base], weights=base[:n_base], minlength=len(leaves))
    mix = mix / mix.sum()
    drift_mix = mix * np.where(trending, config.drift_trending_boost, 1.0)
    drift_mix = drift_mix / drift_mix.sum()

    # Siblings: leaves that share a parent (a root's leaves share the root).
    leaf_parent = parent[leaves]
    order = np.argsort(leaf_parent, kind="stable")
    sorted_parent = leaf_parent[order]
    starts = np.searchsorted(sorted_parent, leaf_parent, side="left")
    ends = np.searchsorted(sorted_parent, leaf_parent, side="right")
    siblings_ptr = np.stack([starts, ends], axis=1)

    ids = np.sort(rng.choice(2 * n + 10, size=n, replace=False))
    item_ids = rng.permutation(ids).astype(np.int64)

    cat = _Catalogue(
        item_ids=item_ids,
        item_leaf=item_leaf,
        leaves=leaves,
        leaf_ids=tree["categoryid"].to_numpy()[leaves],
        base=base,
        quality=quality,
        intro_day=intro_day,
        drift_item=drift_item,
        available=available,
        week_prob=week_prob,
        mix=mix,
        drift_mix=drift_mix,
        siblings_ptr=siblings_ptr,
        siblings=order,
    )
    _build_segments(cat)
    return cat


def _build_segments(cat: _Catalogue) -> None:
    """One sorted array for sampling an item given (week, leaf) with ``searchsorted``.

    Segment ``s = week * L + leaf`` covers the values ``(s, s + 1]``: each item of the leaf owns a
    slice as wide as its probability that week.
    """
    n_weeks, n = cat.week_prob.shape
    n_leaves = len(cat.leaves)
    by_leaf = np.argsort(cat.item_leaf, kind="stable")
    leaf_sorted = cat.item_leaf[by_leaf]
    seg_cum = np.empty(n_weeks * n, dtype=np.float64)
    for w in range(n_weeks):
        p = cat.week_prob[w, by_leaf]
        cs = np.cumsum(p)
        group_start = np.searchsorted(leaf_sorted, leaf_sorted, side="left")
        before = np.where(group_start > 0, cs[np.maximum(group_start - 1, 0)], 0.0)
        within = cs - before
        totals = np.bincount(leaf_sorted, weights=p, minlength=n_leaves)
        within = within / totals[leaf_sorted]
        last = np.r_[leaf_sorted[1:] != leaf_sorted[:-1], True]
        within[last] = 1.0  # exact ends, so rounding never spills into the next segment
        seg_cum[w * n : (w + 1) * n] = w * n_leaves + leaf_sorted + within
    cat.seg_cum = seg_cum
    cat.seg_items = np.tile(by_leaf, n_weeks)


def _sample_items(
    cat: _Catalogue, rng: np.random.Generator, week: np.ndarray, leaf: np.ndarray
) -> np.ndarray:
    """Catalogue indices drawn from P(item | leaf, week), one per row."""
    seg = week.astype(np.float64) * len(cat.leaves) + leaf
    u = 1.0 - rng.random(len(seg))  # (0, 1]: never lands on the previous segment's end
    pos = np.searchsorted(cat.seg_cum, seg + u, side="left")
    items: np.ndarray = cat.seg_items[np.minimum(pos, len(cat.seg_items) - 1)]
    return items


# --------------------------------------------------------------------------------------------
# Visitors


@dataclass
class _Visitors:
    n: int
    ids: np.ndarray  # (V,) public visitor ids
    n_views: np.ndarray  # (V,)
    taste_leaf: np.ndarray  # (V, 3) leaf indices, -1 where unused
    taste_w: np.ndarray  # (V, 3) weights summing to 1
    taste_frame: pd.DataFrame


def _visitors(config: SynthConfig, rng: np.random.Generator, cat: _Catalogue) -> _Visitors:
    v = config.n_visitors
    head = np.asarray(config.views_head)
    probs = np.append(head, 1.0 - head.sum())
    bucket = rng.choice(5, size=v, p=probs)
    tail = np.floor(5.0 * (1.0 - rng.random(v)) ** (-1.0 / config.views_tail_alpha))
    n_views = np.where(bucket < 4, bucket + 1, np.minimum(tail, config.max_views)).astype(np.int64)

    k = rng.choice(3, size=v, p=np.asarray(config.taste_sizes)) + 1
    n_leaves = len(cat.leaves)
    mix_cdf = np.cumsum(cat.mix)
    mix_cdf[-1] = 1.0
    first = np.searchsorted(mix_cdf, rng.random(v), side="right")
    first = np.minimum(first, n_leaves - 1)
    leaves = np.full((v, 3), -1, dtype=np.int64)
    leaves[:, 0] = first
    for j in (1, 2):
        by_mix = np.minimum(np.searchsorted(mix_cdf, rng.random(v), side="right"), n_leaves - 1)
        lo, hi = cat.siblings_ptr[first, 0], cat.siblings_ptr[first, 1]
        sib = cat.siblings[lo + np.floor(rng.random(v) * (hi - lo)).astype(np.int64)]
        pick = np.where(rng.random(v) < config.sibling_share, sib, by_mix)
        leaves[:, j] = np.where(k > j, pick, -1)
    w = rng.gamma(1.0, size=(v, 3)) * (leaves >= 0)
    w /= w.sum(axis=1, keepdims=True)

    ids = rng.permutation(v).astype(np.int64)
    rows = np.repeat(np.arange(v), 3)
    flat_leaf = leaves.ravel()
    keep = flat_leaf >= 0
    frame = pd.DataFrame(
        {
            "visitorid": ids[rows[keep]],
            "leaf": flat_leaf[keep],
            "weight": w.ravel()[keep],
        }
    )
    # The same category twice in a taste is one entry with the summed weight.
    frame = frame.groupby(["visitorid", "leaf"], as_index=False, sort=True)["weight"].sum()
    frame.insert(1, "categoryid", cat.leaf_ids[frame.pop("leaf").to_numpy()])
    return _Visitors(v, ids, n_views, leaves, w, frame)


# --------------------------------------------------------------------------------------------
# Events


@dataclass
class _Views:
    visitor: np.ndarray  # (E,) visitor index
    ts: np.ndarray  # (E,) int64 ms
    item: np.ndarray  # (E,) catalogue index
    leaf: np.ndarray  # (E,) leaf index of the session's category


def _view_events(
    config: SynthConfig, rng: np.random.Generator, cat: _Catalogue, vis: _Visitors
) -> _Views:
    n_views = vis.n_views
    e = int(n_views.sum())
    visitor = np.repeat(np.arange(vis.n), n_views)
    first = np.zeros(e, dtype=bool)
    first[np.r_[0, np.cumsum(n_views)[:-1]]] = True
    new_session = first | (rng.random(e) < config.new_session_p)
    session = np.cumsum(new_session) - 1
    n_sessions = int(session[-1]) + 1

    # Gaps: days between sessions (heavy-tailed), about a minute within one.
    gap_s = np.where(
        new_session,
        rng.exponential(config.session_gap_days * 86_400.0, size=e)
        * rng.lognormal(0.0, 0.8, size=e),
        5.0 + rng.exponential(config.within_session_gap_s, size=e),
    )
    gap_s[first] = 0.0
    offset_s = np.cumsum(gap_s)
    start_of_visitor = np.r_[0, np.cumsum(n_views)[:-1]]
    offset_s -= np.repeat(offset_s[start_of_visitor], n_views)
    span_s = offset_s[np.cumsum(n_views) - 1]
    total_s = (config.end_ms - config.start_ms) / 1000.0 - 3600.0  # room for carts and buys
    # A visitor active longer than the log is squeezed into it; the others start at random.
    squeeze = np.minimum(1.0, total_s / np.maximum(span_s, 1.0))
    offset_s *= np.repeat(squeeze, n_views)
    span_s *= squeeze
    t0_s = rng.random(vis.n) * (total_s - span_s)
    ts = config.start_ms + np.round((np.repeat(t0_s, n_views) + offset_s) * 1000.0).astype(np.int64)

    # Each session browses one leaf category: the visitor's taste, or the shop-wide mix.
    session_visitor = visitor[new_session]
    session_ts = ts[new_session]
    drifting = (
        session_ts >= config.drift_start_ms
        if config.drift_start_ms is not None
        else np.zeros(n_sessions, dtype=bool)
    )
    eps = np.where(drifting, config.drift_epsilon, config.epsilon)
    taste_cdf = np.cumsum(vis.taste_w[session_visitor], axis=1)
    pick = (rng.random(n_sessions)[:, None] > taste_cdf).sum(axis=1)
    pick = np.minimum(pick, 2)
    taste_leaf = vis.taste_leaf[session_visitor, pick]
    n_leaves = len(cat.leaves)
    mix_leaf = _draw(rng, cat.mix, n_sessions)
    if config.drift:
        mix_leaf = np.where(drifting, _draw(rng, cat.drift_mix, n_sessions), mix_leaf)
    from_mix = rng.random(n_sessions) < eps
    session_leaf = np.where(from_mix, mix_leaf, taste_leaf)
    session_leaf = np.clip(session_leaf, 0, n_leaves - 1)
    leaf = session_leaf[session]

    week = np.minimum((ts - config.start_ms) // WEEK_MS, config.n_weeks - 1)
    item = _sample_items(cat, rng, week, leaf)
    # Visitors come back to what they just looked at.
    repeat = ~new_session & (rng.random(e) < config.repeat_view_p)
    src = np.where(repeat, 0, np.arange(e))
    np.maximum.accumulate(src, out=src)
    item = item[src]
    return _Views(visitor=visitor, ts=ts, item=item, leaf=leaf)


def _draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)


def _funnel(
    config: SynthConfig, rng: np.random.Generator, cat: _Catalogue, vis: _Visitors, ev: _Views
) -> pd.DataFrame:
    """Add carts and transactions to the views; returns all events in Retailrocket's columns."""
    n_views_total = len(ev.ts)
    # Distinct (visitor, item) pairs the visitor viewed, with their affinity.
    key = ev.visitor.astype(np.int64) * len(cat.item_ids) + ev.item
    first_idx = np.unique(key, return_index=True)[1]
    p_vis = ev.visitor[first_idx]
    p_item = ev.item[first_idx]
    p_ts = ev.ts[first_idx]
    item_leaf = cat.item_leaf[p_item]
    taste = (vis.taste_w[p_vis] * (vis.taste_leaf[p_vis] == item_leaf[:, None])).sum(axis=1)
    affinity = cat.quality[p_item] * (taste + 0.05)
    if config.drift_start_ms is not None:
        affinity = np.where(
            p_ts >= config.drift_start_ms, affinity * config.drift_cart_factor, affinity
        )
    n_distinct = np.bincount(p_vis, minlength=vis.n)

    # Who carts: busier visitors with higher affinity, calibrated to the share of carting viewers.
    best = np.zeros(vis.n)
    np.maximum.at(best, p_vis, affinity)
    propensity = vis.n_views.astype(np.float64) ** config.carter_activity_power * np.sqrt(best)
    carter = _weighted_pick(rng, propensity, round(FULL["viewers_carting"] * vis.n))

    # How many distinct items a carter carts: 1 + Poisson(lam), calibrated to carts per view.
    carts_target = FULL["cart_per_view"] * n_views_total
    lam = _solve_poisson_extra(n_distinct[carter], carts_target)
    m = np.zeros(vis.n, dtype=np.int64)
    m[carter] = np.minimum(1 + rng.poisson(lam, size=int(carter.sum())), n_distinct[carter])

    # Which items: the highest affinity-weighted Gumbel keys per visitor.
    gumbel = np.log(affinity) - np.log(-np.log(1.0 - rng.random(len(p_vis))))
    order = np.lexsort((-gumbel, p_vis))
    rank = np.empty(len(order), dtype=np.int64)
    starts = np.r_[0, np.cumsum(n_distinct)[:-1]]
    rank[order] = np.arange(len(order)) - np.repeat(starts, n_distinct)
    carted = rank < m[p_vis]
    c_vis, c_item, c_aff = p_vis[carted], p_item[carted], affinity[carted]
    c_rank = rank[carted]
    c_ts = p_ts[carted] + rng.integers(5_000, 600_000, size=len(c_vis))

    # Who buys: carters with more carts, calibrated to the share of carters that buy.
    buyer = np.zeros(vis.n, dtype=bool)
    buyer[carter] = _weighted_pick(
        rng,
        m[carter].astype(np.float64) ** config.buyer_cart_power,
        round(FULL["carters_buying"] * carter.sum()),
    )
    # What a buyer buys: the best carted item, and as many others as it takes for
    # transactions / carts matches; higher affinity makes an item likelier to be bought.
    b = buyer[c_vis]
    extra = b & (c_rank > 0)
    n_extra = round(FULL["transaction_per_cart"] * len(c_vis)) - int(buyer.sum())
    bought = b & (c_rank == 0)
    bought[extra] = _weighted_pick(rng, np.sqrt(c_aff[extra]), n_extra)
    t_vis, t_item, t_cts = c_vis[bought], c_item[bought], c_ts[bought]

    # Baskets: a buyer's purchases split into transactions, 1.27 items each on average.
    order = np.lexsort((t_cts, t_vis))
    t_vis, t_item, t_cts = t_vis[order], t_item[order], t_cts[order]
    first_of_buyer = np.r_[True, t_vis[1:] != t_vis[:-1]]
    n_rows = len(t_vis)
    target_tx = n_rows / FULL["items_per_transaction"]
    new_tx = first_of_buyer.copy()
    new_tx[~first_of_buyer] = _weighted_pick(
        rng, np.ones(int((~first_of_buyer).sum())), round(target_tx) - int(first_of_buyer.sum())
    )
    tx_index = np.cumsum(new_tx) - 1
    n_tx = int(tx_index[-1]) + 1 if n_rows else 0
    tx_time = np.zeros(n_tx, dtype=np.int64)
    np.maximum.at(tx_time, tx_index, t_cts)
    tx_time += rng.integers(60_000, 1_800_000, size=n_tx)
    tx_ids = rng.permutation(n_tx).astype(np.int64)

    end = config.end_ms - 1
    frames = [
        (ev.ts, ev.visitor, np.zeros(n_views_total, np.int8), ev.item, np.full(n_views_total, -1)),
        (c_ts, c_vis, np.ones(len(c_vis), np.int8), c_item, np.full(len(c_vis), -1)),
        (tx_time[tx_index], t_vis, np.full(n_rows, 2, np.int8), t_item, tx_ids[tx_index]),
    ]
    ts = np.minimum(np.concatenate([f[0] for f in frames]), end)
    visitor = np.concatenate([f[1] for f in frames])
    kind = np.concatenate([f[2] for f in frames])
    item = np.concatenate([f[3] for f in frames])
    txid = np.concatenate([f[4] for f in frames])
    transactionid = pd.array(txid, dtype="Int64")
    transactionid[txid < 0] = pd.NA
    return pd.DataFrame(
        {
            "timestamp": ts,
            "visitorid": vis.ids[visitor],
            "event": np.array(["view", "addtocart", "transaction"])[kind],
            "itemid": cat.item_ids[item],
            "transactionid": transactionid,
        }
    )


def _weighted_pick(rng: np.random.Generator, weight: np.ndarray, k: int) -> np.ndarray:
    """A mask of exactly ``k`` rows drawn without replacement, favouring large ``weight``.

    Exact counts keep the funnel shares on target even at ``tiny`` scale, where a coin per visitor
    would wander by several points. Gumbel top-k: the largest ``log(w) + Gumbel`` keys win.
    """
    k = int(min(max(k, 0), len(weight)))
    keys = np.log(np.maximum(weight, 1e-300)) - np.log(-np.log(1.0 - rng.random(len(weight))))
    mask = np.zeros(len(weight), dtype=bool)
    if k:
        mask[np.argpartition(-keys, k - 1)[:k]] = True
    return mask


def _solve_poisson_extra(caps: np.ndarray, target: float) -> float:
    """``lam`` such that sum over carters of E[min(1 + Poisson(lam), cap)] equals ``target``."""
    if len(caps) == 0:
        return 0.0
    caps_values, counts = np.unique(caps, return_counts=True)

    def expected(lam: float) -> float:
        # E[min(1 + X, c)] = 1 + sum_{j=1}^{c-1} P(X >= j)
        total = 0.0
        for c, cnt in zip(caps_values, counts, strict=True):
            js = np.arange(1, int(c))
            total += cnt * (1.0 + stats.poisson.sf(js - 1, lam).sum())
        return total

    lo, hi = 0.0, 20.0
    if expected(hi) <= target:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        if expected(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _add_duplicates_and_shuffle(rng: np.random.Generator, events: pd.DataFrame) -> pd.DataFrame:
    """Duplicate ~0.017% of rows exactly, as in the real log, and shuffle the row order."""
    n_dup = round(len(events) * FULL["duplicates"] / FULL["rows"])
    dup = rng.choice(len(events), size=n_dup, replace=False)
    out = pd.concat([events, events.iloc[dup]], ignore_index=True)
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def _item_properties(config: SynthConfig, cat: _Catalogue) -> pd.DataFrame:
    """Weekly snapshots of ``categoryid`` and ``available``, written only when a value changes."""
    n_weeks = cat.available.shape[0]
    intro_week = cat.intro_day // 7
    snapshot_ms = config.start_ms + np.arange(n_weeks, dtype=np.int64) * WEEK_MS
    cat_rows = pd.DataFrame(
        {
            "timestamp": snapshot_ms[intro_week],
            "itemid": cat.item_ids,
            "property": "categoryid",
            "value": cat.leaf_ids[cat.item_leaf].astype(str),
        }
    )
    changed = np.zeros_like(cat.available)
    changed[1:] = cat.available[1:] != cat.available[:-1]
    w_grid = np.arange(n_weeks)[:, None]
    emit = (w_grid == intro_week[None, :]) | (changed & (w_grid > intro_week[None, :]))
    w_idx, i_idx = np.nonzero(emit)
    avail_rows = pd.DataFrame(
        {
            "timestamp": snapshot_ms[w_idx],
            "itemid": cat.item_ids[i_idx],
            "property": "available",
            "value": cat.available[w_idx, i_idx].astype(np.int8).astype(str),
        }
    )
    out = pd.concat([cat_rows, avail_rows], ignore_index=True)
    return out.sort_values(["timestamp", "itemid", "property"], kind="stable").reset_index(
        drop=True
    )


# --------------------------------------------------------------------------------------------
# Statistics


def summarize(events: pd.DataFrame) -> dict[str, float]:
    """The statistics that the generator is calibrated on, for any Retailrocket-format log.

    Args:
        events: Rows with Retailrocket's columns; ``timestamp`` in Unix ms.

    Returns:
        Counts and shares (shares as fractions, not percentages).
    """
    n = len(events)
    kind = events["event"]
    views = int((kind == "view").sum())
    carts = int((kind == "addtocart").sum())
    txs = int((kind == "transaction").sum())
    per_visitor = events.groupby("visitorid", sort=False).size()
    viewers = events.loc[kind == "view", "visitorid"].unique()
    carters = events.loc[kind == "addtocart", "visitorid"].unique()
    buyers = events.loc[kind == "transaction", "visitorid"].unique()
    tx_ids = events.loc[kind == "transaction", "transactionid"]
    item_counts = events.groupby("itemid", sort=False).size().to_numpy()
    pairs = events.groupby(["visitorid", "itemid"], sort=False).size()
    top_share = np.sort(item_counts)[::-1][: max(1, len(item_counts) // 100)].sum() / max(n, 1)
    return {
        "rows": n,
        "visitors": int(per_visitor.size),
        "items": len(item_counts),
        "duplicates": int(events.duplicated().sum()),
        "view_share": views / n,
        "addtocart_share": carts / n,
        "transaction_share": txs / n,
        "span_days": (int(events["timestamp"].max()) - int(events["timestamp"].min())) / DAY_MS,
        "one_event_visitor_share": float((per_visitor == 1).mean()),
        "events_per_visitor": float(per_visitor.mean()),
        "max_events_per_visitor": int(per_visitor.max()),
        "transactions": int(tx_ids.nunique()),
        "items_per_transaction": txs / max(int(tx_ids.nunique()), 1),
        "viewers_carting": len(np.intersect1d(viewers, carters)) / max(len(viewers), 1),
        "carters_buying": len(np.intersect1d(carters, buyers)) / max(len(carters), 1),
        "visitors_buying": len(buyers) / max(per_visitor.size, 1),
        "cart_per_view": carts / max(views, 1),
        "transaction_per_cart": txs / max(carts, 1),
        "repeat_pair_share": float((pairs > 1).mean()),
        "top1pct_item_event_share": float(top_share),
        "gini_items": _gini(item_counts),
    }


def _gini(counts: np.ndarray) -> float:
    """Gini coefficient of a popularity distribution: 0 is uniform, near 1 is a long tail."""
    if len(counts) == 0:
        return 0.0
    x = np.sort(counts.astype(np.float64))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))
