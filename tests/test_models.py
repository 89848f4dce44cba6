"""The variants' maths: ELBO parts, reparameterization, IW log-likelihood, CVAE, beta-VAE,
networks, logvar clamp, non-finite losses, and a tiny end-to-end fit of each variant."""

import functools
import math

import lightning as L
import pytest
import torch
from fixed_noise import EpsBank
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.distributions import gaussian_kl
from vae_zoo.errors import ConfigError, NonFiniteLossError
from vae_zoo.likelihoods import Bernoulli, ContinuousBernoulli, Gaussian
from vae_zoo.models import (
    DIPVAE,
    IWAE,
    VAE,
    BaseVAE,
    BetaVAE,
    ConditionalVAE,
    LadderVAE,
    VampPriorVAE,
    list_models,
)
from vae_zoo.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vae_zoo.schedules import KLSchedule, LinearWarmup

ENC = functools.partial(MLPEncoder, hidden_dims=(32,))
DEC = functools.partial(MLPDecoder, hidden_dims=(32,))
CONV_ENC = functools.partial(ConvEncoder, channels=(4, 8), hidden_dim=32)
CONV_DEC = functools.partial(ConvDecoder, channels=(8, 4), hidden_dim=32)


def tiny(cls: type[BaseVAE] = VAE, **kwargs) -> BaseVAE:
    """A small model of ``cls`` (latent_dim 4, one hidden layer of 32) in eval mode."""
    kwargs = {"latent_dim": 4, "encoder": ENC, "decoder": DEC, **kwargs}
    return cls(**kwargs).eval()


def twin(cls_a: type[BaseVAE], cls_b: type[BaseVAE], **kwargs) -> tuple[BaseVAE, BaseVAE]:
    """Two models whose encoder and decoder weights are identical."""
    kw_a = kwargs.pop("a", {})
    kw_b = kwargs.pop("b", {})
    torch.manual_seed(123)
    a = tiny(cls_a, **kwargs, **kw_a)
    torch.manual_seed(123)
    b = tiny(cls_b, **kwargs, **kw_b)
    b.encoder.load_state_dict(a.encoder.state_dict())
    b.decoder.load_state_dict(a.decoder.state_dict())
    return a, b


def _encoder_head(model: BaseVAE) -> torch.nn.Linear:
    """The encoder's last linear layer, whose outputs are (mu, logvar)."""
    return [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]


def seeded(fn, *args, seed: int = 7, **kwargs):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


def test_variants_registry() -> None:
    models = list_models()
    assert {"vae": VAE, "beta_vae": BetaVAE, "cvae": ConditionalVAE}.items() <= models.items()


# --------------------------------------------------------------------------- ELBO parts


@pytest.mark.parametrize("cls", [VAE, ConditionalVAE])
def test_elbo_parts_are_consistent_with_torch_distributions(cls, binary_batch) -> None:
    x, y = binary_batch
    model = tiny(cls)
    out = seeded(model, x, y)
    terms = model.loss(out, x)
    # the KL is the closed form for q(z|x) against N(0, I)
    ref_kl = kl_divergence(Normal(out.mu, torch.exp(0.5 * out.logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(terms["kl"], ref_kl, rtol=1e-5, atol=1e-4)
    # the recon is log p(x | decode(z)) at the very z of the pass
    ref_recon = Bernoulli().log_prob(model.decode(out.z, y), x)
    torch.testing.assert_close(terms["recon"], ref_recon)
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])
    torch.testing.assert_close(terms["loss"], -terms["elbo"])
    # elbo() is terms(forward()) and draws the same z from the same seed
    again = seeded(model.elbo, x, y)
    for name in ("elbo", "recon", "kl", "loss"):
        assert again[name].shape == (x.shape[0],)
        torch.testing.assert_close(again[name], terms[name])


def test_reparameterize_is_mu_plus_sigma_eps() -> None:
    model = tiny()
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    z = seeded(model.reparameterize, mu, logvar, seed=3)
    eps = seeded(torch.randn_like, mu, seed=3)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)
    # and it is a draw from N(mu, sigma^2): check the moments over many draws
    n = 20_000
    zs = model.reparameterize(mu.expand(n, -1, -1), logvar.expand(n, -1, -1))
    sigma = torch.exp(0.5 * logvar)
    assert ((zs.mean(0) - mu).abs() < 5 * sigma / math.sqrt(n)).all()
    assert ((zs.std(0) / sigma - 1).abs() < 0.05).all()


