"""Every ``Example:`` in the package's docstrings runs and prints what it shows.

Docstring examples are the first code a user copies; one that went stale (a changed signature,
a changed repr) is a wrong answer in the documentation. Modules that need torch skip without it.
"""

import doctest
import importlib
import pkgutil

import pytest

import cupytv


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(cupytv.__path__, "cupytv."):
        if info.name.startswith("cupytv.benchmarks") or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    if name.startswith("cupytv.torch"):
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
