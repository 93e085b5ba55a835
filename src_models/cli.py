"""``napari-lvit``: every GUI action has a command-line twin.

    napari-lvit synth OUT --kind qata --n 200 --size 224 --seed 0
    napari-lvit train DATA --val VAL --model lvit_s --epochs 20 --out model.safetensors
    napari-lvit predict CKPT IMAGE --text "..." --out mask.tif
    napari-lvit evaluate CKPT DATA --json

The GUI commands (``demo``, ...) are added by ``napari_lvit._cli``, the console script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in the LViT folder layout")
    p.add_argument("out", type=Path)
    p.add_argument("--kind", choices=["qata", "referring"], default="qata")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on a folder in the LViT layout")
    p.add_argument("data", type=Path, help="training split folder (img/, labelcol/, text table)")
    p.add_argument("--val", type=Path, help="validation split folder")
    p.add_argument("--model", default="lvit_s", help="registry name (see `napari-lvit models`)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--img-size", type=int, default=None, help="default: the model's own")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    p.add_argument("--no-text", action="store_true", help="train the same model without text")
    p.add_argument("--text-encoder", default="default", help="'default' or a local HF folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", type=Path, help="checkpoint to continue from")
    p.add_argument("--no-augment", action="store_true")
    p.set_defaults(func=cmd_train)


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


COMMANDS = (_add_synth, _add_train, _add_predict, _add_evaluate, _add_models)


def build_parser(extra_commands: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    """The parser; ``extra_commands`` add subcommands (the napari side adds its GUI ones)."""
    parser = argparse.ArgumentParser(prog="napari-lvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (*COMMANDS, *extra_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None, extra_commands: Sequence[Callable] = ()) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser(extra_commands).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"napari-lvit {args.command}: error: {exc}", file=sys.stderr)
        return 2


# --- commands ------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from src_models.data.synthetic import write_dataset

    out = write_dataset(args.out, kind=args.kind, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {args.n} {args.kind} samples to {out}")
    return 0


def cmd_models(args) -> int:
    from src_models.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_train(args) -> int:
    from tqdm import tqdm

    from src_models.data.dataset import SegmentationDataset
    from src_models.engine.checkpoint import load_checkpoint
    from src_models.engine.events import BatchEnd, CheckpointSaved, EpochEnd, ValidationEnd
    from src_models.engine.trainer import TrainConfig, Trainer
    from src_models.models import create_model
    from src_models.text import TextEncoder

    encoder = None if args.no_text else TextEncoder(args.text_encoder)
    if args.resume:
        model, _ = load_checkpoint(args.resume)
    else:
        overrides = {} if args.img_size is None else {"img_size": args.img_size}
        if encoder is not None:
            overrides["text_dim"] = encoder.dim
        model = create_model(args.model, **overrides)
    size = int(model.img_size)
    train_set = SegmentationDataset(args.data, size, augment=not args.no_augment, seed=args.seed)
    val_set = SegmentationDataset(args.val, size) if args.val else None
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        use_text=not args.no_text,
        out=args.out,
    )
    trainer = Trainer(
        model, train_set, val_set, text_encoder=encoder, config=config, resume=args.resume
    )
    steps = -(-len(train_set) // args.batch_size)
    bar = tqdm(total=steps * args.epochs, unit="step", dynamic_ncols=True)
    done = None
    for event in trainer.fit():
        if isinstance(event, BatchEnd):
            bar.update(1)
            bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.4f}")
        elif isinstance(event, EpochEnd):
            bar.write(f"epoch {event.epoch}: train loss {event.train_loss:.4f}")
        elif isinstance(event, ValidationEnd):
            bar.write(f"epoch {event.epoch}: val Dice {event.dice:.4f} IoU {event.iou:.4f}")
        elif isinstance(event, CheckpointSaved):
            bar.write(f"saved {event.path}")
        done = event
    bar.close()
    print(f"done: {done}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