@pytest.mark.parametrize("encoder, decoder", [(ENC, DEC), (CONV_ENC, CONV_DEC)])
def test_recon_gradients_reach_every_encoder_and_decoder_parameter(
    encoder, decoder, binary_batch
) -> None:
    x, _ = binary_batch
    model = tiny(VAE, encoder=encoder, decoder=decoder)
    out = model(x)
    # the recon term alone: its encoder gradients can only flow through z = mu + sigma * eps
    out.recon.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the log-variance half of the encoder head gets gradient through sigma * eps as well
    head = _encoder_head(model)
    assert head.bias.grad[model.latent_dim :].abs().sum() > 0


def test_kl_gradient_is_the_closed_form_one(binary_batch) -> None:
    x, _ = binary_batch
    model = tiny()
    mu, logvar = model.encode(x)
    mu = mu.detach().requires_grad_()
    logvar = logvar.detach().requires_grad_()
    gaussian_kl(mu, logvar).sum().backward()
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1))


def test_logvar_is_clamped_in_encode_and_in_the_kl(binary_batch) -> None:
    x, _ = binary_batch
    model = tiny(VAE, logvar_min=-3.0, logvar_max=2.0)
    head = _encoder_head(model)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, -100.0, 100.0, -1.0, 1.5]))
    mu, logvar = model.encode(x)
    torch.testing.assert_close(logvar, torch.tensor([-3.0, 2.0, -1.0, 1.5]).expand(8, 4))
    out = model(x)
    torch.testing.assert_close(out.kl_per_dim, gaussian_kl(mu, logvar))
    with pytest.raises(ConfigError, match="logvar_min"):
        tiny(VAE, logvar_min=1.0, logvar_max=1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"lr": 0.0}, "lr"),
        ({"val_k": -1}, "val_k"),
        ({"test_k": 0}, "test_k"),
    ],
)
def test_base_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny(VAE, **kwargs)


def test_the_objective_label_names_a_kl_weight_other_than_one() -> None:
    # compare's table says what each run minimised: a VAE trained with KL weight 0.5 did not
    # maximise the ELBO; a warm-up that ends at 1 did
    assert tiny().objective == "ELBO"
    assert tiny(kl_schedule=LinearWarmup(warmup_steps=10)).objective == "ELBO"
    assert tiny(kl_schedule=KLSchedule(0.5)).objective == "-(recon - 0.5*KL)"
    assert tiny(LadderVAE, kl_schedule=KLSchedule(2.0)).objective == "-(recon - 2*KL)"
    vamp = tiny(VampPriorVAE, num_pseudo_inputs=3, kl_schedule=KLSchedule(0.25))
    assert vamp.objective == "-(recon - 0.25*KL), VampPrior K=3, MC KL"
    assert tiny(VampPriorVAE, num_pseudo_inputs=3).objective == "-ELBO, VampPrior K=3, MC KL"
    assert tiny(BetaVAE, beta=4.0).objective == "-(recon - 4*KL)"
    assert tiny(BetaVAE, beta=4.0, kl_schedule=KLSchedule(0.5)).objective == "-(recon - 2*KL)"


# --------------------------------------------------------------------------- IW log-likelihood


