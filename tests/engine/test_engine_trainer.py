import math
import threading
import time

import pytest
import torch
from torch import nn

from src_models.data import SegmentationDataset
from src_models.data.synthetic import write_dataset
from src_models.engine import (
    BatchEnd,
    Callback,
    CheckpointSaved,
    EpochEnd,
    FitStart,
    TrainConfig,
    Trainer,
    TrainingDone,
    ValidationEnd,
    evaluate,
    format_event,
    load_checkpoint,
    read_checkpoint_meta,
)
from src_models.models import create_model

SIZE = 64


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    train = write_dataset(root / "train", kind="qata", n=16, size=SIZE, seed=0)
    val = write_dataset(root / "val", kind="qata", n=8, size=SIZE, seed=1)
    return train, val


def _datasets(splits, augment=False):
    train, val = splits
    return (
        SegmentationDataset(train, img_size=SIZE, augment=augment, seed=0),
        SegmentationDataset(val, img_size=SIZE),
    )


def _model(name="lvit_tiny", seed=0):
    torch.manual_seed(seed)
    return create_model(name)


class Constant(nn.Module):
    """A trivial predictor: the same logit everywhere."""

    uses_text = False
    text_dim = None
    img_size = SIZE
    in_chans = 3

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, image, text=None, text_mask=None):
        return torch.full_like(image[:, :1], self.logit) + 0 * self.anchor


def test_short_training_learns_and_beats_trivial_predictors(splits, fake_encoder, tmp_path):
    train_set, val_set = _datasets(splits)
    out = tmp_path / "run" / "model.safetensors"
    cfg = TrainConfig(epochs=8, lr=3e-3, min_lr=1e-3, device="cpu", seed=0, out=out, log_every=4)
    trainer = Trainer(_model(), train_set, val_set, fake_encoder, cfg)
    events = list(trainer.fit())

    assert isinstance(events[0], FitStart) and events[0].steps_per_epoch == 8
    done = events[-1]
    assert isinstance(done, TrainingDone) and not done.cancelled and done.epochs_run == 8
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    vals = [e for e in events if isinstance(e, ValidationEnd)]
    assert len(epochs) == len(vals) == 8
    assert epochs[-1].train_loss < 0.75 * epochs[0].train_loss, [e.train_loss for e in epochs]
    assert all(set(e.losses) == {"dice", "bce"} for e in events if isinstance(e, BatchEnd))
    assert all(format_event(e) for e in events)

    all_bg = evaluate(Constant(-10.0), val_set, device="cpu")
    all_fg = evaluate(Constant(10.0), val_set, device="cpu")
    best = done.best_dice
    assert best == max(v.dice for v in vals)
    assert best > all_bg["dice"] + 0.1 and best > all_fg["dice"] + 0.1, (best, all_bg, all_fg)

    # the best checkpoint rebuilds a model that scores the best Dice again
    assert done.checkpoint == str(out)
    model, meta = load_checkpoint(out)
    assert meta["text_encoder"] == fake_encoder.id
    assert meta["training"]["epoch"] == done.best_epoch
    assert meta["training"]["metrics"]["dice"] == pytest.approx(best)
    again = evaluate(model, val_set, fake_encoder, device="cpu")
    assert again["dice"] == pytest.approx(best, abs=1e-9) and again["n"] == 8
    assert len(again["per_image"]) == 8 and {"name", "dice", "iou"} <= set(again["per_image"][0])
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert {e.kind for e in saved} == {"best", "last"}
    last_meta = read_checkpoint_meta(out.with_name("model.last.safetensors"))
    assert last_meta["training"]["epoch"] == 8 and len(last_meta["training"]["history"]) == 8

    # texts were encoded once per distinct text, not once per batch
    assert fake_encoder.encoded == len(set(train_set.texts) | set(val_set.texts))


def _train(splits, encoder, out, epochs, resume=None):
    train_set, val_set = _datasets(splits, augment=True)
    cfg = TrainConfig(epochs=epochs, batch_size=4, device="cpu", seed=7, out=out)
    # a resumed run starts from other random weights: the checkpoint must replace them
    model = _model(seed=0 if resume is None else 99)
    trainer = Trainer(model, train_set, val_set, encoder, cfg, resume=resume)
    done = trainer.run()
    return trainer, done


