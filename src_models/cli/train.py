"""``napari-lvit train`` (supervised, EPI semi-supervised, CLCC, SKS) and ``pretrain``."""

from __future__ import annotations

from pathlib import Path

from src_models.cli._checks import add_mask_threshold, check_new_checkpoint


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
    add_mask_threshold(p)
    p.add_argument("--text-encoder", default="default", help="'default' or a local HF folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="train in bf16 mixed precision on a CPU with bf16 instructions (AVX512-BF16, AMX): "
        "about 0.6x the float32 step time there; ignored on other CPUs and on CUDA",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model for training (its first steps compile, for minutes)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="loader processes reading and augmenting images (default 0: in the training "
        "process); on a GPU, a few keep it busy",
    )
    p.add_argument(
        "--resume",
        help="checkpoint to continue from ('default': the shipped model); one without its "
        "training state (.train_state.pt) starts a new run from its weights (fine-tuning)",
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--clicks",
        type=int,
        default=0,
        metavar="N",
        help="train the model to take clicks, a box and the previous mask too: up to N "
        "simulated correction clicks per batch (3 is usual; 0: no clicks). A model without "
        "prompt inputs gets them (starting at zero: it keeps what it predicted before)",
    )
    p.add_argument(
        "--init",
        type=Path,
        help="start from the image-encoder weights of this checkpoint (e.g. `napari-lvit "
        "pretrain`); the rest of the model starts fresh",
    )
    few = p.add_argument_group("fewer labels (CLCC, SKS image-level labels)")
    _add_clcc_options(few)
    few.add_argument(
        "--clcc-images", type=int, default=2, help="images per batch run as CLCC patches"
    )
    few.add_argument(
        "--sks-epochs",
        type=int,
        default=10,
        help="SKS models (sks_*): stage-1 classifier epochs on the image-level labels (the "
        "table's Label column, empty masks); 0 skips stage 1",
    )
    semi = p.add_argument_group("semi-supervised (EPI pseudo labels + LV loss)")
    semi.add_argument(
        "--labeled-fraction",
        type=float,
        default=1.0,
        help="use the masks of only this fraction of DATA (chosen by --seed); the other images "
        "are left out (--semi none) or used without their masks (--semi epi)",
    )
    semi.add_argument(
        "--semi",
        choices=["none", "epi"],
        default="none",
        help="epi: round 0 on the labeled images, then --rounds EPI rounds that also train on "
        "the images without a mask (pseudo labels)",
    )
    semi.add_argument("--rounds", type=int, default=3, help="EPI rounds after round 0")
    semi.add_argument(
        "--round-epochs", type=int, default=None, help="epochs per EPI round (default --epochs)"
    )
    semi.add_argument("--lv-weight", type=float, default=0.1, help="LV loss weight (0: off)")
    semi.add_argument("--beta", type=float, default=0.99, help="EPI momentum")
    semi.add_argument(
        "--epi-schedule",
        choices=["corrected", "plain"],
        default="corrected",
        help="corrected: bias-corrected EMA (a running mean over the first rounds)",
    )
    semi.add_argument("--unlabeled-weight", type=float, default=0.5)
    semi.add_argument(
        "--margin", type=float, default=0.1, help="ignore pixels with |pseudo - 0.5| < margin"
    )
    semi.add_argument(
        "--templates", type=Path, help="LV reference (text, mask) pairs, LViT folder layout"
    )
    semi.add_argument(
        "--pseudo-dir", type=Path, help="pseudo-label folder (default: <out>.pseudo/)"
    )
    p.set_defaults(func=cmd_train)