def test_iw_k1_equals_the_elbo_in_expectation(binary_batch) -> None:
    x, _ = binary_batch
    model = tiny()
    reps = 400
    xr = x[:4].repeat(reps, 1, 1, 1)  # 400 independent draws for each of 4 images
    ll1 = seeded(model.log_likelihood, xr, k=1).view(reps, 4)
    elbo = seeded(lambda: model.elbo(xr)["elbo"].detach()).view(reps, 4)
    diff = (ll1 - elbo).double()  # paired by the seed, so only the MC KL noise remains
    se = diff.std(0) / math.sqrt(reps)
    assert ((diff.mean(0)).abs() < 5 * se + 1e-4).all(), (diff.mean(0), se)


def _poor_encoder_model() -> BaseVAE:
    """A model whose q(z|x) is narrow and off-centre, so importance sampling has much to gain."""
    model = tiny(VAE, latent_dim=2)
    head = _encoder_head(model)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.copy_(torch.tensor([1.0, -1.0, -2.0, -2.0]))
        # make the decoder depend strongly on z, so the true posterior is far from q
        model.decoder.net[0].weight.mul_(3.0)
    return model


def test_iw_estimate_grows_with_k_and_bounds_the_elbo(binary_batch) -> None:
    x = binary_batch[0][:4]
    model = _poor_encoder_model()
    means, ses = [], []
    # more repetitions where one estimate is cheap and noisy
    for k, reps in ((1, 64), (10, 16), (100, 8), (1000, 4)):
        est = torch.stack([model.log_likelihood(x, k=k) for _ in range(reps)]).double()
        per_rep = est.mean(1)  # batch means, one per repetition
        means.append(per_rep.mean().item())
        ses.append(per_rep.std().item() / math.sqrt(reps))
    for i in range(3):
        noise = 3 * math.hypot(ses[i], ses[i + 1])
        assert means[i + 1] >= means[i] - noise, (means, ses)
    # the gain from 1 to 1000 samples is real, not noise
    assert means[3] - means[0] > 5 * math.hypot(ses[0], ses[3]) + 0.5, (means, ses)
    # NLL <= -ELBO in expectation
    elbo = torch.stack([model.elbo(x)["elbo"].detach() for _ in range(50)]).double().mean()
    assert -means[3] <= -elbo.item()


