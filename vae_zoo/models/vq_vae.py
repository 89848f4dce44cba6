"""VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017, "Neural Discrete Representation Learning").

The encoder maps x to a grid of N = h*w vectors z_e(x)_n in R^D (7x7 for 28x28 images); each
is replaced by its nearest code of a codebook e_1..e_K, and the decoder gives p(x|z_q)::

    k_n   = argmin_j ||z_e,n - e_j||^2,   z_q,n = e_{k_n}                     (n = 1..N)

In the notation of ``base.py`` (per example, in nats; squared norms summed over the N positions
and the D code dimensions)::

    q(k|x)     = a point mass on the nearest codes k = (k_1..k_N)     log q(k|x) = 0 at k
    p(k)       = uniform over the K^N grids of codes                   log p(k) = -N log K
    recon      = log p(x|z_q)
    codebook   = ||sg[z_e] - e_k||^2
    commitment = beta * ||z_e - sg[e_k]||^2                            (beta = 0.25)
    loss       = -recon + codebook + commitment
    nll        = -(recon - N log K)     a bound: log p(x) >= log p(x|z_q) + log p(k) - log q(k|x)

KL(q || p) = N log K is a constant, so the model has no ``kl`` or ``elbo`` term: the bound is
reported once, as ``nll`` (``likelihood_is_bound``, so tables mark it), and it is the same for
every number k of importance samples (every draw of a point mass is the same), so it is computed
once. The decoder is fed z_e + sg[z_q - z_e]: the value z_q, with the decoder's gradient passed
to z_e unchanged (the straight-through estimator).

``codebook="ema"`` (default; the paper's appendix, Sonnet's ``VectorQuantizerEMA``) learns the
codes by exponential moving averages instead of the codebook loss's gradient. After each
training batch, with n_j the number of positions of the batch assigned to code j and s_j the sum
of their z_e (both summed over all DDP ranks, so every rank holds the same codebook)::

    N_j <- decay * N_j + (1 - decay) * n_j
    m_j <- decay * m_j + (1 - decay) * s_j
    e_j  = m_j / N~_j,   N~_j = (N_j + eps) / (sum_i N_i + K * eps) * sum_i N_i   (Laplace)

starting from N_j = 1, m_j = e_j (so e = m / N~ from the first step, and a code no batch uses
shrinks slowly towards the origin instead of growing). ``codebook`` is then still computed and
kept in ``loss`` (the same formula in both modes, so their ``val/loss`` compare), but it has no
gradient: the EMA update is what lowers it. With ``codebook="loss"`` the codes are a parameter
and the codebook loss's gradient trains them.

Dead codes: both rules move only the codes that are chosen, so a code no batch chooses never
moves again. On MNIST, with neither, 246 of 256 codes went unused within 100 steps (batch
perplexity 3.7). With ``restart_below`` > 0 (default 1; Dhariwal et al. 2020, Jukebox), a code
whose N_j (the moving average of its assignments per batch, kept in both modes) falls below it
is moved onto a random z_e of the current batch (e_j = m_j = z, N_j = 1); ``restart_below=0``
is the paper's algorithm. The buffers N, m and e are saved in checkpoints; the restarts draw
from a generator seeded with the global step, so a resumed run continues exactly. Distances and
the moving averages are computed in float32, also under mixed-precision autocast.

Logged as well: ``perplexity`` = exp(-sum_j p_j log p_j), p_j the fraction of the batch's B*N
positions assigned to code j (a batch-level scalar, averaged over the split's batches), and
``dead_codes`` = codes that no position of the whole split uses (validation, test, ``compare``;
``train/dead_codes_epoch`` over a training epoch), counted by :class:`CodeUsage` across batches
and ranks. ``sample`` draws codes from the uniform prior p(k) (there is no learned prior), so its
images are not digits; ``predict`` returns the code indices.
"""

import functools
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torchmetrics import Metric

from vae_zoo.errors import ConfigError
from vae_zoo.metrics import SplitMetrics
from vae_zoo.models.base import BaseVAE, BatchEvaluation, ForwardPass
from vae_zoo.models.registry import register_model
from vae_zoo.networks_vq import VQDecoder, VQEncoder

CODEBOOK_MODES = ("ema", "loss")