def _add_clcc_options(parser) -> None:
    """``--clcc`` and ``--clcc-grid`` of ``train`` (``retrain`` has them from RetrainConfig)."""
    parser.add_argument(
        "--clcc",
        action="store_true",
        help="add CLCC's cross-level contrast (first third) and patch consistency (after); "
        "uses the images without masks too, with or without EPI",
    )
    parser.add_argument("--clcc-grid", type=int, default=2, help="CLCC grid side n (n x n patches)")


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a model's image encoder on unlabeled images (Barlow Twins + image-text "
        "InfoNCE, GTGM-style)",
    )
    p.add_argument(
        "data", type=Path, help="LViT split folder, folder of images/volumes, or one volume"
    )
    p.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    p.add_argument("--model", default="lvit_s", help="registry name of the model to pretrain")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=None, help="default: the model's own")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bt-weight", type=float, default=0.01, help="Barlow Twins term weight")
    p.add_argument("--nce-weight", type=float, default=1.0, help="image-text InfoNCE weight")
    p.add_argument("--no-text", action="store_true", help="Barlow Twins only")
    p.add_argument("--text-encoder", default="default", help="'default' or a local HF folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_pretrain)


def cmd_train(args) -> int:
    from src_models.engine.recipe import build_trainer, no_lesion_names, sks_stage1
    from src_models.engine.sks import image_labels
    from src_models.model_source import open_model
    from src_models.text import TextEncoder

    if args.init is not None and args.resume:
        raise ValueError("--init and --resume exclude each other")
    if args.clicks < 0:
        raise ValueError(f"--clicks must be >= 0, got {args.clicks}")
    check_new_checkpoint(args.out, uses={"the --init checkpoint": args.init})
    encoder = None if args.no_text else TextEncoder(args.text_encoder)
    if args.resume:
        from src_models.engine.checkpoint import CheckpointError, resolve_resume

        opened = open_model(args.resume, kinds=("checkpoint",))
        try:
            if not _semi_run_state(args, opened.checkpoint):  # an EPI run resumes its rounds
                resolve_resume(opened.checkpoint)
            args.resume = opened.checkpoint
        except CheckpointError:
            print(
                f"{opened.checkpoint} has no training state: fine-tuning a new run from its weights"
            )
            args.resume = None
    else:
        opened = open_model(
            args.model, text_encoder=encoder, img_size=args.img_size, kinds=("registry",)
        )
    model = opened.model
    if args.clicks:
        from src_models.models.prompts import add_prompt_inputs

        add_prompt_inputs(model)
    if args.init is not None:
        from src_models.engine.pretrain import load_pretrained_encoder

        info = load_pretrained_encoder(model, args.init)
        print(f"--init: loaded {info['loaded']}/{info['total']} encoder tensors from {args.init}")
    train_set, val_set = _train_datasets(args, int(model.img_size))
    recipe = _train_recipe(args)
    labels = image_labels(train_set)
    for epoch in sks_stage1(model, train_set, recipe, labels):
        if epoch.epoch == 1:
            known, n_neg = int((labels >= 0).sum()), int((labels == 0).sum())
            print(f"SKS stage 1: classifier on {known} image-level labels ({n_neg} no lesion)")
        print(
            f"  classifier epoch {epoch.epoch}/{recipe.classifier.epochs}: BCE {epoch.loss:.4f}, "
            f"accuracy {epoch.accuracy:.3f}"
        )
    if recipe.semi is not None:
        if args.resume is not None and Path(args.resume).resolve() != Path(args.out).resolve():
            raise ValueError("with --semi epi, --resume must name the run's --out checkpoint")
        trainer = build_trainer(
            model,
            train_set,
            val_set,
            encoder,
            recipe,
            no_lesion=no_lesion_names(train_set, labels),
            templates=args.templates,
            resume=args.resume,
        )
        return _fit_semi(trainer)
    trainer = build_trainer(model, train_set, val_set, encoder, recipe, resume=args.resume)
    return _fit(trainer, steps=-(-len(train_set) // args.batch_size) * args.epochs)


def _semi_run_state(args, checkpoint) -> bool:
    """With ``--semi epi``: does ``checkpoint`` (the run's ``--out``) have the state file of
    its rounds (``<stem>.semi.json``), from which the run continues?"""
    if args.semi != "epi" or checkpoint is None:
        return False
    from src_models.engine.semi.run import RunFiles

    state = RunFiles(checkpoint).state_path()
    return state is not None and state.is_file()


def _train_datasets(args, size: int):
    """``train``'s training set (with ``--labeled-fraction``, EPI or CLCC: the images without
    their masks too) and validation set."""
    from src_models.data.dataset import SegmentationDataset

    if not 0.0 < args.labeled_fraction <= 1.0:
        raise ValueError(f"--labeled-fraction must be in (0, 1], got {args.labeled_fraction}")
    augment = not args.no_augment
    mt = args.mask_threshold
    use_unlabeled = args.semi == "epi" or args.clcc
    if use_unlabeled or args.labeled_fraction < 1.0:
        from src_models.data.dataset import scan_split
        from src_models.engine.semi import split_labeled

        records = scan_split(args.data, require_masks=not use_unlabeled)
        labeled, unlabeled = split_labeled(records, args.labeled_fraction, seed=args.seed)
        records = labeled + unlabeled if use_unlabeled else labeled
        rest = f", {len(unlabeled)} without masks" if use_unlabeled else None
        print(f"{len(labeled)} labeled images" + (rest or f" ({len(unlabeled)} left out)"))
        train_set = SegmentationDataset(
            records, size, augment=augment, seed=args.seed, require_masks=False, mask_threshold=mt
        )
    else:
        train_set = SegmentationDataset(
            args.data, size, augment=augment, seed=args.seed, mask_threshold=mt
        )
    val_set = SegmentationDataset(args.val, size, mask_threshold=mt) if args.val else None
    return train_set, val_set


def _train_recipe(args):
    """The :class:`~src_models.engine.recipe.TrainingRecipe` of ``train``'s arguments."""
    from src_models.engine.recipe import TrainingRecipe
    from src_models.engine.sks import ClassifierConfig
    from src_models.engine.trainer import TrainConfig

    semi = clcc = classifier = None
    if args.semi == "epi":
        from src_models.engine.semi import SemiConfig

        semi = SemiConfig(
            rounds=args.rounds,
            round0_epochs=args.epochs,
            round_epochs=args.round_epochs,
            beta=args.beta,
            schedule=args.epi_schedule,
            unlabeled_weight=args.unlabeled_weight,
            margin=args.margin,
            lv_weight=args.lv_weight,
            pseudo_dir=None if args.pseudo_dir is None else str(args.pseudo_dir),
        )
    if args.clcc:
        from src_models.engine.clcc import CLCCConfig

        clcc = CLCCConfig(grid=args.clcc_grid, images=args.clcc_images)
    if not args.resume and args.sks_epochs > 0:  # SKS models: stage 1 on image-level labels
        classifier = ClassifierConfig(
            epochs=args.sks_epochs,
            batch_size=max(2, args.batch_size),
            seed=args.seed,
            device=args.device,
        )
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        use_text=not args.no_text,
        cpu_bf16=args.cpu_bf16,
        compile=args.compile,
        num_workers=args.workers,
        clicks=args.clicks,
        out=args.out,
    )
    return TrainingRecipe(train, semi=semi, clcc=clcc, classifier=classifier)


def _fit(trainer, steps: int) -> int:
    """Run a supervised (or CLCC) trainer with a progress bar of ``steps`` steps."""
    from tqdm import tqdm

    from src_models.engine.events import BatchEnd, CheckpointSaved, EpochEnd, ValidationEnd

    bar = tqdm(total=steps, unit="step", dynamic_ncols=True)
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


def _fit_semi(trainer) -> int:
    """``train --semi epi``: rounds of EPI + LV (src_models.engine.semi), printed as they go."""
    from tqdm import tqdm

    from src_models.engine.events import BatchEnd, FitStart
    from src_models.engine.semi import SemiDone, format_semi_event

    bar = None
    done = None
    for event in trainer.fit():
        if isinstance(event, FitStart):
            if bar is not None:
                bar.close()
            total = event.steps_per_epoch * (event.epochs - event.start_epoch + 1)
            bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)
        elif isinstance(event, BatchEnd):
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.4f}")
            continue
        line = format_semi_event(event)
        if bar is not None:
            bar.write(line)
        else:
            print(line)
        done = event
    if bar is not None:
        bar.close()
    if isinstance(done, SemiDone) and done.checkpoint:
        print(f"best checkpoint: {done.checkpoint}; pseudo labels: {done.pseudo_dir}")
    return 0


