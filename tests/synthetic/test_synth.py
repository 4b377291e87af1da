"""The generator: Retailrocket's format and statistics, determinism, structure, drift."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retailrec.errors import UsageError
from retailrec.events import DAY_MS
from retailrec.synthetic import synth
from retailrec.synthetic.synth import FULL, WEEK_MS
from tests.utils.factories import Shop, make_shop


def _stats_within_targets(stats: dict[str, float], config: synth.SynthConfig) -> None:
    for share in ("view_share", "addtocart_share", "transaction_share"):
        assert stats[share] == pytest.approx(FULL[share], abs=0.003), share
    assert stats["one_event_visitor_share"] == pytest.approx(0.712, abs=0.03)
    assert stats["items_per_transaction"] == pytest.approx(1.27, abs=0.1)
    for share in ("viewers_carting", "carters_buying", "visitors_buying"):
        assert stats[share] == pytest.approx(FULL[share], abs=0.005), share
    assert stats["span_days"] == pytest.approx(138, abs=0.5)
    assert stats["visitors"] == pytest.approx(FULL["visitors"] * config.scale, rel=0.10)
    assert stats["items"] == pytest.approx(FULL["items"] * config.scale, rel=0.10)
    # Long tail: a few items take a large share of events, most items very few.
    assert stats["gini_items"] > 0.6
    assert stats["top1pct_item_event_share"] > 0.08


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_match_retailrocket_at_tiny_scale(seed: int) -> None:
    config = synth.config_for("tiny")
    data = synth.generate(config, random_state=seed)
    _stats_within_targets(synth.summarize(data.events), config)


@pytest.mark.slow
def test_statistics_match_retailrocket_at_small_scale() -> None:
    config = synth.config_for("small")
    data = synth.generate(config, random_state=3)
    stats = synth.summarize(data.events)
    _stats_within_targets(stats, config)
    assert stats["rows"] == pytest.approx(FULL["rows"] * 0.1, rel=0.1)


def test_events_file_is_in_retailrocket_format(tiny_shop: Shop) -> None:
    lines = tiny_shop.events_csv.read_text().split("\n")
    assert lines[0] == "timestamp,visitorid,event,itemid,transactionid"
    assert lines[-1] == ""  # newline-terminated, no CRLF
    rows = [line.split(",") for line in lines[1:-1]]
    assert all(len(r) == 5 for r in rows)
    assert all(len(r[0]) == 13 and r[0].isdigit() for r in rows)  # Unix milliseconds
    assert {r[2] for r in rows} == {"view", "addtocart", "transaction"}
    assert all((r[4] != "") == (r[2] == "transaction") for r in rows)
    assert all(r[4].isdigit() for r in rows if r[4])
    start, end = FULL["start_ms"], FULL["start_ms"] + 138 * DAY_MS
    assert all(start <= int(r[0]) < end for r in rows)


def test_exact_duplicates_are_about_0_017_percent(tiny_shop: Shop) -> None:
    events = tiny_shop.data.events
    n_dup = int(events.duplicated().sum())
    assert n_dup == round(len(events) * 460 / 2_756_101) or n_dup == pytest.approx(
        len(events) * 0.00017, abs=2
    )
    assert n_dup >= 1


def test_transactions_group_items_into_baskets(tiny_shop: Shop) -> None:
    events = tiny_shop.data.events.drop_duplicates()
    tx = events[events["event"] == "transaction"]
    per_tx = tx.groupby("transactionid").agg(
        visitors=("visitorid", "nunique"), times=("timestamp", "nunique"), items=("itemid", "size")
    )
    assert (per_tx["visitors"] == 1).all()  # a basket belongs to one visitor
    assert (per_tx["times"] == 1).all()  # and is paid at one moment
    assert (per_tx["items"] > 1).any()
    # Every bought item was carted by that visitor before it was paid for.
    carts = events[events["event"] == "addtocart"]
    merged = tx.merge(carts, on=["visitorid", "itemid"], suffixes=("", "_cart"))
    assert (
        merged[["visitorid", "itemid"]].drop_duplicates().shape[0]
        == (tx[["visitorid", "itemid"]].drop_duplicates().shape[0])
    )
    assert (
        merged.groupby(["visitorid", "itemid"])["timestamp_cart"].min()
        <= merged.groupby(["visitorid", "itemid"])["timestamp"].max()
    ).all()


def test_item_properties_are_weekly_snapshots_of_category_and_availability(tiny_shop: Shop) -> None:
    props = pd.read_csv(tiny_shop.dir / "item_properties.csv", dtype={"value": str})
    assert list(props.columns) == ["timestamp", "itemid", "property", "value"]
    assert set(props["property"]) == {"categoryid", "available"}
    assert ((props["timestamp"] - FULL["start_ms"]) % WEEK_MS == 0).all()
    assert set(props.loc[props["property"] == "available", "value"]) == {"0", "1"}
    cats = props[props["property"] == "categoryid"].set_index("itemid")["value"].astype(int)
    truth = tiny_shop.data.truth_items.set_index("itemid")["categoryid"]
    assert cats.sort_index().equals(truth.loc[cats.index].sort_index().rename("value"))
    # Every item that gets events is in the catalogue with a category.
    assert set(tiny_shop.data.events["itemid"]) <= set(cats.index)


def test_category_tree_has_about_25_roots_and_no_cycles(tiny_shop: Shop) -> None:
    tree = pd.read_csv(tiny_shop.dir / "category_tree.csv", dtype={"parentid": "Int64"})
    assert list(tree.columns) == ["categoryid", "parentid"]
    assert tree["categoryid"].is_unique
    assert tree["parentid"].isna().sum() == 25
    parent = dict(zip(tree["categoryid"], tree["parentid"], strict=True))
    for node in parent:
        seen = set()
        while not pd.isna(node):
            assert node not in seen
            seen.add(node)
            node = parent[node]  # KeyError here means a dangling parent id
    leaves = set(tree["categoryid"]) - set(tree["parentid"].dropna())
    assert set(tiny_shop.data.truth_items["categoryid"]) <= leaves


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = make_shop(tmp_path / "a", seed=11)
    b = make_shop(tmp_path / "b", seed=11)
    c = make_shop(tmp_path / "c", seed=12)
    assert _digest(a.dir) == _digest(b.dir)
    assert len(_digest(a.dir)) == 8
    assert _digest(a.dir)["events.csv"] != _digest(c.dir)["events.csv"]


def test_truth_is_kept_apart_from_the_shop_files(tiny_shop: Shop) -> None:
    top = {p.name for p in tiny_shop.dir.iterdir()}
    assert top == {"events.csv", "item_properties.csv", "category_tree.csv", "truth"}
    tastes = tiny_shop.data.truth_visitors
    assert tastes.groupby("visitorid")["weight"].sum().to_numpy() == pytest.approx(1.0)
    assert tastes["visitorid"].nunique() == tiny_shop.config.n_visitors


def _category_of(shop: Shop) -> pd.Series:
    return shop.data.truth_items.set_index("itemid")["categoryid"]


def test_sessions_browse_related_items(tiny_shop: Shop) -> None:
    views = tiny_shop.data.events.query("event == 'view'").sort_values(["visitorid", "timestamp"])
    cat = _category_of(tiny_shop).loc[views["itemid"]].to_numpy()
    same_visitor = views["visitorid"].to_numpy()[1:] == views["visitorid"].to_numpy()[:-1]
    close = np.diff(views["timestamp"].to_numpy()) < 30 * 60 * 1000
    consecutive = same_visitor & close
    share_same = (cat[1:] == cat[:-1])[consecutive].mean()
    rng = np.random.default_rng(0)
    random_pairs = (cat == rng.permutation(cat)).mean()
    assert share_same > 0.8
    assert random_pairs < 0.1


def test_carting_grows_with_affinity(tiny_shop: Shop) -> None:
    events = tiny_shop.data.events.drop_duplicates()
    taste = tiny_shop.data.truth_visitors.set_index(["visitorid", "categoryid"])["weight"]
    pairs = events[["visitorid", "itemid"]].drop_duplicates()
    pairs = pairs.assign(categoryid=_category_of(tiny_shop).loc[pairs["itemid"]].to_numpy())
    pairs["taste"] = (
        taste.reindex(pd.MultiIndex.from_frame(pairs[["visitorid", "categoryid"]]))
        .fillna(0)
        .to_numpy()
    )
    carted = events.loc[events["event"] == "addtocart", ["visitorid", "itemid"]].drop_duplicates()
    pairs = pairs.merge(carted.assign(carted=True), how="left", on=["visitorid", "itemid"])
    pairs["carted"] = pairs["carted"].fillna(False).astype(bool)
    carters = pairs[pairs["visitorid"].isin(carted["visitorid"])]
    assert (
        carters.loc[carters["carted"], "taste"].mean()
        > 1.2 * carters.loc[~carters["carted"], "taste"].mean()
    )


def test_popularity_shifts_and_new_items_appear(tiny_shop: Shop) -> None:
    events = tiny_shop.data.events
    first_seen = events.groupby("itemid")["timestamp"].min()
    late = first_seen > FULL["start_ms"] + 69 * DAY_MS
    assert late.mean() > 0.15  # a share of the catalogue appears in the second half
    month = (events["timestamp"] - FULL["start_ms"]) // (30 * DAY_MS)
    top_first = events[month == 0]["itemid"].value_counts().head(50).index
    top_last = events[month == 3]["itemid"].value_counts().head(50).index
    assert len(top_first.intersection(top_last)) < 35


def test_drift_shifts_the_last_three_weeks(tiny_shop: Shop, tiny_drift_shop: Shop) -> None:
    def window_stats(shop: Shop) -> dict[str, float]:
        ev = shop.data.events
        cut = FULL["start_ms"] + (138 - 21) * DAY_MS
        before, after = ev[ev["timestamp"] < cut], ev[ev["timestamp"] >= cut]
        cat = _category_of(shop)
        mix_b = cat.loc[before["itemid"]].value_counts(normalize=True)
        mix_a = cat.loc[after["itemid"]].value_counts(normalize=True)
        mix_b, mix_a = mix_b.align(mix_a, fill_value=0.0)
        new_items = set(after["itemid"]) - set(before["itemid"])
        return {
            "category_shift": 0.5 * float(np.abs(mix_a - mix_b).sum()),
            "new_item_share": float(after["itemid"].isin(new_items).mean()),
            "cart_rate_ratio": (after["event"] == "addtocart").mean()
            / (before["event"] == "addtocart").mean(),
        }

    calm, drifted = window_stats(tiny_shop), window_stats(tiny_drift_shop)
    assert drifted["category_shift"] > calm["category_shift"] + 0.15
    assert drifted["new_item_share"] > 2 * calm["new_item_share"]
    assert drifted["cart_rate_ratio"] < 0.8 * calm["cart_rate_ratio"]
    drift_items = tiny_drift_shop.data.truth_items.query("drift_item")["itemid"]
    cut = tiny_drift_shop.config.drift_start_ms
    assert (
        cut == FULL["start_ms"] + 119 * DAY_MS
    )  # the week boundary nearest three weeks before the end
    assert (
        not tiny_drift_shop.data.events.query("timestamp < @cut")["itemid"].isin(drift_items).any()
    )


def test_unknown_scale_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="unknown scale 'huge'"):
        synth.config_for("huge")


def test_a_shop_past_full_scale_is_written_as_disjoint_shards(tmp_path: Path) -> None:
    """``10x`` is ten full shops side by side; here two tiny ones: ids never meet, the files
    hold both, and the combined statistics are those of the whole file."""
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "params.json").write_text("{}")  # an earlier shop's oracle
    config = synth.config_for(0.02)
    written = synth.write_sharded("2 x tiny", config, 5, tmp_path, shards=2)
    assert written.truth_dir is None and not (tmp_path / "truth").exists()
    events = pd.read_csv(written.paths["events"], dtype={"transactionid": "Int64"})
    shard = events["visitorid"] // synth.SHARD_ID_STRIDE
    assert set(shard) == {0, 1}
    assert set(events["itemid"] // synth.SHARD_ID_STRIDE) == {0, 1}
    first = synth.generate(synth.config_for(0.01), random_state=5_000)
    assert (shard == 0).sum() == len(first.events)  # shard 0 is the tiny shop of its own seed
    for k in (0, 1):  # a visitor's items and transactions are of its own shard
        own = events[shard == k]
        assert (own["itemid"] // synth.SHARD_ID_STRIDE == k).all()
        assert (own["transactionid"].dropna() // synth.SHARD_ID_STRIDE == k).all()
    whole = synth.summarize(events)
    for key, value in written.stats.items():
        assert value == pytest.approx(whole[key], rel=1e-9), key
    _stats_within_targets(whole, config)

    tree = pd.read_csv(written.paths["category_tree"], dtype="Int64")
    props = pd.read_csv(written.paths["item_properties"])
    assert tree["categoryid"].is_unique
    assert set(tree["parentid"].dropna()) <= set(tree["categoryid"])
    categories = props.loc[props["property"] == "categoryid"]
    assert set(categories["value"].astype(np.int64)) <= set(tree["categoryid"])
    assert set(categories["itemid"] // synth.SHARD_ID_STRIDE) == {0, 1}
    assert categories.groupby(categories["itemid"] // synth.SHARD_ID_STRIDE)["value"].apply(
        lambda v: set(v.astype(np.int64) // synth.SHARD_ID_STRIDE)
    ).to_dict() == {0: {0}, 1: {1}}
