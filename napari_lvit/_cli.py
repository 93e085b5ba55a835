"""The ``napari-lvit`` console script: the library's commands plus the ones that open napari."""

from __future__ import annotations

import sys
from pathlib import Path

from src_models import cli


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="napari with a synthetic chest X-ray and the default model")
    p.add_argument("--model", default="default", help="checkpoint file, 'default' or registry name")
    p.add_argument("--no-run", action="store_true", help="set up, segment once and return")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the viewer")
    p.add_argument(
        "--no-click",
        action="store_true",
        help="show the text's proposal only (no click on the lesion the report does not name)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from src_models.cli._checks import check_model_source

    check_model_source(args.model)  # before napari opens
    from napari_lvit._demo import run_demo

    run_demo(
        model=args.model,
        block=not args.no_run,
        screenshot=args.screenshot,
        click=not args.no_click,
    )
    return 0


def _add_annotate(sub) -> None:
    p = sub.add_parser(
        "annotate",
        help="napari with the annotation loop: segment, correct, commit, retrain, next",
    )
    p.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="a project, an LViT folder (imported) or a folder of images (a project is "
        "created in <folder>/.napari-lvit)",
    )
    p.add_argument("--project", type=Path, help="where the project of a folder lives")
    p.add_argument("--model", default=None, help="checkpoint file, 'default' or registry name")
    p.set_defaults(func=_cmd_annotate)


def _cmd_annotate(args) -> int:
    from src_models.cli._checks import check_model_source
    from src_models.errors import UserError

    # What can be checked without a window is checked before napari opens.
    what = "a project, an LViT split folder or a folder of images"
    if args.path is not None and not args.path.exists():
        raise UserError(f"{args.path} does not exist", hint=f"give {what}")
    if args.path is not None and not args.path.is_dir():
        raise UserError(f"{args.path} is a file, not a folder", hint=f"give {what}")
    if args.project is not None and args.project.exists() and not args.project.is_dir():
        raise UserError(f"--project {args.project} is a file", hint="give a folder")
    if args.model is not None:
        check_model_source(args.model)
    from napari_lvit._annotate import run_annotate

    run_annotate(args.path, project=args.project, model=args.model)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, extra_commands=(_add_demo, _add_annotate))


if __name__ == "__main__":
    sys.exit(main())
