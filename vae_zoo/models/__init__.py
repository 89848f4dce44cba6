"""The VAE variants; each is a short subclass of :class:`BaseVAE`."""

from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.beta_vae import BetaVAE
from vae_zoo.models.cvae import ConditionalVAE
from vae_zoo.models.vae import VAE

VARIANTS: dict[str, type[BaseVAE]] = {
    "vae": VAE,
    "beta_vae": BetaVAE,
    "cvae": ConditionalVAE,
}

__all__ = ["VARIANTS", "VAE", "BaseVAE", "BetaVAE", "ConditionalVAE", "ForwardPass"]
