"""Readers accept the real Retailrocket files and the synthetic ones."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from retailrec.data_pipeline import csv_input, feature_pipeline
from retailrec.data_pipeline.files import locate, unpack
from retailrec.errors import DataFileError
from retailrec.events import EVENT_COLUMNS
from retailrec.synthetic import synth
from tests.utils import readers
from tests.utils.factories import Shop


def test_reads_the_real_sample(real_sample: Path) -> None:
    events = readers.read_events(real_sample)
    assert len(events) == 2_771
    assert events["event"].value_counts().to_dict() == {
        "view": 2_695,
        "addtocart": 62,
        "transaction": 14,
    }
    assert events["visitorid"].nunique() == 1_500
    assert events["itemid"].nunique() == 2_127
    assert int(events.duplicated().sum()) == 1
    assert events["timestamp"].dtype == "int64"
    assert events["transactionid"].notna().sum() == 14
    assert (events["transactionid"].notna() == (events["event"] == "transaction")).all()


def test_real_sample_agrees_with_the_generators_targets(real_sample: Path) -> None:
    """The sample is 1,500 random visitors, so its per-visitor shares estimate the full file's."""
    stats = synth.summarize(readers.read_events(real_sample))
    assert stats["one_event_visitor_share"] == pytest.approx(
        synth.FULL["one_event_visitor_share"], abs=0.05
    )
    assert stats["view_share"] == pytest.approx(synth.FULL["view_share"], abs=0.02)
    assert stats["span_days"] == pytest.approx(138, abs=1)


def test_reads_the_synthetic_files(tiny_shop: Shop) -> None:
    files = locate(tiny_shop.dir)
    events = readers.read_events(files.events)
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert len(events) == len(tiny_shop.data.events)
    pd.testing.assert_frame_equal(
        events.astype({"event": str}),
        tiny_shop.data.events.astype({"event": str}),
        check_dtype=False,
    )
    props = readers.read_item_properties(files.item_properties)
    catalogue = feature_pipeline.item_catalogue(props)
    truth = tiny_shop.data.truth_items.set_index("itemid")
    assert (
        catalogue.set_index("itemid")["categoryid"]
        == truth.loc[catalogue["itemid"], "categoryid"].to_numpy()
    ).all()
    tree = readers.read_category_tree(files.category_tree)
    assert tree["parentid"].isna().sum() == 25


def test_locate_finds_the_real_file_names(tiny_shop: Shop, tmp_path: Path) -> None:
    shutil.copy(tiny_shop.events_csv, tmp_path / "events.csv")
    props = pd.read_csv(tiny_shop.dir / "item_properties.csv")
    half = len(props) // 2
    props.iloc[:half].to_csv(tmp_path / "item_properties_part1.csv", index=False)
    props.iloc[half:].to_csv(tmp_path / "item_properties_part2.csv", index=False)
    files = locate(tmp_path)
    assert [p.name for p in files.item_properties] == [
        "item_properties_part1.csv",
        "item_properties_part2.csv",
    ]
    assert files.category_tree is None
    assert len(readers.read_item_properties(files.item_properties)) == len(props)


def test_locate_matches_names_without_case(tmp_path: Path) -> None:
    (tmp_path / "Events.CSV").write_text("timestamp,visitorid,event,itemid,transactionid\n")
    (tmp_path / "Category_Tree.csv").write_text("categoryid,parentid\n")
    files = locate(tmp_path)
    assert files.events.name == "Events.CSV"
    assert files.category_tree is not None and files.category_tree.name == "Category_Tree.csv"


def test_locate_points_at_a_folder_one_level_down(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "events.csv").write_text("timestamp\n")
    with pytest.raises(DataFileError, match=r"there is one in .*archive: pass --raw"):
        locate(tmp_path)


def test_locate_names_a_csv_file_to_pass_when_there_is_no_events_csv(tmp_path: Path) -> None:
    (tmp_path / "events-2015-07.csv").write_text("timestamp\n")
    (tmp_path / "events-2015-06.csv").write_text("timestamp\n")
    with pytest.raises(DataFileError, match=r"name it: --raw .*events-2015-06.csv$"):
        locate(tmp_path)


def test_a_zip_archive_is_searched_and_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/events.csv", "timestamp,visitorid,event,itemid,transactionid\n")
        zf.writestr("archive/item_properties_part2.csv", "timestamp,itemid,property,value\n")
        zf.writestr("archive/item_properties_part1.csv", "timestamp,itemid,property,value\n")
        zf.writestr("__MACOSX/archive/._events.csv", b"\x00\x05resource fork")
    for given in (archive, tmp_path):  # the archive, or a folder holding only it
        files = locate(given)
        assert files.archive == archive
        assert files.events == Path("archive/events.csv")
        assert files.source == f"{archive}:archive/events.csv"
    out = unpack(files, tmp_path / "out")
    assert out.archive is None
    assert out.events.read_text().startswith("timestamp,")
    assert [p.name for p in out.item_properties] == [
        "item_properties_part1.csv",
        "item_properties_part2.csv",
    ]
    assert out.category_tree is None


