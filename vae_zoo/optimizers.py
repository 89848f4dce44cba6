"""The default optimizer of every variant: Adam, with torch's fused kernel wherever it applies.

torch's ``Adam`` defaults to a Python loop over the parameters on a CPU (``foreach`` only when
every parameter is on CUDA). Its fused kernel does the same update in one call per parameter:
on 2 CPU cores it cut the MLP VAE's optimizer step from 2.1 to 0.9 ms and its whole training
step from 10.5 to 9.2 ms (``benchmarks/throughput.py`` runs the same optimizer on both sides).
Its updates match the loop's to float32 rounding (``tests/test_optimizers.py``).

It is not used where it would fail or change what Lightning allows:

* parameters that are not floating point, or not on a CPU (torch >= 2.4) or CUDA device;
* gradient clipping under a mixed precision: a fused optimizer unscales gradients inside its
  own ``step``, and Lightning's ``MixedPrecision`` plugin refuses to clip gradients for such an
  optimizer (a RuntimeError at the first step);
* ``16-mixed``, whose gradient scaler would leave the gradients that callbacks see before the
  step (``on_before_optimizer_step``: gradient norms) scaled, where they are unscaled today.

A checkpoint keeps its optimizer's setting: a run resumed from one written with the loop
implementation goes on with it.
"""

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def fused_adam_applies(params: Iterable[nn.Parameter], trainer: Any = None) -> bool:
    """Whether Adam's fused kernel can update ``params`` under ``trainer``'s settings."""
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    devices = {"cuda", "cpu"} if (major, minor) >= (2, 4) else {"cuda"}  # CPU kernel: 2.4
    params = list(params)
    if not params or not all(p.is_floating_point() and p.device.type in devices for p in params):
        return False
    if trainer is None:
        return True
    precision = str(getattr(trainer, "precision", ""))
    clipping = bool(getattr(trainer, "gradient_clip_val", None))
    return precision != "16-mixed" and not (clipping and precision.endswith("-mixed"))


def adam(
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    trainer: Any = None,
    **options: Any,
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params`` (``options``: its other settings, e.g. ``betas``),
    fused where :func:`fused_adam_applies`."""
    params = list(params)
    fused = fused_adam_applies(params, trainer) or None  # None: torch's own default otherwise
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused, **options)
