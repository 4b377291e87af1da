"""The package's layers: no import runs upward (docs/ARCHITECTURE.md draws the same floors).

Every ``import`` and ``from ... import`` in ``src/retailrec``, at any depth (a function's lazy
import counts as much as one at the top), is read from the source and checked against the floors
below: a module may import its own floor and the floors beneath it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "retailrec"

#: Floor of each module or package, lowest first. A module not named here takes its package's.
FLOORS: dict[str, int] = {
    # the ground floor: the shop's vocabulary, errors, settings; nothing of ours below
    "retailrec.events": 0,
    "retailrec.errors": 0,
    "retailrec.config": 1,
    "retailrec.reports": 1,
    "retailrec.spark": 1,
    "retailrec.feature_store": 2,
    "retailrec.data_pipeline": 3,
    "retailrec.synthetic": 3,
    "retailrec.models": 4,
    "retailrec.registry": 5,
    "retailrec.client": 5,
    "retailrec.serving": 6,
    "retailrec.training": 7,
    "retailrec.monitoring": 7,
    "retailrec.pipeline": 8,
    "retailrec.api": 9,
    "retailrec.dashboard": 9,
    "retailrec.cli": 10,
    "retailrec.__main__": 11,
    "retailrec": 11,
}

#: Packages on one floor that must still not reach each other.
APART = {
    ("retailrec.training", "retailrec.monitoring"),
    ("retailrec.monitoring", "retailrec.training"),
    ("retailrec.data_pipeline", "retailrec.synthetic"),
    ("retailrec.api", "retailrec.dashboard"),
    ("retailrec.dashboard", "retailrec.api"),
}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _owner(module: str) -> str:
    """The longest key of FLOORS that ``module`` is or lies in."""
    while module not in FLOORS:
        module = module.rsplit(".", 1)[0]
    return module


def _imports(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) of every import of ours in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # a relative import starts from the module's package
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            # ``from retailrec.x import y`` may import the module retailrec.x.y
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "retailrec"]


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import that reaches a higher floor (or a package kept apart), as text."""
    wrong = []
    for path in sorted(package.rglob("*.py")):
        me = _owner(_module_name(path, package))
        for line, name in _imports(path, package):
            them = _owner(name)
            if them == me or name.startswith(me + "."):
                continue
            if FLOORS[them] > FLOORS[me] or (me, them) in APART:
                where = path.relative_to(package.parent)
                wrong.append(f"{where}:{line} ({me}, floor {FLOORS[me]}) imports {name}")
    return wrong


def test_no_import_runs_upward() -> None:
    assert upward_imports() == []


def test_every_module_has_a_floor() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert _owner(_module_name(path)) != "retailrec" or path.parent == PACKAGE, path


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        # The feature store speaks only the ground floor's language.
        ("retailrec.feature_store", {"retailrec.events", "retailrec.errors"}),
    ],
)
def test_narrow_floors(module: str, allowed: set[str]) -> None:
    root = PACKAGE.parent / Path(*module.split("."))
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    reached = {
        _owner(name)
        for path in paths
        for _, name in _imports(path)
        if not name.startswith(module + ".")
    }
    assert reached <= allowed, reached - allowed


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The walker is not vacuous: a store module that imports the API is reported."""
    fake = tmp_path / "retailrec"
    (fake / "feature_store").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "feature_store" / "__init__.py").write_text("")
    (fake / "feature_store" / "store.py").write_text(
        "from retailrec.events import DAY_MS\n\n\ndef f():\n    from retailrec.api import main\n"
    )
    (fake / "dashboard").mkdir()
    (fake / "dashboard" / "app.py").write_text("from ..api.deps import SettingsDep\n")
    found = upward_imports(fake)
    assert len(found) == 2, found
    assert "feature_store/store.py:5" in found[1] or "feature_store/store.py:5" in found[0]
    assert any("dashboard/app.py:1" in f and "retailrec.api.deps" in f for f in found)
