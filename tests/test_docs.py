"""The documentation's code runs and its numbers come from committed results.

README.md and docs/torch_layers.md: blocks fenced as ```` ```python ```` run in order in one
namespace per page (later blocks reuse earlier names, as a reader would); blocks fenced as
```` ```python notest ```` (GPU, several processes, a slow compile) are only compiled, which
still catches syntax that rots. The README's benchmark table must equal its rendering from
benchmarks/results/, and CI must run the README's quick-start commands.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
#: Each page, and how many runnable blocks it has at least (fewer: the fences were mangled).
PAGES = {"README.md": 3, "docs/torch_layers.md": 4}
#: A fenced block: its info string (language and flags) and its body.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUN, SHOW = "python", "python notest"


def _python_blocks(page: str) -> list[tuple[str, str, int]]:
    """``(info, code, line)`` for every python block of the page."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        info = " ".join(m.group(1).split())
        if info.split(" ")[0] in ("python", "py"):
            blocks.append((info, m.group(2), text.count("\n", 0, m.start(2)) + 1))
    return blocks


@pytest.mark.parametrize("page", PAGES)
def test_python_fences_are_known(page):
    infos = [info for info, _, _ in _python_blocks(page)]
    unknown = sorted(set(infos) - {RUN, SHOW})
    assert not unknown, f"fences must be {RUN!r} or {SHOW!r}, got {unknown}"
    assert infos.count(RUN) >= PAGES[page], infos


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page):
    namespace: dict = {"__name__": page.replace("/", "_")}
    for info, code, line in _python_blocks(page):
        compiled = compile(code, f"{page}:{line}", "exec")
        if info == RUN:
            exec(compiled, namespace)


def _readme_table_module():
    spec = importlib.util.spec_from_file_location(
        "readme_table", ROOT / "benchmarks" / "readme_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_table", module)
    spec.loader.exec_module(module)
    return module


def test_readme_benchmark_tables_are_the_committed_results():
    table = _readme_table_module()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in table.BLOCKS:
        assert table.readme_block(readme, name) == table.RENDER[name](), (
            f"README's {name} differs from benchmarks/results/: "
            "run python benchmarks/readme_table.py --write"
        )
    assert "| A |" in table.render()  # rows, and a machine legend, not an empty table
    for peer in ("proxTV taut string", "CVXPYLayers"):  # issue 8: peers next to cupytv
        assert peer in table.render_timing()


def test_ci_runs_the_readme_quick_start():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme[readme.index("## Quick start") : readme.index("## Install")]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("python -m cupytv demo", "python -m pytest"):
        assert command in quick_start
        assert command in ci


def test_readme_layout_lists_every_doc():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ")]
    docs = sorted(p.name + ("/" if p.is_dir() else "") for p in (ROOT / "docs").iterdir())
    missing = [name for name in docs if name not in layout]
    assert not missing, f"docs/ holds {docs}; README's Layout section does not name {missing}"
