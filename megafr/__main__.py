"""Command line of the study: ``python -m megafr <command>``.

- ``profile NAME``: make ``profiles/NAME.yaml`` the active ``params.yaml`` (smoke, mini, paper);
- ``validate [--profile NAME] [--record PATH]``: check every stage's values in the params file at once
  (``dvc repro`` runs it first, as the ``validate`` stage, before any stage deletes its outputs);
- ``run STAGE``: validate the params file, then run the stage's notebook into ``data/executed/`` (each
  ``dvc.yaml`` stage's command);
- ``sweep STAGE --name NAME -p KEY V1 V2 ... [-p KEY2 ...]``: run a stage's notebook over a grid;
- ``reenact --source A --target B --out C [--refine-steps N] [--pti] [--largest-face] [--paste-back]``: reenact
  one photo by another;
- ``reenact --source A --driving CLIP --out C.mp4 [--relative] [--paste-back] [--smooth ...] [--half]``: drive
  one photo by a video (``megafr.reenact.drive``);
- ``release [--params FILE] [--set STAGE.FIELD=VALUE ...] [--out DIR]``: retrain the pretrained stages of a
  synthetic world and export their float16 files (``megafr.release``);
- ``check [--profile NAME] [--stage STAGE]``: list every external file the profile needs and is missing
  (``megafr.preflight``; only ``paper`` needs any).

Errors the study raises on purpose print as one line and exit with status 2; a stage notebook that
fails on a bug prints one line naming the executed notebook that holds the traceback and exits with 1.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import yaml

from megafr.config import PARAMS_FILE, PROFILES, load_params, profile_file, study_root, use_profile
from megafr.errors import MegaFRError
from megafr.reenact import drive_args

EXIT_USER_ERROR = 2
EXIT_STAGE_FAILED = 1  # a stage notebook failed on something other than the study's own errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megafr", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    profile = commands.add_parser("profile", help="switch the active profile (rewrites params.yaml)")
    profile.add_argument("name", choices=PROFILES)

    validate = commands.add_parser("validate", help="check every stage's values in the params file at once")
    validate.add_argument("--profile", choices=PROFILES, help="check this profile's file instead of params.yaml")
    validate.add_argument("--record", help="write the profile and the stages checked to this JSON file")

    run = commands.add_parser("run", help="validate params.yaml, then run one stage's notebook (dvc.yaml's command)")
    run.add_argument("stage", help="stage name in dvc.yaml, e.g. prepare")

    sweep = commands.add_parser("sweep", help="run one stage's notebook over a grid of parameter values")
    sweep.add_argument("stage", help="stage name in dvc.yaml, e.g. prepare")
    sweep.add_argument("--name", required=True, help="sweep name: results go to data/sweeps/<name>/")
    sweep.add_argument("-p", "--param", nargs="+", action="append", metavar=("KEY", "VALUE"), default=[],
                       help="a field of the stage's config and the values to sweep (YAML-parsed); repeat for a grid")

    reenact = commands.add_parser("reenact", help="reenact a source image by a target image or a driving video "
                                                   "with the trained MegaFR")
    reenact.add_argument("--source", required=True, help="source photo (identity kept)")
    driver = reenact.add_mutually_exclusive_group(required=True)
    driver.add_argument("--target", help="target photo (pose and expression taken)")
    driver.add_argument("--driving", help="driving video, any format ffmpeg reads (pose and expression of every frame)")
    reenact.add_argument("--out", required=True, help="output PNG (--target) or MP4 (--driving)")
    reenact.add_argument("--refine-steps", type=int, default=1, help="extra applications of F (paper eq. 9)")
    reenact.add_argument("--pti", action="store_true", help="pivotal tuning of the generator first (out-of-domain photos)")
    reenact.add_argument("--largest-face", action="store_true",
                         help="paper profile: in a photo with several faces, reenact the largest (default: refuse)")
    drive_args.add_arguments(reenact)

    release = commands.add_parser("release", help="retrain the pretrained stages (train_idnet, train_generator, "
                                                   "train_inversion) with the profile's recipe and write their "
                                                   "float16 release to release/<profile>/ (hours on a CPU)")
    release.add_argument("--params", default="params.yaml", help="the profile file whose recipe to train (default: the active one)")
    release.add_argument("--run-dir", default="", help="folder of the training runs (default: data/release/<profile>; "
                                                        "an interrupted run resumes there)")
    release.add_argument("--out", default="", help="folder of the released files (default: release/<profile>)")
    release.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE", dest="settings",
                         help="a training value replacing the params file's for this run (repeatable), e.g. "
                              "train_generator.init_from=data/release/mini-v1; a chain of releases is a few such lines")
    release.add_argument("--export-only", action="store_true",
                         help="skip training: export the products already under --run-dir (\"data\": the study's own)")

    check = commands.add_parser("check", help="list the external files (weights, FLAME, photos) the profile needs "
                                               "and is missing")
    check.add_argument("--profile", choices=PROFILES, help="check this profile's file instead of params.yaml")
    check.add_argument("--stage", help="only the files this pipeline stage and the later ones need")
    return parser


def _check(profile: str | None, stage: str | None) -> None:
    from megafr import preflight

    root = study_root()
    params = load_params(profile_file(profile, root) if profile else root / PARAMS_FILE)
    stages = preflight.stages_from(stage) if stage else None
    found = preflight.check(params, root, stages)
    preflight.report(found, params["profile"])


def _validate(profile: str | None, record: str | None) -> None:
    from megafr import runner, stages

    root = study_root()
    path = profile_file(profile, root) if profile else root / PARAMS_FILE
    if record:
        runner.write_validated(path, record)
    else:
        stages.validate(load_params(path))
    print(f"{path.name}: every stage's values are valid ({', '.join(stages.ORDER)})")


def main(argv: list[str] | None = None) -> int:
    from megafr.runner import StageFailed

    args = _parser().parse_args(argv)
    try:
        if args.command == "profile":
            path = use_profile(args.name)
            print(f"profile {args.name} is active ({path}); run `dvc repro` to rebuild what changed")
        elif args.command == "validate":
            _validate(args.profile, args.record)
        elif args.command == "run":
            from megafr.runner import run_stage

            print(f"wrote {run_stage(args.stage)}")
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
            from megafr.reenact.cli import FaceChoiceWarning, reenact_files
            from megafr.reenact.inference import PTI_STEPS

            if args.refine_steps < 0:
                raise MegaFRError(f"--refine-steps must be >= 0, got {args.refine_steps}")
            if args.relative and args.driving is None:
                raise MegaFRError("--relative needs --driving (it applies the change from the clip's first frame)")
            pti_steps = PTI_STEPS if args.pti else 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FaceChoiceWarning)
                if args.driving is not None:
                    from megafr.reenact.drive import drive_files

                    report = drive_files(args.source, args.driving, args.out, drive_args.drive_config(args, pti_steps))
                elif args.paste_back:
                    from megafr.reenact.drive import still_files

                    path = still_files(args.source, args.target, args.out, drive_args.drive_config(args, pti_steps))
                else:
                    path = reenact_files(args.source, args.target, args.out, args.refine_steps, pti_steps,
                                         args.largest_face)
            for warning in caught:
                if issubclass(warning.category, FaceChoiceWarning):
                    print(f"warning: {warning.message}", file=sys.stderr)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
            print("\n".join(report.lines()) if args.driving is not None else f"wrote {path}")
        elif args.command == "release":
            from megafr import release

            settings = release.parse_settings(args.settings)
            run_dir = args.run_dir if args.export_only else release.train(args.params, args.run_dir, settings=settings)
            record = release.export(args.params, run_dir, args.out, settings)
            print(release.describe(record))
        elif args.command == "check":
            _check(args.profile, args.stage)
    except MegaFRError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except StageFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR if error.user_error else EXIT_STAGE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
