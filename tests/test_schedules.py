"""KL-weight schedules: values over the steps, validation, and how the model uses them."""

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.errors import ConfigError
from vae_zoo.models import VAE
from vae_zoo.networks import MLPDecoder, MLPEncoder
from vae_zoo.schedules import CyclicalAnnealing, KLSchedule, LinearWarmup

TINY = {
    "latent_dim": 2,
    "image_shape": (1, 4, 4),
    "encoder": functools.partial(MLPEncoder, hidden_dims=(8,)),
    "decoder": functools.partial(MLPDecoder, hidden_dims=(8,)),
}


def test_constant_schedule() -> None:
    s = KLSchedule(0.5)
    assert [s(t) for t in (0, 1, 10**6)] == [0.5, 0.5, 0.5]
    assert s.final == 0.5
    assert KLSchedule()(123) == 1.0


def test_linear_warmup_ramps_then_stays() -> None:
    s = LinearWarmup(warmup_steps=10, start=0.2, weight=1.0)
    expected = [0.2, 0.28, 0.6, 0.92, 1.0, 1.0, 1.0]
    got = [s(t) for t in (0, 1, 5, 9, 10, 11, 1000)]
    assert got == pytest.approx(expected)
    assert s.final == 1.0
    assert LinearWarmup(4)(2) == pytest.approx(0.5)


def test_cyclical_annealing_follows_fu_et_al() -> None:
    s = CyclicalAnnealing(cycle_steps=10, ratio=0.5, n_cycles=2, weight=1.0)
    # cycle 1: 0, 0.2, ..., 0.8, then 1 for the second half; cycle 2 restarts at 0
    first = [s(t) for t in range(10)]
    assert first == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert [s(t) for t in range(10, 20)] == pytest.approx(first)
    # after n_cycles it stays at the weight, also where a new ramp would have started
    assert [s(t) for t in (20, 21, 25, 30, 10**6)] == [1.0] * 5
    assert s.final == 1.0


def test_cyclical_annealing_forever_and_scaled() -> None:
    s = CyclicalAnnealing(cycle_steps=4, ratio=1.0, n_cycles=None, weight=0.5)
    assert [s(t) for t in (0, 1, 2, 3, 4, 400, 402)] == pytest.approx(
        [0.0, 0.125, 0.25, 0.375, 0.0, 0.0, 0.25]
    )
    assert s.final == 0.5


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: KLSchedule(-0.1), "weight"),
        (lambda: LinearWarmup(0), "warmup_steps"),
        (lambda: LinearWarmup(10, start=-0.1), "start"),
        (lambda: LinearWarmup(10, start=2.0, weight=1.0), "start"),
        (lambda: CyclicalAnnealing(0), "cycle_steps"),
        (lambda: CyclicalAnnealing(10, ratio=0.0), "ratio"),
        (lambda: CyclicalAnnealing(10, ratio=1.5), "ratio"),
        (lambda: CyclicalAnnealing(10, n_cycles=0), "n_cycles"),
        (lambda: CyclicalAnnealing(10, weight=-1.0), "weight"),
    ],
)
def test_invalid_schedules_raise_config_error(factory, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


def test_model_kl_weight_uses_the_schedule_in_training_and_final_in_eval(monkeypatch) -> None:
    model = VAE(**TINY, kl_schedule=LinearWarmup(warmup_steps=4))
    step = {"t": 0}
    monkeypatch.setattr(VAE, "global_step", property(lambda self: step["t"]))
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    model.train()
    for t, w in [(0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (9, 1.0)]:
        step["t"] = t
        assert model.kl_weight == pytest.approx(w)
        torch.manual_seed(t)
        terms = model.elbo(x)
        torch.testing.assert_close(terms["loss"], -(terms["recon"] - w * terms["kl"]))
    step["t"] = 1
    model.eval()
    assert model.kl_weight == 1.0
    terms = model.elbo(x)
    torch.testing.assert_close(terms["loss"], -terms["elbo"])


class _RecordKLWeight(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, pl_module.kl_weight))


def test_kl_weight_follows_the_schedule_during_fit(tmp_path) -> None:
    schedule = CyclicalAnnealing(cycle_steps=3, ratio=0.5, n_cycles=1)
    model = VAE(**TINY, kl_schedule=schedule, val_k=0)
    data = TensorDataset(torch.bernoulli(torch.full((12, 1, 4, 4), 0.5)), torch.zeros(12).long())
    record = _RecordKLWeight()
    trainer = quiet_trainer(max_steps=5, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=4))
    assert [t for t, _ in record.seen] == [0, 1, 2, 3, 4]
    assert [w for _, w in record.seen] == pytest.approx([0.0, 2 / 3, 1.0, 1.0, 1.0])
    # the logged weight is the one of the last training step
    assert trainer.callback_metrics["train/kl_weight"].item() == pytest.approx(1.0)
    model.eval()
    assert model.kl_weight == schedule.final
