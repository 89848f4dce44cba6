"""The default optimizer: Adam's fused kernel where it applies, its loop implementation else."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from small_models import SMALL, binary_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.models import VAE, ConditionalVAE
from vae_zoo.optimizers import adam, fused_adam_applies

FIXTURE_CKPT = Path(__file__).parent / "fixtures" / "v0_cvae_run" / "checkpoints" / "best.ckpt"


def _fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.param_groups[0]["fused"])


def test_fused_adam_updates_as_the_loop_implementation() -> None:
    """Ten steps of the default optimizer and of torch's for-loop Adam, from the same weights
    and gradients (weight decay on), give the same weights to float32 rounding."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    b = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    fused = adam(a.parameters(), lr=1e-2, weight_decay=1e-3)
    loop = torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3, foreach=False)
    assert _fused(fused) and not _fused(loop)
    for _ in range(10):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    moved = max((p - q).abs().max().item() for p, q in pairs)
    assert moved < 1e-6
    # the weights did move (by about lr a step): not a comparison of two untouched copies
    steps = [(p - s).abs().max().item() for p, s in zip(a.parameters(), start, strict=True)]
    assert min(steps) > 1e-2


def test_fused_adam_applies_only_where_it_can() -> None:
    """Floating-point CPU/CUDA parameters only; never with clipping under a mixed precision,
    where Lightning refuses to clip for an optimizer that unscales inside its step, nor under
    16-mixed's gradient scaler."""
    floats = [nn.Parameter(torch.zeros(3))]
    assert fused_adam_applies(floats)
    assert not fused_adam_applies([])
    assert not fused_adam_applies([nn.Parameter(torch.zeros(3, dtype=torch.long), False)])
    assert not fused_adam_applies([nn.Parameter(torch.zeros(3, device="meta"))])
    for precision, clip, expected in [
        ("32-true", None, True),
        ("32-true", 1.0, True),
        ("bf16-mixed", None, True),
        ("bf16-mixed", 1.0, False),
    ]:
        trainer = quiet_trainer(precision=precision, gradient_clip_val=clip)
        assert fused_adam_applies(floats, trainer) is expected, (precision, clip)
    # 16-mixed needs a GPU for a real Trainer; the rule reads only these two settings
    fp16 = SimpleNamespace(precision="16-mixed", gradient_clip_val=None)
    assert not fused_adam_applies(floats, fp16)


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [("32-true", None, True), ("bf16-mixed", 1.0, False)],
)
def test_a_fit_uses_the_fused_kernel_unless_lightning_would_refuse_it(
    precision: str, clip: float | None, fused: bool
) -> None:
    """A fit trains with the fused kernel; clipping under bf16-mixed fits too (loop Adam)."""
    torch.manual_seed(0)
    model = VAE(**SMALL)
    data = DataLoader(TensorDataset(binary_images(32), torch.zeros(32, dtype=torch.long)), 8)
    trainer = quiet_trainer(
        max_steps=4, precision=precision, gradient_clip_val=clip, limit_val_batches=0
    )
    trainer.fit(model, data)
    assert trainer.global_step == 4
    assert _fused(trainer.optimizers[0]) is fused
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_written_with_loop_adam_resumes_with_it(tmp_path: Path) -> None:
    """The old fixture run (loop Adam) resumes training from its checkpoint and keeps its
    optimizer's settings: a resumed run does not change implementation halfway."""
    model = ConditionalVAE.load_from_checkpoint(FIXTURE_CKPT, map_location="cpu")
    step = torch.load(FIXTURE_CKPT, map_location="cpu", weights_only=False)["global_step"]
    images = torch.bernoulli(torch.full((16, *model.image_shape), 0.2))
    data = DataLoader(TensorDataset(images, torch.arange(16) % model.num_classes), batch_size=8)
    trainer = quiet_trainer(max_steps=step + 2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, data, ckpt_path=FIXTURE_CKPT)
    assert trainer.global_step == step + 2
    assert not _fused(trainer.optimizers[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
