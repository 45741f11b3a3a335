"""Every notebook in notebooks/ executes top to bottom (CI: on the CPU, with its small setting).

A notebook is documentation that runs; one that stops running fails here. Each reads
``CUPYTV_NOTEBOOK_QUICK=1`` and shrinks its sizes and training steps to fit CI. Committed notebooks
carry no outputs (reviewable diffs, no stale numbers): that is checked too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Per cell; the whole QUICK notebook is meant to take well under a minute on 2 cores.
CELL_TIMEOUT_S = 300
#: Notebooks that cannot run without an optional dependency: skipped, with the reason, without it.
NEEDS = {"02_tv_layer_training": "torch"}


def test_the_three_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_tv_filtering",
        "02_tv_layer_training",
        "03_validation",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{path.name} has outputs: strip them before committing "
        "(jupyter nbconvert --clear-output --inplace)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executes(path, tmp_path, monkeypatch):
    module = NEEDS.get(path.stem)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{path.name} needs {module}, which is not installed")
    monkeypatch.setenv("CUPYTV_NOTEBOOK_QUICK", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # anything it writes lands here
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 3, f"{path.name} drew {images} figures: its plots are the point"