# --------------------------------------------------------------------------- distributions
class CodePointMass(Distribution):
    """q(k|x): all the mass on the nearest codes ``indices`` [B, *grid]; event shape = grid.

    Also carries what the losses need: the encoder output ``z_e`` [B, D, *grid] and the chosen
    code vectors ``quantized`` = e_k [B, D, *grid] (float32; differentiable in the codebook when
    it is a parameter). ``mean``, ``mode`` and every draw are the atom ``indices`` itself.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, indices: Tensor, num_codes: int, z_e: Tensor, quantized: Tensor) -> None:
        self.indices = indices
        self.num_codes = num_codes
        self.z_e = z_e
        self.quantized = quantized
        super().__init__(indices.shape[:1], indices.shape[1:], validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        """Code indices 0..K-1 (discrete: no active units are computed for it)."""
        return constraints.integer_interval(0, self.num_codes - 1)

    @property
    def mean(self) -> Tensor:
        """The atom: the code indices [B, *grid] (``decode`` takes indices)."""
        return self.indices

    @property
    def mode(self) -> Tensor:
        """The atom: the code indices [B, *grid]."""
        return self.indices

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """The atom repeated: [*sample_shape, B, *grid]."""
        return self.indices.expand(*sample_shape, *self.indices.shape)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """As :meth:`sample`: there is no noise to reparameterise (the gradient path to z_e is
        the straight-through estimator of :class:`VQVAE`)."""
        return self.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """0 where ``value`` is the atom, else -inf: [..., B, *grid] -> [..., B]."""
        same = (value == self.indices).flatten(-len(self.event_shape)).all(-1)
        zero = torch.zeros((), device=value.device)
        return torch.where(same, zero, torch.full_like(zero, -math.inf))

    def entropy(self) -> Tensor:
        """0: a point mass is certain."""
        return torch.zeros(self.batch_shape, device=self.indices.device)


class UniformCodes(Distribution):
    """p(k): every position of the grid independently uniform over K codes; batch shape ()."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self, num_codes: int, grid_shape: tuple[int, ...], device: torch.device | None = None
    ) -> None:
        self.num_codes = num_codes
        self.device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(torch.Size(), torch.Size(grid_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        """Code indices 0..K-1."""
        return constraints.integer_interval(0, self.num_codes - 1)

    @property
    def num_positions(self) -> int:
        """N, the number of latent positions (h * w)."""
        return math.prod(self.event_shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Uniform code indices [*sample_shape, *grid]."""
        shape = (*sample_shape, *self.event_shape)
        return torch.randint(self.num_codes, shape, device=self.device)

    def log_prob(self, value: Tensor) -> Tensor:
        """-N log K for a grid of valid indices, -inf otherwise: [..., *grid] -> [...]."""
        valid = ((value >= 0) & (value < self.num_codes)).flatten(-len(self.event_shape)).all(-1)
        log_p = torch.full((), -self.num_positions * math.log(self.num_codes), device=value.device)
        return torch.where(valid, log_p, torch.full_like(log_p, -math.inf))

    def entropy(self) -> Tensor:
        """N log K nats."""
        return torch.tensor(self.num_positions * math.log(self.num_codes), device=self.device)


# --------------------------------------------------------------------------- the codebook
def _sum_over_ranks(t: Tensor) -> Tensor:
    """All-reduce (sum) ``t`` in place across the ranks of a distributed run; returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class Codebook(nn.Module):
    """K code vectors of size D: nearest-neighbour assignment, lookup, the EMA and restarts.

    ``mode="loss"``: the codes are a parameter, trained by the codebook loss's gradient.
    ``mode="ema"``: the codes are a buffer set by :meth:`update` from the moving averages
    ``ema_sum`` (m) and ``ema_count`` (N). N, the moving average of each code's assignments per
    batch, is kept in both modes (it decides the restarts). Codes start at uniform(-1/K, 1/K).
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        mode: str = "ema",
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_below: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_codes, self.dim, self.mode = num_codes, dim, mode
        self.decay, self.eps, self.restart_below = decay, eps, restart_below
        init = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if mode == "loss":
            self.embedding = nn.Parameter(init)
        else:
            self.register_buffer("embedding", init)
            self.register_buffer("ema_sum", init.clone())
        self.register_buffer("ema_count", torch.ones(num_codes))

    def _flat(self, z_e: Tensor) -> Tensor:
        """[B, D, *grid] -> [B * prod(grid), D] in float32, detached."""
        return z_e.detach().float().movedim(1, -1).reshape(-1, self.dim)

    @torch.no_grad()
    def nearest(self, z_e: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean, float32) of every vector: [B, *grid]."""
        with torch.autocast(z_e.device.type, enabled=False):
            flat, e = self._flat(z_e), self.embedding.detach().float()
            dist2 = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ e.T + e.pow(2).sum(1)
            return dist2.argmin(1).view(z_e.shape[0], *z_e.shape[2:])

    def lookup(self, indices: Tensor) -> Tensor:
        """The code vectors of indices [B, *grid] as [B, D, *grid] (float32)."""
        return F.embedding(indices, self.embedding.float()).movedim(-1, 1)

    @torch.no_grad()
    def update(self, z_e: Tensor, indices: Tensor, step: int = 0) -> None:
        """After a training batch: the moving averages, the EMA codes, then the restarts.

        From the batch's z_e [B, D, *grid] and assignments [B, *grid]: n_j, the number of
        vectors assigned to code j, and s_j, their sum, all-reduced across ranks (so every rank
        applies the same step to the same state). N <- decay N + (1 - decay) n in both modes;
        with ``mode="ema"`` also m <- decay m + (1 - decay) s and e = m / N~ (N~ the Laplace-
        smoothed N, see the module docstring). Then codes with N_j < ``restart_below`` are
        restarted (:meth:`restart_dead`, its draw seeded with ``step``).
        """
        flat = self._flat(z_e)
        stats = torch.zeros(self.num_codes, self.dim + 1, device=flat.device)
        stats.index_add_(0, indices.reshape(-1), torch.cat([flat, flat.new_ones(len(flat), 1)], 1))
        _sum_over_ranks(stats)
        sums, counts = stats[:, : self.dim], stats[:, self.dim]
        self.ema_count.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.mode == "ema":
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
            self.embedding.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.restart_below > 0:
            self.restart_dead(flat, step)

    @torch.no_grad()
    def restart_dead(self, flat: Tensor, step: int) -> Tensor:
        """Move each code whose N_j is below ``restart_below`` onto a random vector of the batch.

        A dead code j gets e_j = z (and m_j = z, N_j = 1), z drawn uniformly from the batch's
        vectors ``flat`` [M, D] (Dhariwal et al. 2020). The draw uses rank 0's vectors,
        broadcast, so every rank restarts alike, and a generator seeded with ``step``, not the
        global one, so a resumed run draws what an uninterrupted one would. Returns the
        indices of the restarted codes.
        """
        dead = (self.ema_count < self.restart_below).nonzero().squeeze(1)
        if len(dead) == 0:
            return dead
        generator = torch.Generator().manual_seed(int(step))
        pick = torch.randint(len(flat), (len(dead),), generator=generator).to(flat.device)
        fresh = flat[pick].contiguous()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(fresh, src=0)
        self.embedding[dead] = fresh.to(self.embedding.dtype)
        if self.mode == "ema":
            self.ema_sum[dead] = fresh
        self.ema_count[dead] = 1.0
        return dead


def code_perplexity(indices: Tensor, num_codes: int) -> Tensor:
    """exp(entropy) of the codes' usage frequencies among ``indices`` (any shape): a scalar."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-torch.special.xlogy(p, p).sum())


class CodeUsage(Metric):
    """How often each of the K codes was chosen over a split; ``compute()``: the unused count.

    The per-code counts are summed over batches and ranks, so a code counts as dead only when
    no position of any example of the split chose it.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, num_codes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.add_state("counts", torch.zeros(num_codes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        """Add a batch of code indices (any shape)."""
        self.counts += torch.bincount(indices.reshape(-1), minlength=self.num_codes)

    def compute(self) -> Tensor:
        """The number of codes used by no position of the split (float)."""
        return (self.counts == 0).sum().float()


# --------------------------------------------------------------------------- the model
@register_model("vq_vae")
class VQVAE(BaseVAE):
    """VQ-VAE: a 7x7 grid of discrete codes, straight-through gradients, no KL.

    ``latent_dim`` is the code dimension D; ``num_codes`` is K. ``codebook="ema"`` learns the
    codes by moving averages (``decay``, Laplace smoothing ``epsilon``), ``"loss"`` by the
    codebook loss's gradient. ``beta`` weighs the commitment loss. ``restart_below``: a code
    whose moving-average count of assignments per batch falls below it is moved onto a random
    encoder output of the batch (0: never, the paper's algorithm). The encoder and decoder must
    map to and from a grid [B, D, h, w] (default :class:`~vae_zoo.networks_vq.VQEncoder` and
    :class:`~vae_zoo.networks_vq.VQDecoder`). See the module docstring for the objective.
    """

    likelihood_is_bound = True

    def __init__(
        self,
        *args,
        num_codes: int = 256,
        beta: float = 0.25,
        codebook: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_below: float = 1.0,
        **kwargs,
    ) -> None:
        if num_codes < 2:
            raise ConfigError(f"num_codes must be >= 2, got {num_codes}")
        if beta < 0:
            raise ConfigError(f"beta (the commitment weight) must be >= 0, got {beta}")
        if codebook not in CODEBOOK_MODES:
            raise ConfigError(f"codebook must be one of {CODEBOOK_MODES}, got {codebook!r}")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"decay must be in [0, 1), got {decay}")
        if epsilon <= 0:
            raise ConfigError(f"epsilon (the Laplace smoothing) must be > 0, got {epsilon}")
        if restart_below < 0:
            raise ConfigError(f"restart_below must be >= 0 (0: no restarts), got {restart_below}")
        if kwargs.get("kl_schedule") is not None:
            raise ConfigError("the VQ-VAE has no KL term: remove kl_schedule from its config")
        if len(args) < 3:
            kwargs.setdefault("encoder", VQEncoder)
        if len(args) < 4:
            kwargs.setdefault("decoder", VQDecoder)
        super().__init__(*args, **kwargs)
        self.num_codes = num_codes
        self.beta = beta
        self.codebook_mode = codebook
        self.codebook = Codebook(
            num_codes, self.latent_dim, codebook, decay, epsilon, restart_below
        )
        self.grid_shape = self._check_networks()
        self.train_usage = CodeUsage(num_codes)

    def _check_networks(self) -> tuple[int, ...]:
        """The grid (h, w) of the encoder's output, after checking both networks' shapes."""
        x = torch.zeros(1, *self.image_shape)
        with torch.no_grad():
            z_e = self.encoder(x, None)
        if not isinstance(z_e, Tensor) or z_e.dim() < 3 or z_e.shape[1] != self.latent_dim:
            got = tuple(z_e.shape) if isinstance(z_e, Tensor) else type(z_e).__name__
            raise ConfigError(
                f"the VQ-VAE needs an encoder that maps x to a grid of code vectors "
                f"[B, latent_dim={self.latent_dim}, h, w] (vae_zoo.networks_vq.VQEncoder); "
                f"{type(self.encoder).__name__} gives {got}"
            )
        with torch.no_grad():
            params = self.decoder(torch.zeros_like(z_e), None)
        want = self.likelihood.param_shape(self.image_shape)
        if tuple(params.shape[1:]) != tuple(want):
            raise ConfigError(
                f"the VQ-VAE decoder {type(self.decoder).__name__} maps a {tuple(z_e.shape[1:])} "
                f"grid to {tuple(params.shape[1:])}, not the likelihood's {tuple(want)}"
            )
        return tuple(z_e.shape[2:])

    @property
    def objective(self) -> str:
        """What is minimised, for tables (no ELBO: the bound is reported as the NLL)."""
        how = "EMA" if self.codebook_mode == "ema" else "loss-trained"
        # no '|' in it: it goes into markdown table cells
        return f"-recon + codebook + commitment (beta {self.beta:g}, {how} codebook; no KL)"

    @property
    def num_positions(self) -> int:
        """N, the number of latent positions of the grid (49 for 7x7)."""
        return math.prod(self.grid_shape)

    @property
    def prior_description(self) -> str:  # type: ignore[override]
        """The uniform prior over codes (what ``sample`` draws from)."""
        grid = "x".join(map(str, self.grid_shape))
        return f"uniform over the {self.num_codes} codes at each of the {grid} positions"

    # ----------------------------------------------------------------- the model
    def encode(self, x: Tensor, c: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """z_e(x), the encoder's grid [B, D, h, w] (there is no (mu, logvar))."""
        return self.encoder(x, self.condition(c))

    def posterior(self, x: Tensor, c: Tensor | None = None) -> CodePointMass:
        """q(k|x): the point mass on the nearest code at every position of z_e(x)."""
        z_e = self.encode(x, c)
        indices = self.codebook.nearest(z_e)
        return CodePointMass(indices, self.num_codes, z_e, self.codebook.lookup(indices))

    def prior(self, c: Tensor | None = None) -> UniformCodes:
        """p(k): uniform over the K codes, independently at each of the N positions."""
        return UniformCodes(self.num_codes, self.grid_shape, device=self.device)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Likelihood parameters from code indices [B, h, w] or code vectors [B, D, h, w]."""
        if not z.is_floating_point():
            z = self.codebook.lookup(z).to(self.dtype)
        return self.decoder(z, self.condition(c))

    def _forward_pass(self, x: Tensor, c: Tensor | None) -> ForwardPass:
        q = self.posterior(x, c)
        z_e = q.z_e.float()
        z_q = z_e + (q.quantized - z_e).detach()  # value e_k, gradient straight to z_e
        params = self.decoder(z_q.to(self.dtype), self.condition(c))
        recon = self.likelihood.log_prob(params, x)
        return ForwardPass(q, self.prior(c), q.indices, params, recon, None, None)

    def sample_latent(self, n: int, c: Tensor | None = None) -> Tensor:
        """n grids of code indices from the uniform prior p(k) (no learned prior): [n, h, w]."""
        return self.prior(c).sample((n,))

    @torch.no_grad()
    def sample(self, n: int, c: Tensor | int | None = None, mean: bool = True) -> Tensor:
        """Images decoded from uniform codes at every position (not digits): [n, C, H, W]."""
        return super().sample(n, c, mean=mean)

    # ----------------------------------------------------------------- the objective
    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """``loss`` = -recon + codebook + commitment, each [B]; ``perplexity`` a batch scalar."""
        q: CodePointMass = out.posterior  # type: ignore[assignment]
        z_e = q.z_e.float()
        codebook = (z_e.detach() - q.quantized).pow(2).flatten(1).sum(1)
        commitment = self.beta * (z_e - q.quantized.detach()).pow(2).flatten(1).sum(1)
        return {
            "loss": -out.recon + codebook + commitment,
            "recon": out.recon,
            "codebook": codebook,
            "commitment": commitment,
            "perplexity": code_perplexity(q.indices, self.num_codes),
        }

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, c: Tensor | None = None, k: int = 5000) -> Tensor:
        """The bound log p(x|z_q) - N log K on log p(x): [B].

        It is log w = log p(x|z) + log p(k) - log q(k|x) at the posterior's one atom, so every
        one of k importance samples gives the same value: it is computed once, whatever k.
        """
        if k < 1:
            raise ConfigError(f"log_likelihood needs k >= 1, got {k}")
        return self._log_weights(x, c, self.posterior(x, c), self.prior(c), 1)[0]

    # ----------------------------------------------------------------- training and metrics
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Minimise the mean loss; then count the codes used and update the codebook's averages."""
        x, y = self.unpack(batch)
        out = self(x, y)
        loss = self.log_train(self.loss(out, x))
        q: CodePointMass = out.posterior  # type: ignore[assignment]
        self.train_usage.update(q.indices)
        self.codebook.update(q.z_e, q.indices, step=self.global_step)
        return loss

    def on_train_epoch_end(self) -> None:
        """Log the epoch means and ``train/dead_codes_epoch``, the codes the epoch never used."""
        super().on_train_epoch_end()
        if self.train_usage.update_count:
            dead = self.train_usage.compute()  # summed over ranks by torchmetrics
            self.log("train/dead_codes_epoch", dead, sync_dist=False)
        self.train_usage.reset()

    def update_metrics(self, metrics: SplitMetrics, ev: BatchEvaluation) -> None:
        """The split's terms, plus ``dead_codes``: codes used by no example of the split."""
        super().update_metrics(metrics, ev)
        make = functools.partial(CodeUsage, self.num_codes)
        metrics.update_metric("dead_codes", make, ev.out.posterior.indices)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """The code indices [B, h, w] of each image and its reconstruction E[x | z_q]."""
        x, y = self.unpack(batch)
        codes = self.posterior(x, y).indices
        out = {"codes": codes, "reconstruction": self.likelihood.mean(self.decode(codes, y))}
        if y is not None:
            out["y"] = y
        return out