def cmd_pretrain(args) -> int:
    from src_models.engine.pretrain import PretrainConfig, Pretrainer, pretrain_dataset
    from src_models.models import create_model
    from src_models.text import TextEncoder

    check_new_checkpoint(args.out)
    encoder = None if args.no_text else TextEncoder(args.text_encoder)
    overrides = {} if args.img_size is None else {"img_size": args.img_size}
    probe = create_model(args.model, **overrides)
    if encoder is not None and getattr(probe, "uses_text", False):
        overrides["text_dim"] = encoder.dim
        probe = create_model(args.model, **overrides)
    data = pretrain_dataset(args.data, int(probe.img_size), in_chans=int(probe.in_chans))
    cfg = PretrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        bt_weight=args.bt_weight,
        nce_weight=args.nce_weight,
        seed=args.seed,
        device=args.device,
    )
    pre = Pretrainer(probe, data, encoder, cfg)
    print(f"pretraining {args.model} on {len(data)} images ({pre.n_text} with a text)")
    for epoch in pre.fit():
        print(
            f"epoch {epoch.epoch}/{epoch.epochs}: loss {epoch.loss:.4f} (barlow {epoch.barlow:.4f}"
            f", infonce {epoch.nce:.4f}), {epoch.seconds:.1f} s"
        )
    path = pre.save(args.out)
    if pre.dist.is_main:  # (rank 0 writes it under torchrun)
        print(f"wrote {path}")
    return 0
