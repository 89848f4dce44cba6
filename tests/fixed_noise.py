"""A fixed stream of reparameterization noise, for checking estimators draw by draw."""

import torch

from vae_zoo.distributions import DiagNormal
from vae_zoo.models import BaseVAE


class EpsBank:
    """Hands out a fixed stream of eps [k, B, D], chunk by chunk, to the posteriors it makes."""

    def __init__(self, eps: torch.Tensor) -> None:
        self.eps = eps
        self.chunks: list[int] = []

    @property
    def used(self) -> int:
        """How many of the k draws have been handed out."""
        return sum(self.chunks)

    def posterior_of(self, model: BaseVAE):
        """A stand-in for ``model.posterior`` whose draws take their eps from the bank."""
        bank = self

        class Banked(DiagNormal):
            def rsample(self, sample_shape=()) -> torch.Tensor:
                s = sample_shape[0]
                eps = bank.eps[bank.used : bank.used + s]
                bank.chunks.append(s)
                return self.from_noise(eps)

        return lambda x, c=None: Banked(*model.encode(x, c))
