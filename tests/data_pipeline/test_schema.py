"""The event schema: each rule rejects what it should, with its reason, and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest

from retailrec.data_pipeline import schema
from retailrec.events import EVENT_COLUMNS

NOW = 1_442_600_000_000
GOOD = {
    "timestamp": "1442004589439",
    "visitorid": "257597",
    "event": "view",
    "itemid": "355908",
    "transactionid": "",
}


def _one(**changes: str) -> schema.Validated:
    return schema.validate_events(pd.DataFrame([{**GOOD, **changes}]), now_ms=NOW)


def test_a_good_row_comes_out_typed() -> None:
    result = _one()
    assert result.rejected.empty
    row = result.valid.iloc[0]
    assert row["timestamp"] == 1442004589439
    assert row["visitorid"] == 257597
    assert row["event"] == "view"
    assert pd.isna(row["transactionid"])
    assert str(result.valid["transactionid"].dtype) == "Int64"


#: One row changed from GOOD, and the reason it is rejected with (the spark engine's
#: equivalence test runs them too).
RULE_CASES: list[tuple[dict[str, str], str]] = [
    ({"event": "click"}, "unknown event type"),
    ({"event": ""}, "missing event"),
    ({"visitorid": "-3"}, "negative visitorid"),
    ({"itemid": "-1"}, "negative itemid"),
    ({"visitorid": "abc"}, "visitorid is not an integer"),
    ({"itemid": "12.5"}, "itemid is not an integer"),
    ({"itemid": ""}, "missing itemid"),
    ({"timestamp": "yesterday"}, "timestamp is not an integer"),
    ({"timestamp": "1442004589"}, "timestamp in seconds, not milliseconds"),
    ({"timestamp": "123"}, "timestamp outside the sane range"),
    ({"timestamp": "1442004589439000"}, "timestamp in micro- or nanoseconds, not milliseconds"),
    (
        {"timestamp": "1442004589439000000"},
        "timestamp in micro- or nanoseconds, not milliseconds",
    ),
    ({"timestamp": str(NOW + 2 * 86_400_000)}, "timestamp outside the sane range"),
    ({"event": "transaction"}, "transaction without transactionid"),
    ({"transactionid": "4000"}, "transactionid on a non-transaction event"),
    ({"event": "transaction", "transactionid": "x1"}, "transactionid is not an integer"),
    ({"event": "transaction", "transactionid": "-5"}, "negative transactionid"),
    # Excel writes long numbers so, rounded to a few digits: never guess them back.
    ({"timestamp": "1.44200E+12"}, "timestamp in scientific notation (digits may be lost)"),
    ({"itemid": "3.5e5"}, "itemid in scientific notation (digits may be lost)"),
    ({"timestamp": "2015-09-11 20:49:49"}, "timestamp is a date, not Unix milliseconds"),
    ({"timestamp": "2015-09-11T20:49:49Z"}, "timestamp is a date, not Unix milliseconds"),
    ({"timestamp": "09/11/2015 8:49 PM"}, "timestamp is a date, not Unix milliseconds"),
    ({"timestamp": "11.9.2015"}, "timestamp is a date, not Unix milliseconds"),
    ({"timestamp": "Timestamp", "event": "event"}, "repeated header line"),
    ({"itemid": "NA"}, "missing itemid"),
    ({"event": "null"}, "missing event"),
    ({"event": "transaction", "transactionid": "NULL"}, "transaction without transactionid"),
]


@pytest.mark.parametrize(("changes", "reason"), RULE_CASES)
def test_each_rule_rejects_with_its_reason(changes: dict[str, str], reason: str) -> None:
    result = _one(**changes)
    assert result.valid.empty
    assert result.rejected["reason"].tolist() == [reason]
    original = {**GOOD, **changes}
    for col in EVENT_COLUMNS:
        assert result.rejected[col].iloc[0] == original[col]  # original values are kept


def test_whitespace_and_quotes_around_values_are_tolerated() -> None:
    result = _one(event=" view ", visitorid=" 7")
    assert result.rejected.empty
    assert result.valid["visitorid"].iloc[0] == 7


@pytest.mark.parametrize("gap", ["NA", "NULL", "null", "nan", "NaN", "None", "N/A", "<NA>", ""])
def test_what_exports_write_for_no_value_reads_as_empty(gap: str) -> None:
    result = _one(transactionid=gap)  # R writes NA, SQL dumps NULL, pandas nan
    assert result.rejected.empty
    assert pd.isna(result.valid["transactionid"].iloc[0])


def test_event_names_match_without_case() -> None:
    batch = pd.DataFrame([{**GOOD, "event": e} for e in ("View", " ADDTOCART", "Transaction")])
    batch.loc[2, "transactionid"] = "5"
    result = schema.validate_events(batch, now_ms=NOW)
    assert result.rejected.empty
    assert result.valid["event"].astype(str).tolist() == ["view", "addtocart", "transaction"]


def test_integers_with_a_zero_fraction_or_a_sign_are_read_exactly() -> None:
    # A value that is not a plain integer sends the whole batch down the slow path: the others
    # must still be exact, even past float64's 2**53.
    big = 2**53 + 1
    batch = pd.DataFrame(
        [
            {**GOOD, "visitorid": str(big)},
            {**GOOD, "visitorid": "12.0", "itemid": "+7"},
            {**GOOD, "visitorid": "abc"},
        ]
    )
    result = schema.validate_events(batch, now_ms=NOW)
    assert result.valid["visitorid"].tolist() == [big, 12]
    assert result.valid["itemid"].tolist() == [355908, 7]
    assert result.rejected["reason"].tolist() == ["visitorid is not an integer"]


def test_json_values_from_the_api_are_validated_alike() -> None:
    batch = pd.DataFrame(
        {
            "timestamp": [1442004589439, 1442004589439, None, 1442004589439],
            "visitorid": [1, "two", 3, 4],
            "event": ["transaction", "view", "view", "view"],
            "itemid": [10, 11, 12, 13.5],
            "transactionid": [99, None, None, None],
        },
        dtype=object,
    )
    result = schema.validate_events(batch, now_ms=NOW)
    assert result.valid.index.tolist() == [0]
    assert result.valid["transactionid"].iloc[0] == 99
    assert result.rejected["reason"].tolist() == [
        "visitorid is not an integer",
        "missing timestamp",
        "itemid is not an integer",
    ]
    assert result.rejected.index.tolist() == [1, 2, 3]


def test_every_row_is_either_valid_or_rejected() -> None:
    rows = [GOOD, {**GOOD, "event": "bogus"}, {**GOOD, "itemid": "-1"}, {**GOOD, "visitorid": "8"}]
    result = schema.validate_events(pd.DataFrame(rows), now_ms=NOW)
    assert sorted([*result.valid.index, *result.rejected.index]) == [0, 1, 2, 3]


def test_a_missing_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"missing required column.*transactionid"):
        schema.validate_events(
            pd.DataFrame([{k: v for k, v in GOOD.items() if k != "transactionid"}])
        )