def test_a_zip_without_events_or_a_damaged_one_is_a_one_line_error(tmp_path: Path) -> None:
    archive = tmp_path / "shop.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("orders.csv", "a,b\n")
    with pytest.raises(DataFileError, match=r"no events.csv in this zip .*holds orders"):
        locate(archive)
    archive.write_bytes(archive.read_bytes()[:30])  # an interrupted download
    with pytest.raises(DataFileError, match="not a whole zip archive"):
        locate(archive)


def test_item_catalogue_takes_the_latest_value_as_of_a_time() -> None:
    props = pd.DataFrame(
        {
            "timestamp": [1, 1, 5, 9, 9],
            "itemid": [10, 10, 10, 10, 11],
            "property": ["categoryid", "available", "available", "categoryid", "available"],
            "value": ["3", "1", "0", "4", "1"],
        }
    )
    now = feature_pipeline.item_catalogue(props).set_index("itemid")
    assert now.loc[10, "categoryid"] == 4 and not now.loc[10, "available"]
    assert pd.isna(now.loc[11, "categoryid"]) and now.loc[11, "available"]
    then = feature_pipeline.item_catalogue(props, as_of_ms=4).set_index("itemid")
    assert then.loc[10, "categoryid"] == 3 and then.loc[10, "available"]
    assert 11 not in then.index


def test_hashed_properties_are_filtered_out(tmp_path: Path) -> None:
    path = tmp_path / "item_properties_part1.csv"
    path.write_text(
        "timestamp,itemid,property,value\n"
        "1435460400000,460429,categoryid,1338\n"
        "1441508400000,206783,888,1116713 960601 n277.200\n"
        "1439089200000,395014,400,n552.000 639502 n720.000 424566\n"
        "1431226800000,59481,790,n15360.000\n"
        "1431831600000,156781,available,0\n"
    )
    props = readers.read_item_properties([path])
    assert sorted(props["property"]) == ["available", "categoryid"]
    assert len(readers.read_item_properties([path], properties=None)) == 5


def test_missing_events_file_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"no events.csv in .*retailrec download"):
        locate(tmp_path)
    with pytest.raises(DataFileError, match="no such folder"):
        locate(tmp_path / "nowhere")


def test_locate_finds_compressed_files_and_takes_a_file_path(tmp_path: Path) -> None:
    for name in ("events.csv.gz", "item_properties_part1.csv.gz", "item_properties_part2.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "item_properties_part1.csv.gz.bak").write_bytes(b"")
    (tmp_path / "category_tree.csv.bz2").write_bytes(b"")
    files = locate(tmp_path)
    assert files.events.name == "events.csv.gz"
    assert [p.name for p in files.item_properties] == [
        "item_properties_part1.csv.gz",
        "item_properties_part2.csv",
    ]
    assert files.category_tree is not None and files.category_tree.name == "category_tree.csv.bz2"
    other = tmp_path / "export.csv"
    other.write_bytes(b"")
    assert locate(other).events == other


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        (
            "timestamp,visitorid,event,itemid\n1,2,view,3\n",
            "missing required column.*transactionid",
        ),
        (
            "timestamp,visitorid,event,itemid,transactionid\n1,2,click,3,\n",
            "unknown event type 'click'",
        ),
        ("timestamp,visitorid,event,itemid,transactionid\nabc,2,view,3,\n", "etl"),
    ],
)
def test_unreadable_events_fail_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "events.csv"
    path.write_text(content)
    with pytest.raises(DataFileError, match=message) as info:
        readers.read_events(path)
    assert "\n" not in str(info.value)


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(
        b"\xef\xbb\xbftimestamp,visitorid,event,itemid,transactionid\r\n"
        b"1433221332117,257597,view,355908,\r\n1433224214164,992329,transaction,248676,4000"
    )
    events = readers.read_events(path)
    assert events["transactionid"].tolist()[1] == 4000
    assert events["event"].tolist() == ["view", "transaction"]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", "an Excel workbook (.xlsx)"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook"),
        (b"PAR1\x15\x04", "a Parquet file"),
    ],
)
def test_a_file_that_is_not_csv_text_says_what_it_is(
    tmp_path: Path, head: bytes, kind: str
) -> None:
    (tmp_path / "events.csv").write_bytes(head + bytes(range(256)) * 4)
    with pytest.raises(DataFileError, match=re.escape(kind)) as info:
        csv_input.csv_layout(tmp_path / "events.csv", EVENT_COLUMNS)
    assert str(info.value).endswith("not CSV text: save or export it as CSV")


def test_an_excel_workbook_given_as_raw_says_to_save_it_as_csv(tmp_path: Path) -> None:
    (tmp_path / "events.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataFileError, match="an Excel workbook, not CSV text"):
        locate(tmp_path / "events.xlsx")
