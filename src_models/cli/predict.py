"""``napari-lvit predict``, ``evaluate`` and ``models``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from src_models.cli._checks import add_mask_threshold, check_output, positive_int, probability
from src_models.inference_checks import MAX_PIXELS, memory_text


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment one image (--out FILE), or many images and volumes (--out-dir DIR)",
    )
    p.add_argument("checkpoint", help="checkpoint file or 'default'")
    p.add_argument(
        "image",
        type=Path,
        nargs="+",
        help="an image; with --out-dir: image files, folders (every image in them), volumes, "
        "DICOM series (a folder of one series)",
    )
    p.add_argument("--text", default=None, help="the description (with --out-dir: of every image)")
    p.add_argument("--out", type=Path, help="mask file (.tif or .png) of the one image")
    p.add_argument(
        "--out-dir",
        type=Path,
        help="batch mode: a mask per image (.png, .tif for TIFF), a .nii.gz per volume; "
        "outputs already there are skipped (rerun to resume)",
    )
    p.add_argument(
        "--texts",
        type=Path,
        help="with --out-dir: a table (.csv/.xlsx, columns Image, Description) of per-image "
        "texts; --text is used for the images it does not name",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="model inputs per batch (default 8)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help="loader processes reading images (default 0)"
    )
    p.add_argument(
        "--threshold", type=probability, default=None, help="0 to 1 (default: the checkpoint's)"
    )
    p.add_argument("--prob-out", type=Path, help="also write the probability map (.tif)")
    p.add_argument(
        "--window",
        type=_window,
        default=None,
        help="CT window for images stored as HU: lung, mediastinum, soft tissue, bone, brain or "
        "LEVEL,WIDTH (e.g. --window=-600,1500; default: the checkpoint's, else min-max)",
    )
    p.add_argument(
        "--click",
        type=_click,
        action="append",
        default=[],
        metavar="Y,X",
        help="a click at row Y, column X of the image (pixels) that adds to the mask; "
        "--click=-Y,X removes (repeat for more clicks; models trained with `train --clicks`)",
    )
    p.add_argument(
        "--box",
        type=_box,
        default=None,
        metavar="Y0,X0,Y1,X1",
        help="a box around the object (pixels: top, left, bottom, right)",
    )
    p.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="the mask being corrected (.png/.tif, the image's size): the clicks fix it",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        help=f"refuse larger images (H x W pixels; default {MAX_PIXELS}, "
        f"{memory_text(MAX_PIXELS)} of memory to segment)",
    )
    p.set_defaults(func=cmd_predict)


def _numbers(value: str, n: int, what: str) -> list[float]:
    parts = value.split(",")
    try:
        numbers = [float(v) for v in parts]
    except ValueError:
        numbers = []
    if len(numbers) != n or not all(abs(v) < float("inf") for v in numbers):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return numbers


def _click(value: str) -> tuple[float, float, int]:
    """``"Y,X"`` -> ``(Y, X, +1)``; ``"-Y,X"`` -> ``(Y, X, -1)`` (a click that removes)."""
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    y, x = _numbers(text.lstrip("+-"), 2, "Y,X (pixels; -Y,X for a click that removes)")
    if y < 0 or x < 0:
        raise argparse.ArgumentTypeError(f"a click's Y and X are pixel positions, got {value!r}")
    return y, x, sign


def _box(value: str) -> tuple[float, float, float, float]:
    y0, x0, y1, x1 = _numbers(value, 4, "Y0,X0,Y1,X1 (pixels: top, left, bottom, right)")
    return y0, x0, y1, x1


def _window(value: str):
    from src_models.data.windows import as_window

    try:
        return as_window(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice and IoU of a checkpoint on a labelled folder")
    p.add_argument("checkpoint", help="checkpoint file or 'default'")
    p.add_argument("data", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON (dice, iou, n, per_image)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-text", action="store_true", help="run a text model without text")
    add_mask_threshold(p)
    p.set_defaults(func=cmd_evaluate)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)


def cmd_predict(args) -> int:
    from src_models.data.io import read_image, write_mask, write_prob
    from src_models.data.windows import input_range
    from src_models.errors import UserError
    from src_models.inference import Predictor
    from src_models.model_source import resolve_checkpoint

    prompted = bool(args.click or args.box is not None or args.previous is not None)
    if args.out_dir is not None:
        if prompted:
            raise UserError(
                "--click, --box and --previous are for one image",
                hint="give --out FILE instead of --out-dir",
            )
        return _cmd_predict_batch(args)
    if args.out is None:
        raise UserError(
            "give --out FILE for one image, or --out-dir DIR for a batch",
            hint="see 'napari-lvit predict --help'",
        )
    if len(args.image) > 1:
        raise UserError(
            f"{len(args.image)} inputs were given with --out: one image per --out file",
            hint="use --out-dir DIR to segment several images",
        )
    if args.texts is not None:
        raise UserError("--texts is for batches", hint="use --out-dir DIR, or --text")
    args.image = args.image[0]
    # Everything that can be checked without the model is checked first, in a second.
    _check_predict_image(args.image, args.max_pixels)
    checkpoint = resolve_checkpoint(args.checkpoint)
    if checkpoint is not None:
        _check_prompted(checkpoint, prompted)
        if not prompted or args.text is not None:  # clicks alone need no text
            _check_text(checkpoint, args.text)
    uses = {"the image": args.image, "the checkpoint": checkpoint, "--previous": args.previous}
    check_output(args.out, "--out", (".png", ".tif", ".tiff"), uses)
    if args.prob_out:
        uses["the --out file"] = args.out
        check_output(args.prob_out, "--prob-out", (".tif", ".tiff"), uses)
    image = read_image(args.image, max_pixels=args.max_pixels)
    if args.window is not None and input_range(image, args.window) is None:
        raise UserError(
            f"--window: {args.image} is not stored as HU ({image.dtype}"
            f"{', colour' if image.ndim == 3 and image.shape[-1] != 1 else ''}): a CT window "
            "applies to grayscale images of more than 8 bits",
            hint="leave --window out for this image",
        )
    predictor = Predictor(args.checkpoint, device=args.device, window=args.window)
    predictor.max_pixels = args.max_pixels
    previous = None
    if args.previous is not None:
        from src_models.cli._checks import check_read_file

        previous = read_image(check_read_file(args.previous, "--previous", "a mask image"))
        if previous.ndim == 3:
            previous = previous[..., 0]
        previous = previous > 0
    result = predictor.predict(
        image,
        args.text,
        threshold=args.threshold,
        clicks=args.click or None,
        box=args.box,
        previous=previous,
    )
    if args.prob_out:
        write_prob(args.prob_out, result.prob)
    write_mask(args.out, result.mask)
    print(f"wrote {args.out}: {100 * result.mask.mean():.2f}% of the image")
    return 0


def _cmd_predict_batch(args) -> int:
    from src_models.batch import plan_batch, predict_batch
    from src_models.data.tables import read_text_table
    from src_models.engine.checkpoint import read_checkpoint_meta
    from src_models.engine.distributed import Distributed
    from src_models.errors import UserError
    from src_models.inference import Predictor
    from src_models.model_source import resolve_checkpoint

    if args.out is not None or args.prob_out is not None:
        raise UserError(
            "--out and --prob-out name the file of one image; --out-dir is for batches",
            hint="give one of --out FILE and --out-dir DIR",
        )
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    checkpoint = resolve_checkpoint(args.checkpoint)
    needs_text = bool(checkpoint is not None and read_checkpoint_meta(checkpoint).get("uses_text"))
    texts = None
    if args.texts is not None:
        from src_models.cli._checks import check_read_file

        texts = read_text_table(check_read_file(args.texts, "--texts", "a CSV or XLSX table"))
    items = plan_batch(
        args.image,
        args.out_dir,
        text=args.text,
        texts=texts,
        needs_text=needs_text,
        max_pixels=args.max_pixels,
    )
    for item in items:  # the model and the table are inputs too
        check_output(
            item.output,
            "--out-dir",
            (".png", ".tif", ".tiff", ".nii.gz"),
            {"the checkpoint": checkpoint, "the --texts table": args.texts},
        )
    # under torchrun every rank runs this with its share of the items (its own GPU)
    dist = Distributed()
    device = dist.setup(args.device)
    try:
        predictor = Predictor(args.checkpoint, device=device, window=args.window)
        predictor.max_pixels = args.max_pixels
        if predictor.uses_text and not needs_text:  # a registry name: checked now it is here
            plan = {"text": args.text, "texts": texts, "max_pixels": args.max_pixels}
            items = plan_batch(args.image, args.out_dir, needs_text=True, **plan)
        run = {"batch_size": args.batch_size, "workers": args.workers, "threshold": args.threshold}
        with dist.failures():
            events = predict_batch(predictor, items, dist=dist, **run)
            finished = _run_predict_batch(events, dist, args.out_dir)
    finally:
        dist.teardown(synchronize=False)
    if dist.is_main:
        print(f"wrote {finished.written} mask(s) to {args.out_dir}")
    return 0


def _run_predict_batch(events, dist, out_dir):
    """Consume the batch's events; rank 0 draws the bar (its own share's slices). Returns the
    ``BatchFinished``."""
    from tqdm import tqdm

    from src_models.batch import BatchFinished, BatchPlanned, SlicesDone

    bar = None
    for event in events:
        if isinstance(event, BatchPlanned) and dist.is_main:
            if event.skipped:
                print(f"{event.skipped} of {event.items} already segmented in {out_dir}")
            bar = tqdm(total=event.slices, unit="slice", desc="predict", dynamic_ncols=True)
        elif isinstance(event, SlicesDone) and bar is not None:
            bar.total = event.total  # this rank's share
            bar.update(event.done - bar.n)
        elif isinstance(event, BatchFinished):
            if bar is not None:
                bar.close()
            return event
    raise RuntimeError("the batch ended without a BatchFinished event")


def _check_predict_image(path: Path, max_pixels: int) -> None:
    """From the file's header only: a 2D image of at most ``max_pixels`` pixels."""
    from src_models.data.io import probe_image
    from src_models.errors import UserError

    shape, _ = probe_image(path, max_pixels=None)
    if len(shape) != 2:
        raise UserError(
            f"{path} is a volume of shape {tuple(shape)}: give a 2D image",
            hint="save the slice to segment as its own file, or open the volume in napari",
        )
    n = int(shape[0]) * int(shape[1])
    if n > max_pixels:
        raise UserError(
            f"Cannot segment '{path}': it has {n} pixels ({shape[0]} x {shape[1]}), more than "
            f"predict's limit of {max_pixels} ({memory_text(n)} of memory to segment it)",
            hint=f"crop or downscale it, or pass --max-pixels {n} to try anyway",
        )


