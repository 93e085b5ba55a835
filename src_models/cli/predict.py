"""``napari-lvit predict``, ``evaluate`` and ``models``."""

from __future__ import annotations

import json
from pathlib import Path


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment one image from a text")
    p.add_argument("checkpoint", help="checkpoint file or 'default'")
    p.add_argument("image", type=Path)
    p.add_argument("--text", default=None)
    p.add_argument("--out", type=Path, required=True, help="mask file (.tif or .png)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--prob-out", type=Path, help="also write the probability map (.tif)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice and IoU of a checkpoint on a labelled folder")
    p.add_argument("checkpoint", help="checkpoint file or 'default'")
    p.add_argument("data", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON (dice, iou, n, per_image)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-text", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)


def cmd_predict(args) -> int:
    import numpy as np

    from src_models.data.io import read_image, write_mask
    from src_models.inference import Predictor

    predictor = Predictor(args.checkpoint, device=args.device)
    image = read_image(args.image)
    if image.ndim == 3 and image.shape[-1] not in (3, 4):
        raise ValueError(f"{args.image} is a volume of shape {image.shape}: give a 2D image")
    result = predictor.predict(image, args.text, threshold=args.threshold)
    write_mask(args.out, result.mask)
    if args.prob_out:
        import tifffile

        tifffile.imwrite(args.prob_out, result.prob.astype(np.float32))
    print(f"wrote {args.out}: {100 * result.mask.mean():.2f}% of the image")
    return 0


def cmd_evaluate(args) -> int:
    from src_models.data.dataset import SegmentationDataset
    from src_models.engine.evaluate import evaluate
    from src_models.inference import load_model
    from src_models.text import TextEncoder

    model, meta = load_model(args.checkpoint)
    use_text = bool(model.uses_text) and not args.no_text and meta.get("text_encoder")
    encoder = TextEncoder(meta["text_encoder"]) if use_text else None
    dataset = SegmentationDataset(args.data, int(model.img_size))
    result = evaluate(model, dataset, text_encoder=encoder, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Dice {result['dice']:.4f}  IoU {result['iou']:.4f}  n={result['n']}")
    return 0


def cmd_models(args) -> int:
    from src_models.models import list_models

    print("\n".join(list_models()))
    return 0