def _reference_iw(model: BaseVAE, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor):
    """log (1/k) sum_i p(x|z_i) p(z_i|y) / q(z_i|x, y), one sample at a time."""
    mu, logvar = model.encode(x, y)
    q = Normal(mu, torch.exp(0.5 * logvar))
    prior = model.prior(y)
    p = Normal(prior.mu, torch.exp(0.5 * prior.logvar))
    log_w = []
    for e in eps:
        z = mu + torch.exp(0.5 * logvar) * e
        log_px = model.likelihood.log_prob(model.decode(z, y), x)
        log_w.append(log_px + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
    return torch.logsumexp(torch.stack(log_w), 0) - math.log(len(eps))


@pytest.mark.parametrize("iw_rows", [8, 12, 10_000])
def test_iw_chunks_match_a_one_sample_at_a_time_reference(iw_rows: int, monkeypatch) -> None:
    # learned prior with random weights and mixed labels: checks the label/sample alignment too
    model = tiny(ConditionalVAE, num_classes=3, prior="learned", iw_rows=iw_rows)
    with torch.no_grad():
        model.prior_net.weight.normal_(0, 0.5)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    y = torch.tensor([0, 2, 1, 2])
    k = 7  # iw_rows=8 -> chunks of 2, 2, 2, 1; iw_rows=12 -> 3, 3, 1
    bank = EpsBank(torch.randn(k, 4, 4))
    monkeypatch.setattr(model, "posterior", bank.posterior_of(model))
    est = model.log_likelihood(x, y, k=k)
    assert bank.used == k
    with torch.no_grad():
        ref = _reference_iw(model, x, y, bank.eps)
    torch.testing.assert_close(est, ref, rtol=1e-5, atol=1e-4)


def test_iw_rejects_k_below_one(binary_batch) -> None:
    with pytest.raises(ConfigError, match="k >= 1"):
        tiny().log_likelihood(binary_batch[0], k=0)


# --------------------------------------------------------------------------- conditional VAE


def test_cvae_outputs_depend_on_the_label(binary_batch) -> None:
    x, _ = binary_batch
    model = tiny(ConditionalVAE)
    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    assert not torch.allclose(model.encode(x, zeros)[0], model.encode(x, ones)[0])
    z = torch.randn(8, 4)
    assert not torch.allclose(model.decode(z, zeros), model.decode(z, ones))
    assert not torch.allclose(seeded(model.sample, 8, 0), seeded(model.sample, 8, 1))


def test_cvae_int_and_one_hot_labels_are_identical(binary_batch) -> None:
    x, y = binary_batch
    model = tiny(ConditionalVAE, prior="learned")
    with torch.no_grad():
        model.prior_net.weight.normal_(0, 0.3)
    labels = {
        "int": y,
        "one_hot_float": torch.nn.functional.one_hot(y, 10).float(),
        "one_hot_int": torch.nn.functional.one_hot(y, 10),
    }
    results = {
        name: (
            model.encode(x, c),
            seeded(model.elbo, x, c),
            seeded(model.log_likelihood, x, c, k=5),
            seeded(model.sample, 8, c),
        )
        for name, c in labels.items()
    }
    ref = results.pop("int")
    for got in results.values():
        torch.testing.assert_close(got[0], ref[0])
        for name in ("elbo", "recon", "kl", "loss"):
            torch.testing.assert_close(got[1][name], ref[1][name])
        torch.testing.assert_close(got[2], ref[2])
        torch.testing.assert_close(got[3], ref[3])


@pytest.mark.parametrize(
    "c",
    [
        torch.tensor([0, 3]),  # label == num_classes
        torch.tensor([-1, 0]),
        torch.zeros(2, 5),  # one-hot rows of the wrong width
        torch.zeros(2, 4, dtype=torch.long),
        torch.zeros(2),  # float labels are not one-hot rows
    ],
)
def test_cvae_wrong_number_of_classes_raises_config_error(c) -> None:
    model = tiny(ConditionalVAE, num_classes=3)
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ConfigError, match="num_classes=3"):
        model.elbo(x, c)


