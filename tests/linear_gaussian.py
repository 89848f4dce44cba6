"""Pieces of the linear-Gaussian test models whose marginal p(x) has a closed form.

x = W z + b + noise, noise ~ N(0, sigma^2 I): with a Gaussian prior on z the marginal is
Gaussian, so importance-sampled likelihoods can be checked against it exactly.
"""

from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vae_zoo.likelihoods import Likelihood


class IdentityGaussian(Likelihood):
    """p(x|z) = N(params, sigma^2 I): the decoder's output is the mean itself."""

    def __init__(self, sigma: float = 0.5) -> None:
        super().__init__()
        self.sigma = sigma

    def distribution(self, params: Tensor) -> Distribution:
        """Independent Gaussians over (C, H, W) around ``params``."""
        return Independent(Normal(params, self.sigma), 3)


class LinearDecoder(nn.Module):
    """z -> W z + b, shaped as an image; W and b are fixed buffers (nothing to train)."""

    def __init__(self, latent_dim, out_shape, cond_dim, w: Tensor, b: Tensor) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """The mean W z + b: [B, *out_shape]."""
        return (z @ self.w.T + self.b).view(-1, *self.out_shape)
