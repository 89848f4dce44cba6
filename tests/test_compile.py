"""``compile=True``: the compiled forward pass computes the eager one and keeps the model usable.

Dynamo traces the real function here, but with ``backend="eager"`` (no code generation), so
the tests take seconds; the inductor speed is measured by ``benchmarks/throughput.py --compile``.
"""

import copy
import functools
import pickle

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.models import VAE
from vae_zoo.models.base import compiled_forward_pass

TINY = {"latent_dim": 2, "image_shape": (1, 4, 4), "val_k": 0}


@pytest.fixture(autouse=True)
def eager_backend(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled_forward_pass.cache_clear()
    torch._dynamo.reset()
    yield
    compiled_forward_pass.cache_clear()
    torch._dynamo.reset()


def _x() -> torch.Tensor:
    return torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))


def test_compiled_forward_equals_eager() -> None:
    compiled = VAE(**TINY, compile=True)
    eager = VAE(**TINY)
    eager.load_state_dict(compiled.state_dict())
    x = _x()
    torch.manual_seed(1)
    a = compiled(x)
    torch.manual_seed(1)
    b = eager(x)
    for name in ("mu", "logvar", "z", "params", "recon", "kl_per_dim"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), msg=name)


def test_deepcopy_of_a_compiled_model_uses_its_own_weights() -> None:
    model = VAE(**TINY, compile=True)
    x = _x()
    model(x)  # compile before copying
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.encoder.parameters():
            p.zero_()
    assert twin(x).mu.abs().sum() == 0
    assert model(x).mu.abs().sum() > 0


def test_compiled_model_pickles() -> None:
    model = VAE(**TINY, compile=True)
    x = _x()
    model(x)
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x).kl_per_dim, model(x).kl_per_dim)


def test_compiled_model_trains_under_lightning(tmp_path) -> None:
    model = VAE(**TINY, compile=True)
    before = [p.detach().clone() for p in model.parameters()]
    data = TensorDataset(torch.bernoulli(torch.full((24, 1, 4, 4), 0.4)), torch.zeros(24).long())
    trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