def test_cvae_needs_labels_and_valid_config() -> None:
    model = tiny(ConditionalVAE)
    with pytest.raises(ConfigError, match="labels"):
        model.elbo(torch.rand(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="num_classes"):
        tiny(ConditionalVAE, num_classes=1)
    with pytest.raises(ConfigError, match="prior"):
        tiny(ConditionalVAE, prior="mixture")


def test_learned_prior_starts_at_standard_normal(binary_batch) -> None:
    x, y = binary_batch
    standard, learned = twin(ConditionalVAE, ConditionalVAE, b={"prior": "learned"})
    prior = learned.prior(y)
    torch.testing.assert_close(prior.mu, torch.zeros(8, 4))
    torch.testing.assert_close(prior.logvar, torch.zeros(8, 4))
    a, b = seeded(standard.elbo, x, y), seeded(learned.elbo, x, y)
    for name in ("elbo", "recon", "kl", "loss"):
        torch.testing.assert_close(a[name], b[name])


def test_learned_prior_kl_is_the_two_gaussian_kl_and_trains(binary_batch) -> None:
    x, y = binary_batch
    model = tiny(ConditionalVAE, prior="learned")
    with torch.no_grad():
        model.prior_net.weight.normal_(0, 0.5)
    out = model(x, y)
    w = model.prior_net.weight.detach()  # [2D, K]; the one-hot input picks column y
    p = Normal(w[:4, y].T, torch.exp(0.5 * w[4:, y].T))
    q = Normal(out.mu, torch.exp(0.5 * out.logvar))
    torch.testing.assert_close(out.kl_per_dim, kl_divergence(q, p), rtol=1e-5, atol=1e-5)
    out.kl_per_dim.sum().backward()
    grad = model.prior_net.weight.grad
    assert grad is not None
    # only the columns of classes present in the batch get gradient
    assert (grad[:, y.unique()].abs().sum(0) > 0).all()
    absent = torch.ones(10, dtype=torch.bool)
    absent[y.unique()] = False
    assert (grad[:, absent] == 0).all()


def test_learned_prior_sample_comes_from_the_class_prior() -> None:
    model = tiny(ConditionalVAE, prior="learned")
    with torch.no_grad():
        model.prior_net.weight[:4].normal_(0, 2.0)
        model.prior_net.weight[4:].fill_(-30.0)  # clamped to logvar_min: sigma = e^-5
    labels = torch.tensor([3, 7, 7])
    z = model.prior_net.weight[:4, labels].T
    expected = model.likelihood.mean(model.decode(z, labels))
    torch.testing.assert_close(model.sample(3, labels), expected, atol=2e-2, rtol=0)


def test_cvae_sample_returns_n_images_in_unit_interval() -> None:
    model = tiny(ConditionalVAE, num_classes=3)
    for c in (None, 2, torch.tensor([0, 1, 2, 2, 0])):
        for mean in (True, False):
            imgs = model.sample(5, c, mean=mean)
            assert imgs.shape == (5, 1, 28, 28)
            assert imgs.min() >= 0 and imgs.max() <= 1
    torch.testing.assert_close(model.labels_for(5, None), torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ConfigError, match="one per sample"):
        model.sample(5, torch.tensor([0, 1]))


# --------------------------------------------------------------------------- beta-VAE


def test_beta_one_is_the_vae(binary_batch) -> None:
    x, _ = binary_batch
    vae, beta = twin(VAE, BetaVAE, b={"beta": 1.0})
    a, b = seeded(vae.elbo, x), seeded(beta.elbo, x)
    for name in ("elbo", "recon", "kl", "loss"):
        torch.testing.assert_close(a[name], b[name])


def test_beta_scales_the_kl_part(binary_batch, monkeypatch) -> None:
    x, _ = binary_batch
    vae, beta = twin(VAE, BetaVAE, b={"beta": 4.0})
    a, b = seeded(vae.elbo, x), seeded(beta.elbo, x)
    torch.testing.assert_close(b["elbo"], a["elbo"])  # the reported ELBO is beta-free
    torch.testing.assert_close(b["loss"], -(a["recon"] - 4.0 * a["kl"]))
    # beta multiplies the KL-schedule weight during training
    warm = tiny(BetaVAE, beta=4.0, kl_schedule=LinearWarmup(10)).train()
    monkeypatch.setattr(BetaVAE, "global_step", property(lambda self: 5))
    t = seeded(warm.elbo, x)
    torch.testing.assert_close(t["loss"], -(t["recon"] - 4.0 * 0.5 * t["kl"]))


def test_capacity_form_tracks_a_linear_kl_target(binary_batch, monkeypatch) -> None:
    x, _ = binary_batch
    model = tiny(BetaVAE, gamma=10.0, capacity_max=20.0, capacity_steps=100)
    step = {"t": 0}
    monkeypatch.setattr(BetaVAE, "global_step", property(lambda self: step["t"]))
    for t, capacity in [(0, 0.0), (25, 5.0), (50, 10.0), (100, 20.0), (1000, 20.0)]:
        step["t"] = t
        assert model.capacity == pytest.approx(capacity)
        terms = seeded(model.elbo, x)
        expected = -(terms["recon"] - 10.0 * (terms["kl"].mean() - capacity).abs())
        torch.testing.assert_close(terms["loss"], expected)
        torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": -0.5}, "beta"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": 1.0, "capacity_max": -1.0}, "capacity_max"),
        ({"gamma": 1.0, "capacity_steps": 0}, "capacity_steps"),
    ],
)
def test_beta_vae_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny(BetaVAE, **kwargs)


