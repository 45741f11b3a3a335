"""The code in docs/torch_layers.md runs, so the page cannot drift from the API.

Blocks fenced as ```` ```python ```` run in order in one namespace (later blocks reuse earlier
names, as a reader would); blocks fenced as ```` ```python notest ```` (GPU, several processes,
a slow compile) are only compiled, which still catches syntax that rots.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

DOC = Path(__file__).resolve().parents[1] / "docs" / "torch_layers.md"
#: A fenced block: its info string (language and flags) and its body.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUN, SHOW = "python", "python notest"
#: Fewer runnable blocks than this means the fences were mangled, not that the page is fine.
MIN_RUNNABLE = 4


def _python_blocks() -> list[tuple[str, str, int]]:
    """``(info, code, line)`` for every python block of the page."""
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        info = " ".join(m.group(1).split())
        if info.split(" ")[0] in ("python", "py"):
            blocks.append((info, m.group(2), text.count("\n", 0, m.start(2)) + 1))
    return blocks


def test_python_fences_are_known():
    infos = [info for info, _, _ in _python_blocks()]
    unknown = sorted(set(infos) - {RUN, SHOW})
    assert not unknown, f"fences must be {RUN!r} or {SHOW!r}, got {unknown}"
    assert infos.count(RUN) >= MIN_RUNNABLE, infos


def test_docs_examples_run():
    namespace: dict = {"__name__": "torch_layers_md"}
    for info, code, line in _python_blocks():
        compiled = compile(code, f"{DOC.name}:{line}", "exec")
        if info == RUN:
            exec(compiled, namespace)
