"""The notebooks run top to bottom (executed: the default synthetic dataset and config, a few steps) and are
committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_for_data_outputs_pwm_and_sweeps():
    names = " ".join(p.stem for p in NOTEBOOKS)
    for topic in ("dataset", "branch_outputs", "pwm", "sweep"):
        assert topic in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean_and_runs_top_to_bottom(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: clear the outputs"
    assert any("asdt_lightning" in c.source for c in code)  # uses the package, not a re-implementation
    for key in ("ASDT_CKPT", "ASDT_SWEEP_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ASDT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("ASDT_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on any error
    assert all(c.execution_count is not None for c in code)
