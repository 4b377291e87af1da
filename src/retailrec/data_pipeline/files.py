"""File discovery: where a shop's Retailrocket files are, in a folder, as one file, or in a zip.

The real dataset ships ``events.csv``, ``item_properties_part1.csv`` and
``item_properties_part2.csv`` (about 20M rows together) and ``category_tree.csv``; the generator
writes one ``item_properties.csv``. :func:`locate` finds whichever is present, and :func:`unpack`
extracts them from an archive. Reading them is :mod:`retailrec.data_pipeline.csv_input`'s job.
"""

from __future__ import annotations

import bz2
import gzip
import shutil
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from retailrec.errors import DataFileError

#: Compressed files are read by their suffix.
COMPRESSION: dict[str, Callable[..., IO[Any]]] = {".gz": gzip.open, ".bz2": bz2.open}


@dataclass(frozen=True)
class RawFiles:
    """Paths of a shop's raw files. Only ``events`` is required.

    When ``archive`` is set the files are members of that zip archive (as Kaggle ships
    Retailrocket) and the paths are their names in it: :func:`unpack` extracts them.
    """

    events: Path
    item_properties: tuple[Path, ...] = ()
    category_tree: Path | None = None
    archive: Path | None = None

    @property
    def source(self) -> str:
        """The events file, as the user would name it."""
        return str(self.events) if self.archive is None else f"{self.archive}:{self.events}"


_CSV_SUFFIXES = tuple(f".csv{s}" for s in ("", *COMPRESSION))


def locate(raw_dir: Path) -> RawFiles:
    """Find Retailrocket's files in ``raw_dir``: a folder, the events file itself, or a zip.

    Accepts the real names (``item_properties_part1.csv`` and ``..._part2.csv``), the single
    ``item_properties.csv`` the generator writes, and any of them gzip- or bzip2-compressed
    (``events.csv.gz``). When ``raw_dir`` is a file, it is the event log and the optional files
    are looked for beside it. A zip archive (Kaggle's download), given or alone in the folder,
    is searched at any depth; :func:`unpack` extracts what was found.

    Raises:
        DataFileError: the folder does not exist, or ``events.csv`` is not in it.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.is_file() and raw_dir.suffix.lower() in (".xlsx", ".xls", ".xlsm"):
        raise DataFileError(f"{raw_dir}: an Excel workbook, not CSV text: save it as CSV")
    if raw_dir.is_file() and zipfile.is_zipfile(raw_dir):
        return _in_archive(raw_dir)
    if raw_dir.is_file() and raw_dir.suffix.lower() == ".zip":
        raise DataFileError(f"{raw_dir}: cannot be read: not a whole zip archive")
    if raw_dir.is_file():  # the event log itself, whatever its name
        beside = _pick([p.name for p in raw_dir.parent.iterdir()], raw_dir.parent)
        return RawFiles(raw_dir, beside.item_properties, beside.category_tree)
    if not raw_dir.is_dir():
        raise DataFileError(f"{raw_dir}: no such folder (expected one holding events.csv)")
    found = _pick([p.name for p in raw_dir.iterdir()], raw_dir)
    if found.events is not None:
        return RawFiles(found.events, found.item_properties, found.category_tree)
    archives = [p for p in sorted(raw_dir.glob("*.zip")) if zipfile.is_zipfile(p)]
    if len(archives) == 1:
        return _in_archive(archives[0])
    nested = sorted(p.parent for p in raw_dir.glob("*/events.csv*") if p.is_file())
    others = sorted(p for p in raw_dir.iterdir() if p.name.lower().endswith(_CSV_SUFFIXES))
    if nested:
        hint = f"; there is one in {nested[0]}: pass --raw {nested[0]}"
    elif archives:
        hint = f"; pass one of the zip archives there, e.g. --raw {archives[0]}"
    elif others:  # an export under another name, or one file per month: load each by name
        hint = f"; to load another file as the event log, name it: --raw {others[0]}"
    else:
        hint = ": put Retailrocket's files there (or run `retailrec download` / `retailrec synth`)"
    raise DataFileError(f"no events.csv in {raw_dir}{hint}")


@dataclass(frozen=True)
class _Found:
    events: Path | None
    item_properties: tuple[Path, ...]
    category_tree: Path | None


def _pick(names: Sequence[str], folder: Path | None) -> _Found:
    """Retailrocket's files among ``names``: files in ``folder``, or (None) the names alone."""

    def usable(name: str) -> bool:
        return folder is None or (folder / name).is_file()

    def path(name: str) -> Path:
        return Path(name) if folder is None else folder / name

    spelt = {n.lower(): n for n in sorted(names, reverse=True)}  # Events.CSV is events.csv

    def find(name: str) -> Path | None:
        for suffix in ("", *COMPRESSION):
            written = spelt.get(f"{name}{suffix}")
            if written is not None and usable(written):
                return path(written)
        return None

    parts = tuple(
        path(spelt[n])
        for n in sorted(spelt)
        if n.startswith("item_properties_part") and n.endswith(_CSV_SUFFIXES) and usable(spelt[n])
    )
    single = find("item_properties.csv")
    props = parts if parts else ((single,) if single is not None else ())
    return _Found(find("events.csv"), props, find("category_tree.csv"))


def _in_archive(archive: Path) -> RawFiles:
    """Retailrocket's files in a zip archive, by their names in it (at any depth)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [
                m.filename
                for m in zf.infolist()
                if not m.is_dir()
                and not m.filename.startswith("__MACOSX/")  # macOS resource forks
                and not PurePosixPath(m.filename).name.startswith("._")
            ]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFileError.unreadable(archive, exc) from exc
    by_name: dict[str, str] = {}
    for member in members:
        by_name.setdefault(PurePosixPath(member).name, member)
    found = _pick(list(by_name), None)
    if found.events is None:
        shown = ", ".join(sorted(by_name)[:5]) or "nothing"
        raise DataFileError(f"{archive}: no events.csv in this zip archive (it holds {shown})")

    def in_archive(name: Path) -> Path:
        return Path(by_name[name.name])

    return RawFiles(
        in_archive(found.events),
        tuple(in_archive(p) for p in found.item_properties),
        None if found.category_tree is None else in_archive(found.category_tree),
        archive=archive,
    )


def unpack(files: RawFiles, into: Path) -> RawFiles:
    """Extract an archive's files into the folder ``into``: the same files, as real paths.

    Files that are not in an archive come back as they are.

    Raises:
        DataFileError: the archive is damaged.
    """
    if files.archive is None:
        return files
    into.mkdir(parents=True, exist_ok=True)

    def extract(zf: zipfile.ZipFile, name: Path) -> Path:
        target = into / name.name  # flattened: a member's folders never reach the disk
        with zf.open(name.as_posix()) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        return target

    try:
        with zipfile.ZipFile(files.archive) as zf:
            return RawFiles(
                extract(zf, files.events),
                tuple(extract(zf, p) for p in files.item_properties),
                None if files.category_tree is None else extract(zf, files.category_tree),
            )
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataFileError.unreadable(files.archive, exc) from exc
