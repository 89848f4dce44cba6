"""Kernels and the maximum mean discrepancy (MMD) between two samples (InfoVAE, WAE-MMD).

For a kernel k, the squared MMD between distributions P and Q is

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),   x, x' ~ P,  y, y' ~ Q (independent)

and :func:`mmd_unbiased` estimates it without bias by the U-statistic (Gretton et al. 2012,
"A kernel two-sample test", Lemma 6) on n draws x_i of P and m draws y_j of Q:

    MMD^2_u = 1/(n(n-1)) sum_{i != i'} k(x_i, x_i') + 1/(m(m-1)) sum_{j != j'} k(y_j, y_j')
              - 2/(nm) sum_{i,j} k(x_i, y_j)

The diagonal terms k(x_i, x_i) are left out, so the estimate can be slightly negative when
P = Q; its expectation is MMD^2 >= 0. Kernels, with d = ||x - y||^2 and a scale C > 0:

    rbf:  k = exp(-d / C)       (Gaussian; bandwidth sigma_k^2 = C / 2)
    imq:  k = C / (C + d)       (inverse multiquadratic, heavier tails; Tolstikhin et al. 2018)

Scale rule: C = 2 * D * sigma_p^2 * s for each s in ``scales``, D the latent dimension and
sigma_p^2 the prior's variance per dimension (1 for N(0, I)). 2 D sigma_p^2 is E||y - y'||^2
for two prior draws, so s = 1 matches the kernel to the prior's typical squared distance (the
rule of the WAE paper and code). Several scales add their kernels (a sum of kernels is a
kernel, and its MMD^2 is the sum of the MMD^2s), as WAE's IMQ does with
s in {0.1, 0.2, 0.5, 1, 2, 5, 10}. The scales are fixed, never fitted to the batch (no median
heuristic), so logged MMDs are the same statistic at every step and in every run.
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_zoo.errors import ConfigError

KERNELS = ("rbf", "imq")
#: the scales s of Tolstikhin et al.'s IMQ kernel (their code: C = 2 * D * s for these s)
WAE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def check_kernel(kernel: str, scales: Sequence[float]) -> tuple[float, ...]:
    """Validate a kernel name and its scales (ConfigError naming the key); the scales as a tuple."""
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise ConfigError(f"kernel_scales must be a non-empty list of numbers > 0, got {scales}")
    return scales


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2 for x [n, D], y [m, D]: [n, m], clamped at 0 against rounding."""
    # ||x||^2 + ||y||^2 - 2 x.y: one matmul instead of an [n, m, D] difference tensor
    d2 = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1) - 2.0 * x @ y.transpose(0, 1)
    return d2.clamp_min(0.0)


def kernel_matrix(d2: Tensor, kernel: str, scales: Sequence[float]) -> Tensor:
    """The kernel summed over scales C (absolute, not relative) at squared distances d2."""
    out = torch.zeros_like(d2)
    for c in scales:
        out = out + (torch.exp(-d2 / c) if kernel == "rbf" else c / (c + d2))
    return out


def mmd_unbiased(
    x: Tensor,
    y: Tensor,
    kernel: str = "imq",
    scales: Sequence[float] = (1.0,),
    prior_variance: float = 1.0,
) -> Tensor:
    """Unbiased U-statistic of MMD^2 between samples x [n, D] and y [m, D] (n, m >= 2): a scalar.

    The kernel scale is C = 2 * D * prior_variance * s for each s in ``scales`` (see the
    module docstring).
    """
    n, m, dim = x.shape[0], y.shape[0], x.shape[-1]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 draws of each sample, got {n} and {m}")
    cs = [2.0 * dim * prior_variance * s for s in scales]
    k_xx = kernel_matrix(squared_distances(x, x), kernel, cs)
    k_yy = kernel_matrix(squared_distances(y, y), kernel, cs)
    k_xy = kernel_matrix(squared_distances(x, y), kernel, cs)
    # the sums without their diagonals k(x_i, x_i) (= len(scales) for rbf and imq, but taken
    # from the matrix so the rounding of the distances cancels)
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2.0 * k_xy.mean()


def mmd_to_prior(
    z: Tensor,
    prior: Distribution,
    kernel: str = "imq",
    scales: Sequence[float] = (1.0,),
    prior_variance: float = 1.0,
) -> Tensor:
    """MMD^2_u between a batch of codes z [B, D] ~ q(z) and B fresh draws of the prior: a scalar.

    Computed in float32 (float64 codes stay float64) with autocast off: the kernel differences
    of nearby codes cancel, and in bfloat16 (8 bits of mantissa) they would be rounding noise.
    The prior draws carry no gradient (the prior has no parameters in the models using this).
    """
    n = z.shape[0]
    with torch.no_grad():
        y = prior.sample(() if len(prior.batch_shape) else (n,))
    dtype = torch.promote_types(z.dtype, torch.float32)  # float32, or float64 if given
    with torch.autocast(device_type=z.device.type, enabled=False):
        return mmd_unbiased(z.to(dtype), y.to(z.device, dtype), kernel, scales, prior_variance)
