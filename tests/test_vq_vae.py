"""The VQ-VAE: straight-through gradients, its losses by hand, the EMA codebook, its metrics and
bound, and the variant end to end through the CLI (fit, resume, test, predict, compare, sample).
"""

import csv
import functools
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import CONFIGS, TINY, config, run
from PIL import Image
from torch import Tensor
from vq_ddp_support import codebook_of_five, ddp_ema_worker

from vae_zoo.errors import ConfigError
from vae_zoo.evaluation import compare, sample
from vae_zoo.metrics import SplitMetrics
from vae_zoo.models import VQVAE, BaseVAE, ForwardPass
from vae_zoo.models.vq_vae import (
    Codebook,
    CodePointMass,
    CodeUsage,
    UniformCodes,
    code_perplexity,
)
from vae_zoo.networks import MLPEncoder
from vae_zoo.networks_vq import VQDecoder, VQEncoder
from vae_zoo.runs import RUN_DIR_ENV

ENC = functools.partial(VQEncoder, channels=(8,), res_blocks=0)
DEC = functools.partial(VQDecoder, channels=(8,), res_blocks=0)


def small(**kwargs) -> VQVAE:
    """A VQ-VAE of 8x8 images: a 4x4 grid of 3-dimensional vectors, 5 codes."""
    settings = {"latent_dim": 3, "image_shape": (1, 8, 8), "num_codes": 5, "encoder": ENC,
                "decoder": DEC}
    return VQVAE(**{**settings, **kwargs})


def _x(n: int = 6, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.3), generator=gen)


# --------------------------------------------------------------------------- straight-through


@pytest.mark.parametrize("mode", ["ema", "loss"])
def test_straight_through_passes_the_decoders_gradient_to_z_e_unchanged(mode: str) -> None:
    torch.manual_seed(0)
    model = small(codebook=mode)
    seen: list[Tensor] = []

    def keep_input(module, args) -> None:
        args[0].retain_grad()
        seen.append(args[0])

    model.decoder.register_forward_pre_hook(keep_input)
    out = model(_x())
    q = out.posterior
    q.z_e.retain_grad()
    out.recon.sum().backward()  # the decoder's gradient only
    (z_q,) = seen
    # forward: the decoder sees the chosen codes e_k, not z_e
    torch.testing.assert_close(z_q, model.codebook.lookup(q.indices), rtol=0, atol=1e-6)
    assert not torch.allclose(z_q, q.z_e)
    # backward: dL/dz_e equals dL/dz_q exactly, and nothing of it reaches the codebook
    assert z_q.grad is not None and z_q.grad.abs().sum() > 0
    assert torch.equal(q.z_e.grad, z_q.grad)
    emb = model.codebook.embedding
    assert emb.grad is None or not emb.grad.any()


# --------------------------------------------------------------------------- the two losses


def _two_codes(mode: str) -> tuple[VQVAE, Tensor]:
    """Codes e0 = (0, 0), e1 = (2, 0); z_e at two positions: (0.5, 0) and (1.5, 1)."""
    model = VQVAE(latent_dim=2, num_codes=2, codebook=mode, image_shape=(1, 4, 8),
                  encoder=functools.partial(VQEncoder, channels=(4, 4), res_blocks=0),
                  decoder=functools.partial(VQDecoder, channels=(4, 4), res_blocks=0))
    assert model.grid_shape == (1, 2)
    with torch.no_grad():
        model.codebook.embedding.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    # [B=1, D=2, h=1, w=2]: position 0 is (0.5, 0), position 1 is (1.5, 1)
    z_e = torch.tensor([[[[0.5, 1.5]], [[0.0, 1.0]]]], requires_grad=True)
    return model, z_e


def _pass(model: VQVAE, z_e: Tensor) -> ForwardPass:
    indices = model.codebook.nearest(z_e)
    q = CodePointMass(indices, 2, z_e, model.codebook.lookup(indices))
    return ForwardPass(q, model.prior(), indices, torch.zeros(1), torch.zeros(1), None, None)