def test_variant_hyperparameters_are_saved() -> None:
    assert tiny(BetaVAE, beta=3.0, gamma=2.0).hparams["beta"] == 3.0
    assert tiny(BetaVAE, beta=3.0, gamma=2.0).hparams["gamma"] == 2.0
    cvae = tiny(ConditionalVAE, num_classes=4, prior="learned")
    assert (cvae.hparams["num_classes"], cvae.hparams["prior"]) == (4, "learned")


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("cond_dim", [0, 10])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_network_shapes(image_shape, cond_dim: int, kind: str) -> None:
    enc_cls, dec_cls = (ENC, DEC) if kind == "mlp" else (CONV_ENC, CONV_DEC)
    enc = enc_cls(image_shape, 5, cond_dim)
    dec = dec_cls(5, image_shape, cond_dim)
    x = torch.rand(3, *image_shape)
    c = torch.eye(10)[:3] if cond_dim else None
    mu, logvar = enc(x, c)
    assert mu.shape == logvar.shape == (3, 5)
    assert dec(torch.randn(3, 5), c).shape == (3, *image_shape)


@pytest.mark.parametrize("encoder, decoder", [(ENC, DEC), (CONV_ENC, CONV_DEC)])
def test_gaussian_per_pixel_doubles_the_decoder_channels(encoder, decoder) -> None:
    model = tiny(
        ConditionalVAE,
        image_shape=(3, 32, 32),
        encoder=encoder,
        decoder=decoder,
        likelihood=Gaussian(variance="per_pixel"),
    )
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    out = model(x, y)
    assert out.params.shape == (2, 6, 32, 32)
    assert out.recon.shape == (2,) and torch.isfinite(out.recon).all()
    assert model.sample(4).shape == (4, 3, 32, 32)


def test_conv_networks_reject_sizes_they_cannot_halve() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        ConvEncoder((1, 30, 30), 4)
    with pytest.raises(ConfigError, match="divisible by 4"):
        ConvDecoder(4, (1, 30, 30))
    with pytest.raises(ConfigError, match="activation"):
        MLPEncoder((1, 4, 4), 2, act="swish")


# --------------------------------------------------------------------------- non-finite loss


def _nan_decoder(model: BaseVAE, from_step: int = 0) -> None:
    def hook(module, args, output):
        return output * float("nan") if model.global_step >= from_step else output

    model.decoder.register_forward_hook(hook)


def test_non_finite_loss_names_the_step_and_the_terms(binary_batch) -> None:
    model = tiny().train()
    _nan_decoder(model)
    with pytest.raises(NonFiniteLossError, match=r"global step 0.*recon"):
        model.training_step(binary_batch, 0)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return quiet_trainer(default_root_dir=tmp_path, **kwargs)


def test_non_finite_loss_stops_a_fit_at_the_right_step(tmp_path, binary_batch) -> None:
    model = tiny(val_k=0).train()
    _nan_decoder(model, from_step=2)
    loader = DataLoader(TensorDataset(*binary_batch), batch_size=2)
    with pytest.raises(NonFiniteLossError, match=r"global step 2 .*recon"):
        _trainer(tmp_path, max_steps=10).fit(model, loader)


def test_non_finite_terms_are_found_where_lightning_logs_and_no_checkpoint_holds_them(
    tmp_path, binary_batch
) -> None:
    # the terms are checked on the steps Lightning writes (every 4th here), not every step:
    # the fit stops there, names the first bad step, and a checkpoint is refused before it
    model = tiny(val_k=0).train()
    _nan_decoder(model, from_step=5)
    loader = DataLoader(TensorDataset(*binary_batch), batch_size=1)
    trainer = _trainer(tmp_path, max_steps=20, log_every_n_steps=4, enable_checkpointing=False)
    with pytest.raises(NonFiniteLossError, match=r"global step 5 .*recon"):
        trainer.fit(model, loader)
    assert trainer.global_step == 7  # steps 5 and 6 stepped the optimizer before the check
    with pytest.raises(NonFiniteLossError, match="global step 5"):  # weights past step 5
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()


