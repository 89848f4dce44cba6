"""A fourth variant, defined outside the package in one file: the test of "adding a variant".

Nothing else in the repository mentions it; the CLI, the run folders, checkpoint loading and
``compare`` must find it through the registry.
"""

from torch import Tensor

from vae_zoo.models import BaseVAE, ForwardPass, register_model


@register_model("zcentered_vae")
class ZCenteredVAE(BaseVAE):
    """A VAE whose batch of z is pulled to zero mean: loss + lam * |mean_b z_b|^2.

    ``z_mean_sq`` = |mean over the batch of z|^2 is a batch-level scalar, not per example.
    """

    objective = "-(recon - kl) + lam*|mean z|^2"

    def __init__(self, *args, lam: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lam = lam

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """The VAE's terms plus the batch term ``z_mean_sq``, weighted by ``lam`` in the loss."""
        terms = super().loss(out, x)
        z_mean_sq = out.z.mean(0).pow(2).sum()
        return {**terms, "loss": terms["loss"] + self.lam * z_mean_sq, "z_mean_sq": z_mean_sq}
