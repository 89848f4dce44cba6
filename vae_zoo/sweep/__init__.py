"""Hyper-parameter sweeps: W&B sweep files, run online by ``wandb agent`` or offline here.

``spec`` loads and validates a sweep YAML, ``proposer`` wraps W&B's sweep engine (``sweeps``),
``command`` builds a run's argv as ``wandb agent`` does, ``runner`` launches and watches runs,
``results`` reads metrics.csv and ranks runs, ``cli`` is ``python -m vae_zoo sweep``.
"""

from vae_zoo.sweep.spec import SweepConfigError, SweepSpec, load_spec

__all__ = ["SweepConfigError", "SweepSpec", "load_spec"]
