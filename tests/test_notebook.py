"""notebooks/eda.ipynb runs end to end on a tiny synthetic shop (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "eda.ipynb"


@pytest.mark.integration
def test_eda_notebook_runs_on_tiny_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAILREC_EDA_SCALE", "tiny")
    monkeypatch.delenv("RETAILREC_EDA_RAW", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = "\n".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "a synthetic shop, scale tiny" in text
    assert "one-event visitors" in text
    assert "sessions of 2+ events that stay in one category" in text
    assert "weights in use" in text
    assert not [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.mark.integration
def test_eda_notebook_reads_real_files(monkeypatch: pytest.MonkeyPatch, real_sample: Path) -> None:
    monkeypatch.setenv("RETAILREC_EDA_RAW", str(real_sample.parent))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    first = "".join(str(o.get("text", "")) for o in nb.cells[1].outputs)
    assert "2,770 events (0 rows quarantined, 1 duplicates), 1,500 visitors, 2,127 items" in first
