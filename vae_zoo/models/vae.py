"""The vanilla VAE (Kingma & Welling 2014): loss = -(recon - w * kl), w the KL-schedule weight."""

from vae_zoo.models.base import BaseVAE
from vae_zoo.models.registry import register_model


@register_model("vae")
class VAE(BaseVAE):
    """The VAE (Kingma & Welling 2014): the plain ELBO; all machinery lives in BaseVAE."""