def test_codebook_and_commitment_losses_on_a_hand_worked_two_code_example() -> None:
    # By hand: (0.5, 0) is nearest e0 at squared distance 0.25 (e1: 2.25); (1.5, 1) is nearest
    # e1 at 0.25 + 1 = 1.25 (e0: 2.25 + 1 = 3.25). codebook = 0.25 + 1.25 = 1.5,
    # commitment = 0.25 * 1.5 = 0.375, loss = -0 + 1.5 + 0.375 = 1.875.
    model, z_e = _two_codes("loss")
    out = _pass(model, z_e)
    assert out.posterior.indices.tolist() == [[[0, 1]]]
    terms = model.loss(out, torch.zeros(1, 1, 4, 8))
    assert terms["codebook"].item() == pytest.approx(1.5)
    assert terms["commitment"].item() == pytest.approx(0.375)
    assert terms["loss"].item() == pytest.approx(1.875)
    assert "kl" not in terms and "elbo" not in terms

    # d codebook / d e0 = -2 (z0 - e0) = (-1, 0); d / d e1 = -2 (z1 - e1) = -2 (-0.5, 1) = (1, -2);
    # sg[z_e]: no gradient to the encoder
    terms["codebook"].sum().backward(retain_graph=True)
    assert model.codebook.embedding.grad.tolist() == [[-1.0, 0.0], [1.0, -2.0]]
    assert z_e.grad is None
    # d commitment / d z0 = 0.25 * 2 (z0 - e0) = (0.25, 0); d / d z1 = 0.5 (z1 - e1) = (-0.25, 0.5);
    # sg[e]: no gradient to the codebook
    model.codebook.embedding.grad = None
    terms["commitment"].sum().backward()
    assert z_e.grad[0, :, 0, 0].tolist() == [0.25, 0.0]
    assert z_e.grad[0, :, 0, 1].tolist() == [-0.25, 0.5]
    assert model.codebook.embedding.grad is None or not model.codebook.embedding.grad.any()


def test_with_an_ema_codebook_the_codebook_term_is_a_value_without_gradient() -> None:
    model, z_e = _two_codes("ema")
    terms = model.loss(_pass(model, z_e), torch.zeros(1, 1, 4, 8))
    assert terms["codebook"].item() == pytest.approx(1.5)
    assert terms["loss"].item() == pytest.approx(1.875)  # the same formula as mode="loss"
    assert not terms["codebook"].requires_grad
    assert not any(p is model.codebook.embedding for p in model.parameters())


# --------------------------------------------------------------------------- the EMA update


def test_ema_update_follows_its_formula() -> None:
    decay, eps = 0.9, 0.1  # large enough that leaving out the smoothing would show
    book = Codebook(3, 2, "ema", decay=decay, eps=eps)
    count = [2.0, 0.5, 1.0]
    sums = [[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]]
    with torch.no_grad():
        book.ema_count.copy_(torch.tensor(count))
        book.ema_sum.copy_(torch.tensor(sums))
    # four vectors on a 2x2 grid: codes 0, 0, 2, 0 (code 1 unused)
    vectors = [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [1.0, 1.0]]
    z_e = torch.tensor(vectors).T.reshape(1, 2, 2, 2)
    assignment = [0, 0, 2, 0]
    book.update(z_e, torch.tensor(assignment).reshape(1, 2, 2))  # restart_below=0: no restarts

    n = [sum(1.0 for a in assignment if a == j) for j in range(3)]
    s = [[sum(v[d] for v, a in zip(vectors, assignment, strict=True) if a == j) for d in range(2)]
         for j in range(3)]
    new_count = [decay * count[j] + (1 - decay) * n[j] for j in range(3)]
    new_sum = [[decay * sums[j][d] + (1 - decay) * s[j][d] for d in range(2)] for j in range(3)]
    total = sum(new_count)
    smoothed = [(new_count[j] + eps) / (total + 3 * eps) * total for j in range(3)]
    codes = [[new_sum[j][d] / smoothed[j] for d in range(2)] for j in range(3)]

    torch.testing.assert_close(book.ema_count, torch.tensor(new_count))
    torch.testing.assert_close(book.ema_sum, torch.tensor(new_sum))
    torch.testing.assert_close(book.embedding, torch.tensor(codes))


def test_the_loss_codebook_keeps_only_the_counts() -> None:
    book = Codebook(3, 2, "loss", decay=0.9)
    codes = book.embedding.detach().clone()
    z_e = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    book.update(z_e, torch.tensor([[[2, 2]]]))
    torch.testing.assert_close(book.ema_count, torch.tensor([0.9, 0.9, 0.9 + 0.1 * 2]))
    assert torch.equal(book.embedding, codes)  # the optimizer moves these codes, not the EMA


