"""The vanilla VAE (Kingma & Welling 2014): loss = -(recon - kl)."""

from vae_zoo.models.base import BaseVAE


class VAE(BaseVAE):
    """Variational autoencoder with the plain ELBO objective; all machinery lives in BaseVAE."""
