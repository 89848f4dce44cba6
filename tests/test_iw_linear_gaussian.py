"""IW log-likelihood against a model whose log p(x) is known in closed form.

Linear-Gaussian VAE: p(z) = N(0, I), p(x|z) = N(Wz + b, sigma^2 I), so p(x) = N(b, WW^T +
sigma^2 I). With W's columns orthogonal, the exact posterior is a diagonal Gaussian,
q(z|x) = N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1, which the encoder can
represent exactly.
"""

from functools import partial

import pytest
import torch
from linear_gaussian import IdentityGaussian, LinearDecoder
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from vae_zoo.models import VAE

X_DIM, Z_DIM, SIGMA = 6, 3, 0.5


class PosteriorEncoder(nn.Module):
    """The exact posterior, optionally mis-set by a mean shift and a log-variance shift."""

    def __init__(self, image_shape, latent_dim, cond_dim, w, b, mean_shift=0.0, logvar_shift=0.0):
        super().__init__()
        s = torch.linalg.inv(torch.eye(latent_dim) + w.T @ w / SIGMA**2)
        self.register_buffer("gain", s @ w.T / SIGMA**2)
        self.register_buffer("b", b)
        self.register_buffer("logvar", torch.diagonal(s).log() + logvar_shift)
        self.mean_shift = mean_shift

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = (x.flatten(1) - self.b) @ self.gain.T + self.mean_shift
        return mu, self.logvar.expand_as(mu)


def _problem() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=gen))
    w = q * torch.tensor([2.0, 1.0, 0.5])  # orthogonal columns -> diagonal exact posterior
    b = torch.randn(X_DIM, generator=gen) * 0.3
    return w, b


def _model(mean_shift: float = 0.0, logvar_shift: float = 0.0) -> VAE:
    w, b = _problem()
    return VAE(
        latent_dim=Z_DIM,
        image_shape=(1, 1, X_DIM),
        encoder=partial(
            PosteriorEncoder, w=w, b=b, mean_shift=mean_shift, logvar_shift=logvar_shift
        ),
        decoder=partial(LinearDecoder, w=w, b=b),
        likelihood=IdentityGaussian(SIGMA),
    ).eval()


def _true_log_px(x: Tensor) -> Tensor:
    w, b = (t.double() for t in _problem())
    cov = w @ w.T + SIGMA**2 * torch.eye(X_DIM, dtype=torch.float64)
    return MultivariateNormal(b, cov).log_prob(x.flatten(1).double())


def _data(n: int = 8) -> Tensor:
    w, b = _problem()
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(n, Z_DIM, generator=gen)
    x = z @ w.T + b + SIGMA * torch.randn(n, X_DIM, generator=gen)
    return x.view(n, 1, 1, X_DIM)


@pytest.mark.parametrize("k", [1, 50])
def test_exact_posterior_gives_exact_log_likelihood_for_any_k(k: int) -> None:
    # every importance weight equals p(x) when q is the true posterior
    x = _data()
    est = _model().log_likelihood(x, k=k)
    torch.testing.assert_close(est.double(), _true_log_px(x), atol=1e-3, rtol=0)


def test_near_posterior_iw_estimate_within_a_tenth_of_a_nat() -> None:
    x = _data()
    model = _model(mean_shift=0.3, logvar_shift=0.5)
    truth = _true_log_px(x)
    iw = model.log_likelihood(x, k=2000).double()
    assert (iw - truth).abs().max() < 0.1
    # the single-sample bound is clearly looser, so the tolerance above is meaningful
    elbo = torch.stack([model.elbo(x)["elbo"] for _ in range(200)]).mean(0).double()
    assert (truth - elbo).mean() > 0.2
    assert (elbo <= truth + 1e-3).all()


def test_iw_bound_tightens_with_k() -> None:
    x = _data(4)
    model = _model(mean_shift=0.5, logvar_shift=1.0)
    truth = _true_log_px(x)
    means = [
        torch.stack([model.log_likelihood(x, k=k) for _ in range(30)]).mean(0).double()
        for k in (1, 10, 500)
    ]
    gaps = [float((truth - m).mean()) for m in means]
    assert gaps[0] > gaps[1] > gaps[2] > -0.02


def test_chunked_estimate_is_still_within_a_tenth_of_a_nat() -> None:
    # iw_rows=8 splits k=2000 into 500 chunks; a wrong merge of chunks would be off by log(500)
    x = _data(4)
    model = _model(mean_shift=0.3, logvar_shift=0.5)
    model.hparams.iw_rows = 8
    est = model.log_likelihood(x, k=2000).double()
    assert (est - _true_log_px(x)).abs().max() < 0.1