def _check_prompted(checkpoint: Path, prompted: bool) -> None:
    """Clicks need a checkpoint whose model reads prompts (checked from its header)."""
    from src_models.engine.checkpoint import read_checkpoint_meta
    from src_models.errors import UserError

    if prompted and not read_checkpoint_meta(checkpoint).get("reads_prompts"):
        raise UserError(
            f"the model in {checkpoint} reads no clicks or boxes",
            hint="use a checkpoint trained with `napari-lvit train --clicks`",
        )


def _check_text(checkpoint: Path, text: str | None) -> None:
    """A checkpoint whose model reads text needs a usable ``--text`` (checked from its header)."""
    from src_models.engine.checkpoint import read_checkpoint_meta
    from src_models.errors import UserError
    from src_models.text import validate_text

    if not read_checkpoint_meta(checkpoint).get("uses_text"):
        return
    if text is None or not text.strip():
        raise UserError(
            f"the model in {checkpoint} reads text, and no --text was given",
            hint='describe the image, e.g. --text "Lesion in the lower left lung."',
        )
    validate_text(text)


def cmd_evaluate(args) -> int:
    from src_models.data.dataset import SegmentationDataset
    from src_models.engine.evaluate import evaluate, evaluate_full_size
    from src_models.inference import Predictor

    # (a checkpoint trained with --no-text says so: its model is loaded with uses_text False)
    predictor = Predictor(args.checkpoint, device=args.device, use_text=not args.no_text)
    dataset = SegmentationDataset(args.data, predictor.img_size, mask_threshold=args.mask_threshold)
    if predictor.resolution is not None:
        # trained on patches: score full-size images through the same tiled path as predict
        result = evaluate_full_size(predictor, dataset)
    else:
        result = evaluate(
            predictor.model,
            dataset,
            text_encoder=predictor.text_encoder,
            use_text=predictor.uses_text,
            device=args.device,
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Dice {result['dice']:.4f}  IoU {result['iou']:.4f}  n={result['n']}")
    return 0


def cmd_models(args) -> int:
    from src_models.models import list_models

    print("\n".join(list_models()))
    return 0