def test_dead_codes_restart_on_batch_vectors_drawn_by_the_step() -> None:
    book = Codebook(4, 2, "ema", decay=0.5, restart_below=1.0)
    with torch.no_grad():
        book.ema_count.copy_(torch.tensor([4.0, 1.5, 4.0, 1.0]))
    plain = Codebook(4, 2, "ema", decay=0.5)  # the same state, no restarts
    plain.load_state_dict(book.state_dict())
    vectors = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    z_e = vectors.T.reshape(1, 2, 1, 3)
    # code 0 gets all three: N = 0.5 * (4, 1.5, 4, 1) + 0.5 * (3, 0, 0, 0) = (3.5, 0.75, 2, 0.5)
    book.update(z_e, torch.zeros(1, 1, 3, dtype=torch.long), step=7)
    restarted = [1, 3]
    assert book.ema_count.tolist() == [3.5, 1.0, 2.0, 1.0]
    pick = torch.randint(3, (2,), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(book.embedding[restarted], vectors[pick])
    torch.testing.assert_close(book.ema_sum[restarted], vectors[pick])
    # the others are the EMA update's (whose formula is checked above)
    plain.update(z_e, torch.zeros(1, 1, 3, dtype=torch.long), step=7)
    assert torch.equal(book.embedding[[0, 2]], plain.embedding[[0, 2]])


def test_the_ema_state_starts_consistent_and_evaluation_leaves_it_alone() -> None:
    torch.manual_seed(0)
    model = small()
    book = model.codebook
    # N = 1 and m = e: the smoothed sizes are 1, so m / N~ is the initial codebook
    assert torch.equal(book.ema_count, torch.ones(5)) and torch.equal(book.ema_sum, book.embedding)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    model.evaluate_batch(_x(), None, k=3)
    model.reconstruct(_x())
    model.predict_step((_x(), torch.zeros(6).long()), 0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert {"codebook.embedding", "codebook.ema_count", "codebook.ema_sum"} <= set(before)


def test_distances_are_float32_under_bf16_autocast() -> None:
    # codes 1 and 1 + 2^-10 are one code in bfloat16 (8 mantissa bits): a bf16 distance would
    # tie them and argmin would pick code 0; in float32 the vector 1 + 2^-10 is exactly code 1
    book = Codebook(2, 1, "ema")
    with torch.no_grad():
        book.embedding.copy_(torch.tensor([[1.0], [1.0 + 2**-10]]))
    z_e = torch.full((1, 1, 1, 1), 1.0 + 2**-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert book.nearest(z_e).item() == 1
        book.update(z_e.to(torch.bfloat16), torch.ones(1, 1, 1, dtype=torch.long))
    assert book.ema_sum.dtype == torch.float32 and book.embedding.dtype == torch.float32


# --------------------------------------------------------------------------- metrics


def test_perplexity_against_a_naive_count() -> None:
    indices = torch.tensor([[0, 0, 3], [3, 3, 1], [0, 3, 3]])  # code 2 and 4 unused
    counts = {}
    for k in indices.flatten().tolist():
        counts[k] = counts.get(k, 0) + 1
    entropy = -sum(c / 9 * math.log(c / 9) for c in counts.values())
    assert code_perplexity(indices, 5).item() == pytest.approx(math.exp(entropy))
    assert code_perplexity(torch.zeros(4, dtype=torch.long), 5).item() == pytest.approx(1.0)
    assert code_perplexity(torch.arange(5), 5).item() == pytest.approx(5.0)


def test_dead_codes_are_counted_over_the_whole_split() -> None:
    # every batch misses codes, but together they use all but codes 5 and 6
    batches = [torch.tensor([[0, 1], [1, 0]]), torch.tensor([[2, 3]]), torch.tensor([[4, 4]])]
    metrics = SplitMetrics()
    for b in batches:
        metrics.update({"loss": torch.zeros(len(b))})
        metrics.update_metric("dead_codes", functools.partial(CodeUsage, 7), b)
    used = {k for b in batches for k in b.flatten().tolist()}
    assert metrics.compute()["dead_codes"] == 7 - len(used) == 2
    metrics.reset()
    metrics.update({"loss": torch.zeros(1)})
    metrics.update_metric("dead_codes", functools.partial(CodeUsage, 7), torch.tensor([[6]]))
    assert metrics.compute()["dead_codes"] == 6


def test_metrics_of_a_discrete_latent_have_no_kl_or_active_units() -> None:
    torch.manual_seed(0)
    model = small().eval()
    metrics = SplitMetrics()
    x = _x()
    for half in (x[:3], x[3:]):
        model.update_metrics(metrics, model.evaluate_batch(half, None, k=4))
    values = metrics.compute()
    assert {"loss", "recon", "codebook", "commitment", "perplexity", "nll", "bpd", "mse",
            "dead_codes"} == set(values)
    indices = model.posterior(x).indices
    assert values["dead_codes"] == 5 - len(set(indices.flatten().tolist()))


# --------------------------------------------------------------------------- the bound


def test_the_bound_is_log_p_x_given_z_q_minus_n_log_k() -> None:
    torch.manual_seed(0)
    model = small(num_codes=8).eval()
    x = _x()
    with torch.no_grad():
        codes = model.posterior(x).indices
        recon = model.likelihood.log_prob(model.decoder(model.codebook.lookup(codes)), x)
    bound = recon - 16 * math.log(8)  # a 4x4 grid, K = 8
    torch.testing.assert_close(model.log_likelihood(x, k=7), bound)
    torch.testing.assert_close(model.log_likelihood(x, k=1), bound)
    ev = model.evaluate_batch(x, None, k=50)
    torch.testing.assert_close(ev.terms["nll"], -bound)
    torch.testing.assert_close(ev.terms["bpd"], -bound / (64 * math.log(2)))
    torch.testing.assert_close(ev.terms["recon"], recon)
    # the mse decodes z_q
    mean = model.likelihood.mean(model.decoder(model.codebook.lookup(codes)))
    torch.testing.assert_close(ev.terms["mse"], (mean - x).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(model.reconstruct(x), mean)
    assert VQVAE.likelihood_is_bound and VQVAE.has_likelihood


def test_the_distributions_of_the_contract() -> None:
    idx = torch.tensor([[[1, 2], [0, 1]]])
    q = CodePointMass(idx, 3, torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    assert q.support.is_discrete and q.batch_shape == (1,) and q.event_shape == (2, 2)
    assert q.log_prob(idx).tolist() == [0.0]
    other = idx.clone()
    other[0, 1, 1] = 2
    assert q.log_prob(other).tolist() == [-math.inf]
    assert q.sample((4,)).shape == (4, 1, 2, 2)
    p = UniformCodes(3, (2, 2))
    assert p.support.is_discrete
    assert p.log_prob(idx).item() == pytest.approx(-4 * math.log(3))
    draws = p.sample((2000,))
    assert draws.shape == (2000, 2, 2) and set(draws.unique().tolist()) == {0, 1, 2}
    # uniform: each code about a third of the 8000 positions (6 sigma is about 250)
    assert (torch.bincount(draws.flatten(), minlength=3) - 8000 / 3).abs().max() < 250


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_codes": 1}, "num_codes"),
        ({"beta": -0.1}, "beta"),
        ({"codebook": "kmeans"}, "codebook"),
        ({"decay": 1.0}, "decay"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"encoder": MLPEncoder}, "grid of code vectors"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        small(**kwargs)


def test_the_settings_are_saved_for_loading() -> None:
    model = small(num_codes=7, codebook="loss", beta=0.5, decay=0.9, restart_below=0.0)
    saved = {k: model.hparams[k] for k in ("num_codes", "codebook", "beta", "decay",
                                           "restart_below")}
    assert saved == {"num_codes": 7, "codebook": "loss", "beta": 0.5, "decay": 0.9,
                     "restart_below": 0.0}


def test_a_kl_schedule_is_refused() -> None:
    from vae_zoo.schedules import LinearWarmup

    with pytest.raises(ConfigError, match="no KL"):
        small(kl_schedule=LinearWarmup(warmup_steps=10))


# --------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ema_statistics_are_summed_over_ranks_and_restarts_agree(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(1)
    data = torch.rand(6, 2, 3, 3, generator=gen) * 1.4 - 0.2
    mp.start_processes(ddp_ema_worker, args=(str(tmp_path), data), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # one process, the whole batch: the same moving averages; the restart of code 4 (N = 0.5)
    # draws from rank 0's half of the batch
    one = codebook_of_five(restart_below=0.0)
    one.update(data, one.nearest(data))
    assert one.ema_count[4] < 1.0
    one.restart_below = 1.0
    assert 4 in one.restart_dead(one._flat(data[:3]), step=5).tolist()
    for name, value in one.state_dict().items():
        for state in ranks:
            torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6)
    # a half alone moves the codes differently: the all-reduce is what makes the ranks agree
    alone = codebook_of_five(restart_below=0.0)
    alone.update(data[:3], alone.nearest(data[:3]))
    assert not torch.allclose(alone.embedding[:4], one.embedding[:4])


# --------------------------------------------------------------------------- through the CLI

RUN = Path("runs/mnist/vq_vae/version_0")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _columns(path: Path) -> set[str]:
    return {k for row in _rows(path) for k, v in row.items() if v}


def test_fit_validate_test_predict_compare_and_sample_through_the_cli(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--config", config("mnist", "vq_vae"), *TINY, "--trainer.log_every_n_steps=1"]
    assert run("fit", *args) == 0
    logged = _columns(RUN / "metrics.csv")
    for key in ("loss", "recon", "codebook", "commitment", "perplexity"):
        assert {f"train/{key}", f"train/{key}_epoch", f"val/{key}"} <= logged, key
    assert {"train/dead_codes_epoch", "val/dead_codes", "val/nll", "val/bpd", "val/mse"} <= logged
    absent = {f"{s}/{k}" for s in ("train", "val") for k in ("kl", "elbo", "kl_weight",
                                                             "active_units", "kl_dim_max")}
    assert not logged & absent
    ckpt = RUN / "checkpoints" / "best.ckpt"
    assert type(BaseVAE.load_from_checkpoint(ckpt)) is VQVAE

    assert run("validate", "--ckpt_path", str(ckpt), *TINY) == 0
    (val_row,) = [r for r in _rows(RUN / "validate" / "metrics.csv") if r.get("val/nll")]
    assert "val/dead_codes" in val_row and not val_row.get("val/kl")

    assert run("test", "--ckpt_path", str(ckpt), *TINY) == 0
    (test_row,) = [r for r in _rows(RUN / "test" / "metrics.csv") if r.get("test/nll")]
    assert float(test_row["test/nll"]) > 49 * math.log(256)  # -log p(x|z_q) >= 0 on 0/1 pixels
    assert "test/dead_codes" in test_row and not test_row.get("test/kl")

    assert run("predict", "--ckpt_path", str(ckpt), *TINY) == 0
    predictions = torch.load(RUN / "predict" / "predictions.pt")
    assert predictions["codes"].dtype == torch.long
    assert predictions["codes"].shape == (40, 7, 7)  # 2 batches of 20 test images
    assert int(predictions["codes"].max()) < 256
    assert predictions["reconstruction"].shape == (40, 1, 28, 28)

    out = workdir / "compare"
    argv = [str(RUN), "--out", str(out), "--k", "3", "--n-test", "20", "--device", "cpu",
            "--classifier", "none"]
    assert compare.main(argv) == 0
    row = json.loads((out / "comparison.json").read_text())["runs"][0]
    assert row["variant"] == "vq_vae" and row["nll_is_bound"] is True
    for key in ("kl", "elbo", "active_units", "kl_dim_max", "mmd_qp", "tc_q"):
        assert row[key] is None, key
    assert row["dead_codes"] >= 0 and row["perplexity"] >= 1 and row["mse"] > 0
    assert row["kl_per_dim"] is None and row["mu_variance"] is None
    table = (out / "comparison.md").read_text()
    assert f"{row['nll']:.2f} (bound)" in table
    assert (out / "comparison.png").is_file()
    capsys.readouterr()

    png = workdir / "samples.png"
    assert sample.main([str(RUN), "--n", "16", "--out", str(png), "--device", "cpu"]) == 0
    with Image.open(png) as image:
        assert image.size == (4 * 30 + 2, 4 * 30 + 2)
    assert "z ~ uniform over the 256 codes at each of the 7x7 positions" in capsys.readouterr().err


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_restores_the_codebook_and_the_optimizer_exactly(workdir: Path) -> None:
    # deterministic training data (static binarization, a seeded order): two epochs in one go
    # and one epoch then a resume to two must end in the same state, bit for bit
    args = ["--config", config("mnist", "vq_vae"), *TINY, "--trainer.limit_train_batches=3",
            "--data.binarize=static"]
    assert run("fit", *args, "--trainer.max_epochs=2") == 0
    assert run("fit", *args, "--trainer.max_epochs=1") == 0
    resumed_dir = Path("runs/mnist/vq_vae/version_1")
    first_epoch = _state(resumed_dir / "checkpoints/last.ckpt")
    assert first_epoch["global_step"] == 3
    assert run("fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last") == 0
    straight, resumed = (_state(d / "checkpoints/last.ckpt") for d in (RUN, resumed_dir))
    assert straight["global_step"] == resumed["global_step"] == 6

    weights = straight["state_dict"]
    assert {"codebook.embedding", "codebook.ema_count", "codebook.ema_sum"} <= set(weights)
    # the EMA state moved during the second epoch, so restoring it is not trivially right
    moved = first_epoch["state_dict"]["codebook.ema_sum"]
    assert not torch.equal(weights["codebook.ema_sum"], moved)
    for name, value in weights.items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    (adam_a,), (adam_b,) = straight["optimizer_states"], resumed["optimizer_states"]
    assert adam_a["state"].keys() == adam_b["state"].keys()
    for i, state in adam_a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(adam_b["state"][i][key]))


def test_codebook_by_its_loss_and_bf16_mixed_through_the_cli(workdir: Path) -> None:
    args = ["--config", config("mnist", "vq_vae"), "--config", config("trainer", "bf16-mixed"),
            *TINY, "--model.init_args.codebook=loss"]
    assert run("fit", *args) == 0
    ckpt = _state(RUN / "checkpoints/last.ckpt")
    assert {"codebook.embedding", "codebook.ema_count"} <= set(ckpt["state_dict"])
    assert "codebook.ema_sum" not in ckpt["state_dict"]
    assert ckpt["state_dict"]["codebook.embedding"].dtype == torch.float32
    (row,) = [r for r in _rows(RUN / "metrics.csv") if r.get("val/loss")]
    assert math.isfinite(float(row["val/loss"])) and math.isfinite(float(row["val/nll"]))


def test_the_fashion_mnist_config_trains(workdir: Path) -> None:
    assert run("fit", "--config", config("fashion_mnist", "vq_vae"), *TINY) == 0
    saved = yaml.safe_load(Path("runs/fashion_mnist/vq_vae/version_0/config.yaml").read_text())
    assert saved["data"]["binarize"] == "none"
    assert saved["model"]["class_path"] == "vae_zoo.models.VQVAE"


def test_the_model_piece_on_the_vae_experiment_is_the_vq_vae_experiment(
    capsys: pytest.CaptureFixture,
) -> None:
    # the composable form: the VAE's experiment, then the piece with what differs from it
    piece = str(CONFIGS / "model" / "vq_vae.yaml")
    assert run("fit", "--config", config("mnist", "vae"), "--config", piece, "--print_config") == 0
    composed = yaml.safe_load(capsys.readouterr().out)["model"]
    assert run("fit", "--config", config("mnist", "vq_vae"), "--print_config") == 0
    assert composed == yaml.safe_load(capsys.readouterr().out)["model"]
    assert composed["class_path"] == "vae_zoo.models.VQVAE"


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_fit_keeps_one_codebook_on_both_ranks(tmp_path: Path) -> None:
    """Two CPU ranks through the CLI on real MNIST; each rank saves its codebook at the end."""
    import subprocess
    import sys

    data = os.environ.get("VAE_ZOO_DATA")
    if not data or not (Path(data) / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs the real data: set VAE_ZOO_DATA to the folder holding mnist/")
        pytest.skip("real MNIST not found: set VAE_ZOO_DATA")
    root = Path(__file__).resolve().parents[1]
    callback = ('[{"class_path": "vq_ddp_support.SaveCodebook", "init_args": {"folder": "'
                f'{tmp_path}"}}}}]')
    args = ["fit", "--config", config("mnist", "vq_vae"), "--trainer.accelerator=cpu",
            "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=run",
            "--data.batch_size=32", "--data.val_size=1000", f"--trainer.callbacks={callback}",
            # no restarts, so the counts below are exact (the restarts' broadcast is checked by
            # test_ema_statistics_are_summed_over_ranks_and_restarts_agree)
            "--model.init_args.restart_below=0"]
    env = {**os.environ, "VAE_ZOO_DATA": str(Path(data).resolve()),
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    for inherited in ("LOCAL_RANK", RUN_DIR_ENV):
        env.pop(inherited, None)
    proc = subprocess.run([sys.executable, "-m", "vae_zoo", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    books = [torch.load(tmp_path / f"codebook_rank{r}.pt") for r in range(2)]
    for name in ("embedding", "ema_count", "ema_sum"):
        assert torch.equal(books[0][name], books[1][name]), name
    # three steps of 2 x 32 images of 49 positions, counted into N with weight (1 - decay):
    # the counts of both ranks (one rank's alone would add half)
    added = books[0]["ema_count"].sum() - 256 * 0.99**3
    assert added.item() == pytest.approx(0.01 * 2 * 32 * 49 * (1 + 0.99 + 0.99**2), rel=1e-4)