def test_resume_is_exact(splits, fake_encoder, tmp_path):
    straight, _ = _train(splits, fake_encoder, tmp_path / "a" / "m.safetensors", epochs=2)

    first, done1 = _train(splits, fake_encoder, tmp_path / "b" / "m.safetensors", epochs=1)
    assert done1.last_epoch == 1
    resumed, done2 = _train(
        splits,
        fake_encoder,
        tmp_path / "b" / "m.safetensors",
        2,
        resume=tmp_path / "b" / "m.safetensors",
    )
    assert done2.epochs_run == 1 and done2.last_epoch == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.global_step == resumed.global_step

    def no_times(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert no_times(straight.history) == no_times(resumed.history)
    assert straight.best_dice == resumed.best_dice


def test_cancel_stops_at_the_next_event(splits, fake_encoder, tmp_path):
    train_set, val_set = _datasets(splits)
    out = tmp_path / "m.safetensors"
    trainer = Trainer(_model(), train_set, val_set, fake_encoder, TrainConfig(epochs=3, out=out))
    events = []
    for event in trainer.fit():
        events.append(event)
        if isinstance(event, BatchEnd):
            trainer.cancel()
    assert [type(e) for e in events] == [FitStart, BatchEnd, TrainingDone]
    assert events[-1].cancelled and events[-1].epochs_run == 0
    assert not out.exists()  # a cancelled epoch leaves no checkpoint behind


def test_early_stopping_and_callbacks(splits, tmp_path):
    train_set, val_set = _datasets(splits)
    seen = []

    class Recorder(Callback):
        def on_epoch_start(self, trainer, epoch):
            seen.append(("start", epoch))

        def on_epoch_end(self, trainer, epoch):
            seen.append(("end", epoch))

    # a learning rate too small to change anything: the Dice never improves after epoch 1
    cfg = TrainConfig(epochs=10, patience=2, lr=1e-12, min_lr=0.0, device="cpu")
    model = _model("unet_tiny")
    done = Trainer(model, train_set, val_set, config=cfg, hooks=[Recorder()]).run()
    assert done.stopped_early and done.epochs_run == 3 and done.best_epoch == 1
    assert seen == [("start", 1), ("end", 1), ("start", 2), ("end", 2), ("start", 3), ("end", 3)]


def test_text_model_without_text_and_clear_text_errors(splits, fake_encoder):
    train_set, val_set = _datasets(splits)
    with pytest.raises(ValueError, match="uses text: pass a text encoder"):
        next(Trainer(_model(), train_set, val_set, None, TrainConfig(epochs=1)).fit())
    with pytest.raises(ValueError, match="text_dim"):
        bad = create_model("lvit_tiny", text_dim=128)
        next(Trainer(bad, train_set, None, fake_encoder, TrainConfig(epochs=1)).fit())
    cfg = TrainConfig(epochs=1, use_text=False, log_every=100)
    done = Trainer(_model(), train_set, None, None, cfg).run()
    assert done.epochs_run == 1 and done.best_dice is None


def test_subclass_adds_a_named_loss_term(splits, fake_encoder):
    train_set, _ = _datasets(splits)

    class WithPenalty(Trainer):
        def compute_loss(self, batch, logits):
            terms = super().compute_loss(batch, logits)
            terms["lv"] = 0.1 * torch.sigmoid(logits).mean()
            return terms

    events = list(WithPenalty(_model(), train_set, None, fake_encoder, TrainConfig(epochs=1)).fit())
    batch = next(e for e in events if isinstance(e, BatchEnd))
    assert set(batch.losses) == {"dice", "bce", "lv"}
    assert batch.loss == pytest.approx(sum(batch.losses.values()), rel=1e-5)


def test_cancel_from_another_thread(splits, fake_encoder):
    train_set, _ = _datasets(splits)
    trainer = Trainer(_model(), train_set, None, fake_encoder, TrainConfig(epochs=10_000))
    events = []
    worker = threading.Thread(target=lambda: events.extend(trainer.fit()))
    worker.start()
    time.sleep(0.5)
    trainer.cancel()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert isinstance(events[-1], TrainingDone) and events[-1].cancelled


@pytest.mark.cuda
def test_cuda_mixed_precision_run_saves_a_cpu_loadable_checkpoint(splits, fake_encoder, tmp_path):
    train_set, val_set = _datasets(splits)
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(epochs=2, device="cuda", amp=True, out=out)
    trainer = Trainer(_model(), train_set, val_set, fake_encoder, cfg)
    done = trainer.run()
    assert trainer.amp and trainer.device.type == "cuda" and done.epochs_run == 2
    assert all(math.isfinite(h["train_loss"]) for h in trainer.history)
    model, _ = load_checkpoint(out, device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_one_epoch_with_the_real_text_encoder(splits, text_encoder, tmp_path):
    train_set, val_set = _datasets(splits)
    out = tmp_path / "m.safetensors"
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", out=out)
    done = Trainer(_model(), train_set, val_set, text_encoder, cfg).run()
    assert done.epochs_run == 1 and done.best_dice is not None
    assert read_checkpoint_meta(out)["text_encoder"] == text_encoder.id


def test_cpu_bf16_trains_in_bf16_where_the_cpu_has_it_and_saves_float32(
    splits, fake_encoder, tmp_path
):
    from src_models.device import cpu_has_native_bf16

    train_set, val_set = _datasets(splits)
    out = tmp_path / "bf16.safetensors"
    model = _model()
    seen: list[torch.dtype] = []
    model.decoder.head.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if m.training else None
    )
    cfg = TrainConfig(epochs=6, lr=3e-3, min_lr=1e-3, device="cpu", out=out, cpu_bf16=True)
    events = list(Trainer(model, train_set, val_set, fake_encoder, cfg).fit())

    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert seen and set(seen) == {expected}
    losses = [e.train_loss for e in events if isinstance(e, EpochEnd)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0], losses
    # the weights stay float32: the checkpoint loads and predicts like any other
    loaded, _ = load_checkpoint(out)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert evaluate(loaded, val_set, fake_encoder, device="cpu")["n"] == 8


def test_compile_trains_the_compiled_model_and_saves_the_plain_one(
    splits, fake_encoder, tmp_path, monkeypatch
):
    # dynamo's "eager" backend: the same graph capture as the default, without its minutes of
    # code generation on the CPU
    compiled = []
    real_compile = torch.compile

    def compile_eagerly(model, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    train_set, val_set = _datasets(splits)
    out = tmp_path / "compiled.safetensors"
    model = _model()
    cfg = TrainConfig(epochs=2, lr=3e-3, device="cpu", out=out, compile=True, save_last=False)
    trainer = Trainer(model, train_set, val_set, fake_encoder, cfg)
    events = list(trainer.fit())

    assert compiled == [model] and trainer.ddp_model is not model
    assert isinstance(events[-1], TrainingDone) and events[-1].epochs_run == 2
    loaded, _ = load_checkpoint(out)
    assert set(loaded.state_dict()) == set(model.state_dict())  # no "_orig_mod." keys
