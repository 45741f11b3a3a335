"""``python -m cupytv check``: the table, the verdicts and the exit status."""

from __future__ import annotations

import numpy as np

import cupytv
from cupytv.__main__ import main


def test_check_passes_on_the_host(capsys):
    assert main(["check", "--backend", "host", "--quick"]) == 0
    out = capsys.readouterr().out
    for operator in ("prox_tv1d condat", "prox_tv1d_vjp", "prox_tv2d accelerated",
                     "prox_tv2d_vjp dykstra", "prox_tv 3 axes", "prox_tv_vjp 3 axes"):  # fmt: skip
        assert operator in out
    assert "20 passed, 0 failed" in out
    assert "FAIL" not in out


def test_check_fails_on_a_wrong_operator(capsys, monkeypatch):
    # A check that cannot fail is no check: a solver off by 1e-2 must be caught and reported.
    real = cupytv.prox_tv2d

    def off(x, *args, **kwargs):
        return real(x, *args, **kwargs) + np.asarray(1e-2, dtype=x.dtype)

    monkeypatch.setattr(cupytv, "prox_tv2d", off)
    assert main(["check", "--backend", "host", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "4 failed" in out  # both 2D methods, both dtypes
