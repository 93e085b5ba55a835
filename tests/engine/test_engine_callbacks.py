"""KeepBest: the best-by-validation weights, kept in memory on the CPU."""

from types import SimpleNamespace

import torch

from src_models.engine import KeepBest, ValidationEnd
from src_models.engine.callbacks import cpu_state_dict


def _val(dice: float, improved: bool) -> ValidationEnd:
    return ValidationEnd(epoch=1, dice=dice, iou=dice, best=dice, improved=improved)


def test_keep_best_copies_on_improvement_and_restores():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    keep = KeepBest()
    trainer = SimpleNamespace(model=model)
    keep.restore(model)  # nothing kept yet: a no-op
    assert keep.state is None and keep.dice is None
    keep.on_event(trainer, _val(0.5, improved=True))
    best = {k: v.clone() for k, v in model.state_dict().items()}
    assert keep.dice == 0.5 and all(v.device.type == "cpu" for v in keep.state.values())
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the copy shares no memory with the model
    keep.on_event(trainer, _val(0.4, improved=False))  # not better: the copy stays
    keep.on_event(trainer, object())  # other events are ignored
    assert keep.dice == 0.5
    keep.restore(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])


def test_cpu_state_dict_keeps_the_module_versions():
    model = torch.nn.BatchNorm1d(3)
    state = cpu_state_dict(model)
    assert state._metadata == model.state_dict()._metadata
    assert state["weight"].data_ptr() != model.weight.data_ptr()
    model.load_state_dict(state)
