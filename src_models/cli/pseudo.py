"""``napari-lvit pseudo PROJECT [--export DIR] [--accept-above CONFIDENCE] [--undo]``: EPI's
pseudo labels of a project's unlabelled images, the annotation widget's pseudo-label panel
without the GUI.

Lists each pseudo label, most likely right first (the widget's "Review next" order): its
rounds, its confidence (the share of pixels with ``|p - 0.5| > 0.4``) and how far its last
round moved it. ``--export`` writes every cut (PNG), its probabilities (float32 TIFF) and a
CSV; ``--accept-above`` commits those at least that confident as their images' labels (commit
kind ``accepted_pseudo``: the next retraining trains on them); ``--undo`` puts back the
pseudo labels the last round replaced. Export and undo come before accepting.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cmd_pseudo"]


def _add_pseudo(sub) -> None:
    p = sub.add_parser(
        "pseudo",
        help="list, export or accept a project's EPI pseudo labels",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("project", type=Path, help="project folder (holds project.sqlite)")
    p.add_argument("--export", type=Path, metavar="DIR", help="write the pseudo labels here")
    p.add_argument(
        "--accept-above",
        type=float,
        metavar="CONFIDENCE",
        help="accept every pseudo label at least this confident (0 to 1) as its image's label",
    )
    p.add_argument(
        "--undo", action="store_true", help="put back the pseudo labels the last round replaced"
    )
    p.set_defaults(func=cmd_pseudo)


def cmd_pseudo(args) -> int:
    from src_models.project import Project
    from src_models.project.pseudo_review import (
        PseudoLabelError,
        PseudoReview,
        accept_above,
        export_pseudo_labels,
        review_order,
        undo_last_round,
    )

    if args.accept_above is not None and not 0.0 <= args.accept_above <= 1.0:
        raise PseudoLabelError(
            f"--accept-above: a confidence is from 0 to 1, not {args.accept_above:g}"
        )
    with Project.open(args.project) as project:
        if args.undo:
            changed = undo_last_round(project)
            print(f"put back the previous pseudo labels of {len(changed)} sample(s)")
        review = PseudoReview(project)
        summaries = review_order(review.summaries())
        if review.bank is None or not summaries:
            print(
                "no pseudo labels yet: a retraining round with EPI makes them for the "
                "unlabelled images that have a description"
            )
            return 0
        print(
            f"{len(summaries)} pseudo label(s) after {review.rounds} EPI round(s), cut at "
            f"{review.threshold:g}; most likely right first:"
        )
        width = max(len(s.key) for s in summaries)
        for s in summaries:
            print(f"  {s.key:<{width}}  {s.text()}")
        if args.export is not None:
            table = export_pseudo_labels(review, args.export)
            print(f"exported {len(summaries)} pseudo label(s) to {table.parent} ({table.name})")
        if args.accept_above is not None:
            commits = accept_above(project, args.accept_above)
            names = ", ".join(project.image(c.image_id).name for c in commits)
            print(
                f"accepted {len(commits)} pseudo labels with confidence >= "
                f"{args.accept_above:g} as labels (kind accepted_pseudo)"
                + (f": {names}" if names else "")
            )
    return 0
