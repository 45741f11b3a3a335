"""Command line: ``python -m cupytv <command>`` (also installed as ``cupytv``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .bench import ORDER
from .demo import DEFAULT_LAM_1D, DEFAULT_LAMS, DEFAULT_MAX_SIDE, DEFAULT_SIGMA


def _positive_int(text: str) -> int:
    """argparse type for --max-side: 0 divided by zero in the demo, a negative side was ignored."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cupytv", description="Fast, differentiable total-variation proximal operators."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="filter a photo and a 1D signal with TV at several weights, save one PNG figure",
        description="Adds Gaussian noise to a photo (the bundled one, or --image), filters it "
        "with 2D TV-Smooth at each --lam, shows TV-Sharp of the photo, and a 1D signal; writes "
        "cupytv_demo.png. Runs on the GPU when CuPy can use one, else on the CPU.",
    )
    demo.add_argument("--image", type=Path, help="an image file (default: the bundled photo)")
    demo.add_argument(
        "--lam", type=float, nargs="+", default=list(DEFAULT_LAMS), metavar="LAM",
        help="2D weights, for an image in [0, 1] (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--lam-1d", type=float, default=DEFAULT_LAM_1D,
        help="weight of the 1D example (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--sigma", type=float, default=DEFAULT_SIGMA,
        help="noise added to the image, on a [0, 1] scale; 0 filters it as is "
        "(default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--max-side", type=_positive_int, default=DEFAULT_MAX_SIDE,
        help="block-average a larger image down to this side first (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--out", type=Path, default=Path("."),
        help="a figure file (.png, .jpg, .pdf, .svg) or a folder to write cupytv_demo.png into "
        "(default: .)",
    )  # fmt: skip
    check = sub.add_parser(
        "check", help="every operator on every backend against the exact reference (a table)"
    )
    check.add_argument(
        "--backend", choices=("host", "cuda", "all"), default="all",
        help="host executor, CUDA through CuPy, or both where available (default: all)",
    )  # fmt: skip
    check.add_argument("--quick", action="store_true", help="smaller inputs (seconds)")
    bench = sub.add_parser(
        "bench",
        help="run the benchmark suites (tables on screen, JSON to --out)",
        description="Runs benchmarks/bench_<suite>.py one after another and prints their tables. "
        "A full run takes tens of minutes on a CPU, --quick a few.",
    )
    bench.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    bench.add_argument(
        "--suite", nargs="+", metavar="NAME",
        help=f"only these suites ({', '.join(ORDER)}; default: all)",
    )  # fmt: skip
    bench.add_argument(
        "--out", type=Path, default=Path("cupytv_bench"),
        help="folder for the JSON results (default: ./cupytv_bench)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = getattr(args, "out", None)
    if args.command == "demo":
        from .demo import figure_path

        out = figure_path(out).parent  # the folder it writes into
    if out is not None and out.exists() and not out.is_dir():
        # Checked before any work: mkdir/savefig failed on it with a traceback at the end.
        want = (
            "a folder or a figure file (.png, .jpg, .pdf, .svg)"
            if args.command == "demo"
            else "a folder"
        )
        parser.error(f"argument --out: expected {want}, got {str(args.out)!r} (an existing file)")

    if args.command == "demo":
        from .demo import run

        run(args.out, args.image, tuple(args.lam), args.lam_1d, args.sigma, args.max_side)
    elif args.command == "check":
        from .check import run

        rows = run(args.backend, quick=args.quick)
        return 0 if all(r.ok for r in rows) else 1
    elif args.command == "bench":
        from .bench import run

        return run(args.suite, args.quick, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
