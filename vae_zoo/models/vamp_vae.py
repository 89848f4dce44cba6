"""The VAE with a VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior", arXiv:1705.07120).

The prior is the variational mixture of posteriors over K learned pseudo-inputs u_1..u_K,
images of the data's shape::

    p(z)  = (1/K) sum_k q(z|u_k)                           (MixtureOfDiagNormals)
    recon = log p(x|z),  z ~ q(z|x)                          (one reparameterized sample)
    kl    = log q(z|x) - log p(z)   at that z                (one-sample Monte Carlo: no closed
                                                              form against a mixture)
    elbo  = recon - kl,   loss = -(recon - w * kl)           (w: the KL schedule, 1 by default)

``kl`` is an unbiased estimate of KL(q(z|x) || p(z)), so ``elbo`` is an unbiased estimate of
the ELBO; it is not a per-dimension KL (``kl_dim_max`` is absent). The importance-sampled
``nll`` uses the same mixture prior in its log-weights.

Pseudo-inputs are u_k = sigmoid(a_k) with a_k ~ N(-0.05, 0.01^2) at initialisation, i.e. grey
images of about 0.49 with a little noise: the authors' code for binary and grey data
(``pseudoinputs_mean=-0.05``, ``pseudoinputs_std=0.01``, a sigmoid; K = 500). The paper's
hard-tanh is not used: at that initialisation every a_k is below 0, where hard-tanh(0, 1) has
no gradient and the pseudo-inputs would never move. a_k is an ``nn.Parameter``, trained by the
main optimizer with the networks and saved with the checkpoint (``pseudo_logits``).

Every forward pass encodes the K pseudo-inputs (K = 500 against a batch of 128: the encoder
does about five times the work of the VAE's; the decoder's work is unchanged).

Terms, all per example [B]: ``loss``, ``elbo``, ``recon``, ``kl``. No batch-level terms; the
pseudo-inputs' gradients are averaged over ranks by DDP like any parameter.
"""

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_zoo.distributions import DiagNormal, MixtureOfDiagNormals
from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE
from vae_zoo.models.registry import register_model


def check_pseudo_inputs(name: str, num: object, std: float) -> None:
    """Refuse a pseudo-input count (the option ``name``) that is not an int >= 1, or std < 0."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {num!r}")
    if not std >= 0:
        raise ConfigError(f"pseudo_init_std must be >= 0, got {std}")


def at_least_float32(mu: Tensor, logvar: Tensor) -> DiagNormal:
    """The posterior N(mu, diag(exp(logvar))) in at least float32, also under autocast."""
    wide = torch.promote_types(mu.dtype, torch.float32)
    return DiagNormal(mu.to(wide), logvar.to(wide))


def pseudo_input_logits(
    num: int, image_shape: tuple[int, ...], mean: float, std: float
) -> nn.Parameter:
    """Logits a_k ~ N(mean, std^2) of ``num`` pseudo-inputs u_k = sigmoid(a_k): [num, C, H, W]."""
    logits = torch.empty(num, *image_shape)
    nn.init.normal_(logits, mean, std)
    return nn.Parameter(logits)


@register_model("vamp_vae")
class VampPriorVAE(BaseVAE):
    """VAE with a VampPrior: p(z) is the mean of q(z|u_k) over K learned pseudo-inputs u_k.

    Args:
        num_pseudo_inputs: K, the number of mixture components (500 in the paper).
        pseudo_init_mean: mean of the normal initialisation of the pseudo-inputs' logits.
        pseudo_init_std: its standard deviation (u_k = sigmoid(logits)).
        *args, **kwargs: the arguments of :class:`BaseVAE`.
    """

    def __init__(
        self,
        *args,
        num_pseudo_inputs: int = 500,
        pseudo_init_mean: float = -0.05,
        pseudo_init_std: float = 0.01,
        **kwargs,
    ) -> None:
        check_pseudo_inputs("num_pseudo_inputs", num_pseudo_inputs, pseudo_init_std)
        super().__init__(*args, **kwargs)
        self.pseudo_logits = pseudo_input_logits(
            num_pseudo_inputs, self.image_shape, pseudo_init_mean, pseudo_init_std
        )

    @property
    def objective(self) -> str:
        """What is minimised, for tables."""
        return f"{self.elbo_objective()}, VampPrior K={self.num_pseudo_inputs}, MC KL"

    @property
    def num_pseudo_inputs(self) -> int:
        """K, the number of pseudo-inputs (mixture components)."""
        return self.pseudo_logits.shape[0]

    @property
    def pseudo_inputs(self) -> Tensor:
        """The pseudo-inputs u_k = sigmoid(logits) in [0, 1]: [K, C, H, W]."""
        return torch.sigmoid(self.pseudo_logits)

    def posterior(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z|x): the base's diagonal Gaussian, in at least float32 also under autocast.

        The Monte-Carlo KL log q(z) - log p(z) is a difference of log-densities; bfloat16 would
        round each of them by ~0.5 nats.
        """
        return at_least_float32(*self.encode(x, c))

    def prior(self, c: Tensor | None = None) -> Distribution:
        """p(z) = (1/K) sum_k q(z|u_k): the pseudo-inputs through the encoder (batch shape ())."""
        mu, logvar = self.encode(self.pseudo_inputs, None)
        return MixtureOfDiagNormals(mu, logvar)  # log_prob works in float64 (float32 on MPS)
