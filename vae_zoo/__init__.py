"""vae_zoo: VAE, beta-VAE and conditional VAE experiments with PyTorch Lightning."""

__version__ = "0.1.0"
