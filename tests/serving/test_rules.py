"""The business rules on a catalogue: what is never recommended, whatever the model says."""

from __future__ import annotations

import numpy as np
import pytest

from retailrec.errors import UnknownEntityError
from retailrec.models import make_model
from retailrec.models.bundle import ROLES, ModelBundle
from retailrec.serving.rules import CatalogueRules, Rules


@pytest.fixture
def rules() -> CatalogueRules:
    # Items 100..105 (indices 0..5): categories 1, 1, 2, 2, -1 (none), 2; item 103 unavailable.
    bundle = ModelBundle(
        {role: make_model("popular") for role in ROLES},
        np.array([100, 101, 102, 103, 104, 105], dtype=np.int64),
        np.array([1, 1, 2, 2, -1, 2], dtype=np.int64),
        np.array([True, True, True, False, True, True]),
    )
    return CatalogueRules(bundle)


NONE = np.zeros(0, dtype=np.int64)


def test_unavailable_items_are_always_blocked_and_the_shared_mask_is_read_only(
    rules: CatalogueRules,
) -> None:
    blocked = rules.blocked(Rules(), NONE, NONE)
    assert np.flatnonzero(blocked).tolist() == [3]
    assert not blocked.flags.writeable  # shared by every request: a caller must copy it
    assert rules.by_category.keys() == {1, 2}  # items without a category are in none


def test_purchased_seen_and_excluded_items_as_asked(rules: CatalogueRules) -> None:
    seen, bought = np.array([0, 1]), np.array([2])
    default = rules.blocked(Rules(exclude=[105, 999]), seen, bought)  # 999: unknown, ignored
    assert np.flatnonzero(default).tolist() == [2, 3, 5]  # purchased, unavailable, excluded
    both = rules.blocked(Rules(exclude_seen=True), seen, bought)
    assert np.flatnonzero(both).tolist() == [0, 1, 2, 3]
    neither = rules.blocked(Rules(exclude_purchased=False), seen, bought)
    assert np.flatnonzero(neither).tolist() == [3]
    assert rules.unavailable.tolist() == [False, False, False, True, False, False]  # untouched


def test_a_category_keeps_only_its_available_items(rules: CatalogueRules) -> None:
    inside = rules.blocked(Rules(category=2), NONE, np.array([5]))
    assert np.flatnonzero(~inside).tolist() == [2]  # 103 unavailable, 105 bought
    with pytest.raises(UnknownEntityError, match="unknown category 9"):
        rules.blocked(Rules(category=9), NONE, NONE)


def test_blocking_marks_a_kept_mask_and_clears_it_on_the_way_out(rules: CatalogueRules) -> None:
    """An answer's rules block its few items in a per-thread mask instead of copying the
    catalogue's; nested blocks add more and put back what they found; an error inside clears
    too; the catalogue's own mask is never written."""
    seen, bought = np.array([0, 1]), np.array([2])
    with rules.blocking(Rules(exclude=[105]), seen, bought) as outer:
        assert np.flatnonzero(outer).tolist() == [2, 3, 5]
        assert outer is not rules.unavailable and outer.flags.writeable
        with rules.marked(outer, np.array([0, 2])) as inner:
            assert inner is outer  # the same mask, two more items (2 was blocked already)
            assert np.flatnonzero(inner).tolist() == [0, 2, 3, 5]
        assert np.flatnonzero(outer).tolist() == [2, 3, 5]  # 2 stays: the outer block has it
        with pytest.raises(RuntimeError), rules.marked(outer, np.array([4])):
            raise RuntimeError("a model failed")
        assert np.flatnonzero(outer).tolist() == [2, 3, 5]
    assert np.flatnonzero(outer).tolist() == [3]  # the kept mask is the catalogue's again
    assert rules.unavailable.tolist() == [False, False, False, True, False, False]
    # The same mask again, not a new copy; a category's mask is built as before.
    with rules.blocking(Rules(), seen, bought) as again:
        assert again is outer and np.flatnonzero(again).tolist() == [2, 3]
        with rules.blocking(Rules(), NONE, np.array([4])) as second:  # in use: a copy
            assert second is not outer and np.flatnonzero(second).tolist() == [3, 4]
        assert np.flatnonzero(again).tolist() == [2, 3]
    with rules.blocking(Rules(category=1), NONE, NONE) as inside:
        assert np.flatnonzero(~inside).tolist() == [0, 1]


def test_each_thread_has_a_mask_of_its_own(rules: CatalogueRules) -> None:
    import threading

    seen_in_thread: list[list[int]] = []
    with rules.blocking(Rules(), NONE, np.array([0])) as here:

        def other() -> None:
            with rules.blocking(Rules(), NONE, np.array([1])) as there:
                assert there is not here
                seen_in_thread.append(np.flatnonzero(there).tolist())

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert np.flatnonzero(here).tolist() == [0, 3]
    assert seen_in_thread == [[1, 3]]
