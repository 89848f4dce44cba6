"""Figures of ``compare``: image panels (torchvision grids) and training curves (matplotlib).

A :class:`Panel` is one titled image grid with optional row labels; :func:`save_figure` stacks
panels and the curve plot into one PNG, and :func:`save_panel` writes one panel on its own.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display, never opens a window

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from vae_zoo.evaluation.latent_codes import posterior_mean, prior_latents  # noqa: E402
from vae_zoo.models import BaseVAE  # noqa: E402

PAD = 2
CURVE_KEYS = ("val/elbo", "val/loss")


@dataclass
class Panel:
    """A titled image grid ([3, H, W] in [0, 1]) whose rows may carry labels."""

    title: str
    image: Tensor
    row_labels: Sequence[str] | None = None
    slug: str = "panel"

    @property
    def rows(self) -> int:
        """Number of image rows in the grid (for placing row labels)."""
        return len(self.row_labels) if self.row_labels else 1


def grid(images: Tensor, nrow: int) -> Tensor:
    """Images [N, C, H, W] in [0, 1] -> one grid [3, H', W'], white padding, ``nrow`` a row."""
    images = images.detach().float().cpu().clamp(0, 1)
    return make_grid(images, nrow=nrow, padding=PAD, pad_value=1.0)


def _mean_images(model: BaseVAE, z: Tensor, labels: Tensor | None) -> Tensor:
    return model.likelihood.mean(model.decode(z, labels))


@torch.no_grad()
def reconstructions(model: BaseVAE, x: Tensor, y: Tensor | None) -> Tensor:
    """Mean reconstructions E[x | z = mu] of ``x`` (on the model's device, returned on CPU)."""
    y = None if y is None else y.to(model.device)
    x = x.to(model.device, model.dtype)
    return model.reconstruct(x, y).cpu()


def reconstruction_panel(
    title: str, x: Tensor, recons: Sequence[tuple[str, Tensor]], slug: str = "reconstructions"
) -> Panel:
    """Originals (first row) above every model's reconstructions of them (one row each)."""
    rows = [x.cpu(), *(r for _, r in recons)]
    return Panel(
        title, grid(torch.cat(rows), nrow=len(x)), ["input", *(n for n, _ in recons)], slug
    )


def samples_panel(
    title: str, samples: Sequence[tuple[str, Tensor]], slug: str = "samples"
) -> Panel:
    """One row of prior samples per model (all rows must hold the same number of images)."""
    image = grid(torch.cat([s for _, s in samples]), nrow=len(samples[0][1]))
    return Panel(title, image, [name for name, _ in samples], slug)


@torch.no_grad()
def traversal_panel(
    name: str,
    model: BaseVAE,
    x0: Tensor,
    y0: Tensor | None,
    kl_per_dim: Sequence[float],
    max_dims: int = 8,
    steps: int = 9,
    span: float = 3.0,
) -> Panel:
    """Decode mu(x0) with one latent unit set to values in [-span, span], for the top-KL units."""
    order = sorted(range(len(kl_per_dim)), key=lambda d: -kl_per_dim[d])[:max_dims]
    x0 = x0[:1].to(model.device)
    y0 = None if y0 is None else y0[:1].to(model.device)
    mu = posterior_mean(model, x0, y0)
    values = torch.linspace(-span, span, steps, device=model.device)
    rows = []
    for d in order:
        z = mu.repeat(steps, 1)
        z[:, d] = values
        labels = None if y0 is None else y0.repeat(steps)
        rows.append(_mean_images(model, z, labels).cpu())
    labels = [f"z{d} ({kl_per_dim[d]:.2f} nats)" for d in order]
    title = f"{name}: traversals of the {len(order)} highest-KL units, z in [-{span:g}, {span:g}]"
    return Panel(title, grid(torch.cat(rows), nrow=steps), labels, f"traversals_{_slug(name)}")


@torch.no_grad()
def class_grid_panel(
    name: str, model: BaseVAE, class_names: Sequence[str] | None = None, per_class: int = 10
) -> Panel:
    """One row per class; each column shares its noise, so columns show style and rows class.

    A prior that is no reparameterized Gaussian (a VampPrior per class) has no shared noise:
    each row then holds draws z ~ p(z|c) of its own class.
    """
    num_classes = model.num_classes
    eps = torch.randn(per_class, model.latent_dim, device=model.device)
    shared = True
    rows = []
    for k in range(num_classes):
        labels = torch.full((per_class,), k, dtype=torch.long, device=model.device)
        from_noise = getattr(model.prior(labels), "from_noise", None)  # the prior built once
        if from_noise is None:
            shared, z = False, model.sample_latent(per_class, labels)
        else:
            z = from_noise(eps)
        rows.append(_mean_images(model, z, labels).cpu())
    names = list(class_names) if class_names and len(class_names) == num_classes else None
    row_labels = names or [str(k) for k in range(num_classes)]
    how = "same z in each column" if shared else "z ~ p(z|c), drawn per row"
    title = f"{name}: class-conditional samples ({how})"
    return Panel(title, grid(torch.cat(rows), nrow=per_class), row_labels, f"classes_{_slug(name)}")


@torch.no_grad()
def manifold_panel(name: str, model: BaseVAE, n: int = 15) -> Panel:
    """For a 2-D latent: images decoded on an n x n grid of prior quantiles (5% to 95%)."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")  # z2 grows upwards, as in a plot
    eps = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).to(model.device, model.dtype)
    labels = None
    note = ""
    if model.num_classes:
        labels = torch.zeros(len(eps), dtype=torch.long, device=model.device)
        note = " (class 0)"
    images = _mean_images(model, prior_latents(model, eps, labels), labels).cpu()
    title = f"{name}: 2-D latent manifold{note}, prior quantiles 0.05..0.95"
    return Panel(title, grid(images, nrow=n), None, f"manifold_{_slug(name)}")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_") or "run"


def _show(ax: plt.Axes, panel: Panel) -> None:
    img = panel.image.permute(1, 2, 0).numpy()
    ax.imshow(img, interpolation="nearest")
    ax.set_title(panel.title, fontsize=9, loc="left")
    ax.set_xticks([])
    if panel.row_labels:
        cell = (img.shape[0] - PAD) / len(panel.row_labels)
        ax.set_yticks([PAD + cell * (i + 0.5) for i in range(len(panel.row_labels))])
        ax.set_yticklabels(panel.row_labels, fontsize=7)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_curves(
    axes: Sequence[plt.Axes], curves: dict[str, dict[str, list[tuple[float, float]]]]
) -> bool:
    """Overlay ``val/elbo`` and ``val/loss`` against epoch, one line per run; False if none."""
    drawn = False
    for ax, key in zip(axes, CURVE_KEYS, strict=True):
        for name, columns in curves.items():
            points = [(e, v) for e, v in columns.get(key, []) if not math.isnan(e)]
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, marker="o" if len(points) < 20 else None, ms=3, label=name)
                drawn = True
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{key} (nats)")
        ax.set_title(f"{key} during training", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return drawn


def curves_figure(curves: dict[str, dict[str, list[tuple[float, float]]]]) -> Figure | None:
    """A figure with the training curves of every run that logged them, or None."""
    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(12, 3.5))
    if not plot_curves(axes, curves):
        plt.close(fig)
        return None
    fig.tight_layout()
    return fig


def save_panel(panel: Panel, path: Path) -> Path:
    """Write one panel's image grid as a PNG (no labels, full resolution)."""
    save_image(panel.image, path)
    return path


def save_figure(
    panels: Sequence[Panel],
    curves: dict[str, dict[str, list[tuple[float, float]]]],
    path: Path,
    width: float = 12.0,
) -> Path:
    """Stack the panels (and the training curves when any run logged them) into one PNG."""
    has_curves = any(any(cols.get(k) for k in CURVE_KEYS) for cols in curves.values())
    heights = [
        min(max(width * 0.75 * p.image.shape[1] / p.image.shape[2], 1.2), 14.0) + 0.4
        for p in panels
    ]
    if has_curves:
        heights.append(3.5)
    fig = plt.figure(figsize=(width, sum(heights)))
    spec = fig.add_gridspec(len(heights), 2 if has_curves else 1, height_ratios=heights)
    for i, panel in enumerate(panels):
        _show(fig.add_subplot(spec[i, :]), panel)
    if has_curves:
        row = len(panels)
        plot_curves([fig.add_subplot(spec[row, 0]), fig.add_subplot(spec[row, 1])], curves)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
