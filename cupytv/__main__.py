"""Command line: ``python -m cupytv <command>`` (also installed as ``cupytv``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cupytv", description="Fast, differentiable total-variation proximal operators."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="filter a built-in signal and image, save a PNG figure")
    demo.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")
    demo.add_argument("--lam-1d", type=float, default=0.5, help="1D weight (default: 0.5)")
    demo.add_argument("--lam-2d", type=float, default=0.08, help="2D weight (default: 0.08)")
    demo.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    check = sub.add_parser(
        "check", help="every operator on every backend against the exact reference (a table)"
    )
    check.add_argument(
        "--backend", choices=("host", "cuda", "all"), default="all",
        help="host executor, CUDA through CuPy, or both where available (default: all)",
    )  # fmt: skip
    check.add_argument("--quick", action="store_true", help="smaller inputs (seconds)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run

        run(args.out, lam_1d=args.lam_1d, lam_2d=args.lam_2d, size=args.size)
    elif args.command == "check":
        from .check import run

        rows = run(args.backend, quick=args.quick)
        return 0 if all(r.ok for r in rows) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
