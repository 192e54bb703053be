"""Command line of the study: ``python -m megafr <command>``.

- ``profile NAME``: make ``profiles/NAME.yaml`` the active ``params.yaml`` (smoke, mini, paper);
- ``sweep STAGE --name NAME -p KEY V1 V2 ... [-p KEY2 ...]``: run a stage's notebook over a grid;
- ``reenact --source A --target B --out C [--refine-steps N] [--pti]``: reenact one photo by another.

Errors the study raises on purpose print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from megafr.config import PROFILES, use_profile
from megafr.errors import MegaFRError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megafr", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    profile = commands.add_parser("profile", help="switch the active profile (rewrites params.yaml)")
    profile.add_argument("name", choices=PROFILES)

    sweep = commands.add_parser("sweep", help="run one stage's notebook over a grid of parameter values")
    sweep.add_argument("stage", help="stage name in dvc.yaml, e.g. prepare")
    sweep.add_argument("--name", required=True, help="sweep name: results go to data/sweeps/<name>/")
    sweep.add_argument("-p", "--param", nargs="+", action="append", metavar=("KEY", "VALUE"), default=[],
                       help="a notebook parameter and the values to sweep (YAML-parsed); repeat for a grid")

    reenact = commands.add_parser("reenact", help="reenact a source image by a target image with the trained MegaFR")
    reenact.add_argument("--source", required=True, help="source photo (identity kept)")
    reenact.add_argument("--target", required=True, help="target photo (pose and expression taken)")
    reenact.add_argument("--out", required=True, help="output PNG")
    reenact.add_argument("--refine-steps", type=int, default=1, help="extra applications of F (paper eq. 9)")
    reenact.add_argument("--pti", action="store_true", help="pivotal tuning of the generator first (out-of-domain photos)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "profile":
            path = use_profile(args.name)
            print(f"profile {args.name} is active ({path}); run `dvc repro` to rebuild what changed")
        elif args.command == "sweep":
            from megafr.sweep import run_sweep

            axes = {}
            for entry in args.param:
                if len(entry) < 2:
                    raise MegaFRError(f"-p {entry[0]} needs at least one value")
                axes[entry[0]] = [yaml.safe_load(v) for v in entry[1:]]
            table = run_sweep(args.stage, args.name, axes)
            print(table.to_string(index=False))
        elif args.command == "reenact":
            from megafr.reenact.cli import reenact_files
            from megafr.reenact.inference import PTI_STEPS

            if args.refine_steps < 0:
                raise MegaFRError(f"--refine-steps must be >= 0, got {args.refine_steps}")
            path = reenact_files(args.source, args.target, args.out, args.refine_steps, PTI_STEPS if args.pti else 0)
            print(f"wrote {path}")
    except MegaFRError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
