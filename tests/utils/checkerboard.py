"""A shop whose right answer is known: two groups of visitors, each buying only its own items."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.utils.factories import events_frame

T0 = 1_433_221_332_117
MIN = 60_000
DAY = 86_400_000


def checkerboard_events(n_users: int = 40, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Visitor ``u`` belongs to group ``u % 2``; item ``i`` to group ``i % 2``.

    Each visitor browses a random half of their group's items in sessions, carts two of them and
    buys them together. Item 0 and 1 are the most popular of their groups. Ids are offset so that
    they differ from indices.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 2
        own = np.arange(group, n_items, 2)
        k = len(own) // 2
        seen = np.r_[own[0], rng.choice(own[1:], k - 1, replace=False)]
        t = T0 + rng.integers(0, 20) * DAY
        for j, item in enumerate(rng.permutation(seen)):
            rows.append((t + j * MIN, 1000 + u, "view", 500 + item, None))
        bought = seen[:2]
        for j, item in enumerate(bought):
            rows.append((t + (k + j) * MIN, 1000 + u, "addtocart", 500 + item, None))
            rows.append((t + (k + 5) * MIN, 1000 + u, "transaction", 500 + item, 9000 + u))
    return events_frame(rows)


def checkerboard_catalogue(n_items: int = 30) -> pd.DataFrame:
    ids = 500 + np.arange(n_items)
    return pd.DataFrame(
        {
            "itemid": ids,
            "categoryid": 70 + (np.arange(n_items) % 2),
            "available": np.ones(n_items, bool),
        }
    )