def test_held_training_terms_are_bounded(tmp_path, binary_batch) -> None:
    model = tiny(val_k=0).train()
    model.MAX_HELD_STEPS = 3
    held = []
    model.on_train_batch_end = lambda *args: held.append(len(model._held_terms))
    loader = DataLoader(TensorDataset(*binary_batch), batch_size=1)
    _trainer(tmp_path, max_steps=10, log_every_n_steps=1000).fit(model, loader)
    # 8 batches an epoch: folded when 3 are held, at the epoch's last batch and at the end
    assert held == [1, 2, 0, 1, 2, 0, 1, 0, 1, 0]


# --------------------------------------------------------------------------- end to end


def _structured_data(n: int, binary: bool) -> TensorDataset:
    """Noisy copies of 4 fixed prototypes, labelled by prototype: learnable in a few steps."""
    gen = torch.Generator().manual_seed(42)
    protos = 0.05 + 0.9 * torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=gen)
    y = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n))
    x = (protos[y] + 0.1 * torch.randn(n, 1, 28, 28, generator=gen)).clamp(0, 1)
    return TensorDataset(torch.bernoulli(x, generator=gen) if binary else x, y)


END_TO_END = {
    "vae": (VAE, {}, True),
    "beta_vae": (BetaVAE, {"beta": 4.0}, True),
    "cvae": (ConditionalVAE, {"num_classes": 4}, True),
    "cvae_learned_prior": (ConditionalVAE, {"num_classes": 4, "prior": "learned"}, True),
    "vae_conv_gaussian": (
        VAE,
        {"encoder": CONV_ENC, "decoder": CONV_DEC, "likelihood": Gaussian("learned")},
        False,
    ),
    "vae_cb": (VAE, {"likelihood": ContinuousBernoulli()}, False),
    "iwae": (IWAE, {"k": 5}, True),
    "vamp_vae": (VampPriorVAE, {"num_pseudo_inputs": 20}, True),
    "dip_vae_ii": (DIPVAE, {"dip_type": "ii"}, True),
}


@pytest.mark.parametrize("name", list(END_TO_END))
def test_end_to_end_fit_validate_test(name: str, tmp_path) -> None:
    cls, kwargs, binary = END_TO_END[name]
    model = tiny(cls, lr=3e-3, val_k=3, test_k=20, **kwargs)
    train, val, test = (_structured_data(n, binary) for n in (256, 64, 64))
    x_train, y_train = train.tensors

    def train_loss() -> float:
        model.eval()
        with torch.no_grad():
            return seeded(model.elbo, x_train, y_train)["loss"].mean().item()

    before = train_loss()
    model.train()
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(
        model,
        DataLoader(train, batch_size=32, shuffle=True),
        DataLoader(val, batch_size=64),
    )
    after = train_loss()
    assert after < before - 0.1 * abs(before), (before, after)

    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/elbo", "train/recon", "train/kl", "train/kl_weight"):
        assert key in metrics, key
    for key in ("loss", "elbo", "recon", "kl", "nll", "bpd"):
        assert torch.isfinite(metrics[f"val/{key}"]), key
    bpd = metrics["val/nll"] / (28 * 28 * math.log(2))
    torch.testing.assert_close(metrics["val/bpd"], bpd)

    result = trainer.test(model, DataLoader(test, batch_size=64), verbose=False)[0]
    nll, elbo = result["test/nll"], result["test/elbo"]
    assert math.isfinite(nll) and math.isfinite(elbo)
    # the IW bound is tighter than the ELBO; the slack covers the one-sample ELBO's noise
    assert nll <= -elbo + max(2.0, 0.005 * abs(elbo)), (nll, -elbo)
