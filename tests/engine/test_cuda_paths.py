"""The CUDA path of issue 16's engine pieces (skipped without a GPU; ``benchmarks/gpu_check.sh``
runs them on one): EPI rounds in mixed precision with BatchNorm and the bank on the GPU side,
and batch prediction on the GPU giving the CPU's masks."""

import numpy as np
import pytest
import torch

from src_models.batch import plan_batch, run_batch
from src_models.data import SegmentationDataset, scan_split
from src_models.data.io import read_mask
from src_models.data.synthetic import write_dataset
from src_models.engine import TrainConfig, load_checkpoint
from src_models.engine.semi import PseudoLabelBank, SemiConfig, SemiTrainer, split_labeled
from src_models.inference import Predictor
from src_models.models import create_model


@pytest.mark.cuda
def test_cuda_epi_rounds_in_mixed_precision(tmp_path, fake_encoder):
    data = write_dataset(tmp_path / "train", kind="qata", n=8, size=64, seed=0)
    val = SegmentationDataset(write_dataset(tmp_path / "val", "qata", n=4, size=64, seed=1), 64)
    labeled, unlabeled = split_labeled(scan_split(data), 0.5, seed=0)
    train = SegmentationDataset(labeled + unlabeled, 64, augment=True, seed=0)
    out = tmp_path / "run" / "m.safetensors"
    cfg = TrainConfig(epochs=1, batch_size=4, device="cuda", amp=True, out=str(out))
    semi = SemiConfig(rounds=2, round_epochs=1, bank_fsync=False)
    torch.manual_seed(0)
    trainer = SemiTrainer(create_model("lvit_tiny"), train, val, fake_encoder, cfg, semi)
    done = trainer.run()
    assert done.rounds_run == 3 and not done.cancelled
    assert all(np.isfinite(h["train_loss"]) for h in done.history)
    bank = PseudoLabelBank(out.with_name("m.pseudo"), read_only=True)
    assert bank.t == 2 and len(bank) == 4
    for name in bank.names():
        p = bank.get(name)
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
    model, _ = load_checkpoint(out, device="cpu")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.cuda
def test_cuda_batch_prediction_gives_the_cpu_masks(tmp_path):
    data = write_dataset(tmp_path / "data", "qata", 5, size=80)
    masks = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)  # the same (untrained) weights on both
        predictor = Predictor("unet_tiny", device=device)
        items = plan_batch([data / "img"], tmp_path / device)
        assert run_batch(predictor, items, batch_size=2).written == 5
        masks[device] = [read_mask(item.output) for item in items]
    for a, b in zip(masks["cpu"], masks["cuda"], strict=True):
        assert np.mean(a != b) < 0.01  # mixed precision on the GPU
