"""Pictures of a model's latent space, as :class:`~vae_zoo.evaluation.figures.Panel` objects.

* :func:`scatter_panel`: posterior means of labelled images, one colour per class (2-D
  latents as they are, larger ones projected on their first two principal components);
* :func:`interpolation_panel`: images decoded along straight lines between the posterior
  means of pairs of images;
* :func:`~vae_zoo.evaluation.figures.manifold_panel` (2-D latents): the decoded grid of z.

:func:`latent_panels` makes all of them for one model (``latent``, the training image grids
of ``ImageGridLogger``); ``compare`` puts the scatters of all its models side by side.
"""

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display, never opens a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from vae_zoo.evaluation.figures import Panel, grid, manifold_panel  # noqa: E402
from vae_zoo.evaluation.figures import _slug as slug  # noqa: E402
from vae_zoo.evaluation.latent_codes import posterior_mean, posterior_means, project_2d  # noqa: E402
from vae_zoo.models import BaseVAE  # noqa: E402

SCATTER_INCHES = 4.5
SCATTER_COLUMNS = 4  # plots a row in a scatter panel of several runs
INTERPOLATION_PAIRS = 8
INTERPOLATION_STEPS = 10


def figure_image(fig: Figure, dpi: int = 100) -> Tensor:
    """Render a matplotlib figure to an RGB image [3, H, W] in [0, 1], then close it."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


def _class_label(k: int, class_names: Sequence[str] | None) -> str:
    return class_names[k] if class_names and k < len(class_names) else str(k)


def scatter_panel(
    title: str,
    runs: Sequence[tuple[str, Tensor, Tensor | None]],
    class_names: Sequence[str] | None = None,
    file_slug: str = "latents",
) -> Panel:
    """Scatter plots, side by side, of posterior means ``(name, z [N, D], labels [N])`` per run.

    Each subplot's title says how the points were made (the 2-D means, or a PCA of larger ones
    with the variance its two axes keep). At most SCATTER_COLUMNS plots a row: many runs wrap.
    """
    cols = min(len(runs), SCATTER_COLUMNS)
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(SCATTER_INCHES * cols, SCATTER_INCHES * rows), squeeze=False
    )
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    colours = plt.get_cmap("tab10")
    for ax, (name, z, labels) in zip(axes.flat, runs, strict=False):
        points, how = project_2d(z.detach().float().cpu())
        size = 2 if len(points) > 2000 else 6  # thousands of points: small dots show density
        if labels is None:
            ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.5, color="tab:blue")
        else:
            labels = labels.cpu()
            for k in sorted(int(v) for v in labels.unique()):
                chosen = points[labels == k]
                ax.scatter(chosen[:, 0], chosen[:, 1], s=size, alpha=0.5, color=colours(k % 10),
                           label=_class_label(k, class_names))
            ax.legend(fontsize=6, markerscale=4, loc="best", framealpha=0.7)
        axis = ("z1", "z2") if z.shape[1] <= 2 else ("PC1", "PC2")
        ax.set_xlabel(axis[0], fontsize=8)
        ax.set_ylabel(axis[1], fontsize=8)
        ax.tick_params(labelsize=7)
        heading = f"{name}: " if name else ""
        ax.set_title(f"{heading}{how}\n{len(points)} images", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return Panel(title, figure_image(fig), None, file_slug)


def interpolation_pairs(
    y: Tensor | None, n_pairs: int, same_class: bool, seed: int = 0, n: int | None = None
) -> list[tuple[int, int]]:
    """Indices of image pairs to interpolate between, chosen with ``seed``.

    With labels: pair p joins an image of class p mod K with one of the next class (or, with
    ``same_class``, with another image of the same class, for conditional models that decode
    one class at a time). Without labels: random pairs of the ``n`` images.
    """
    gen = torch.Generator().manual_seed(seed)
    if y is None:
        if n is None:
            raise ValueError("interpolation_pairs needs labels or the number of images n")
        order = torch.randperm(n, generator=gen).tolist()
        return [(order[2 * i], order[2 * i + 1]) for i in range(min(n_pairs, n // 2))]
    y = y.cpu()
    classes = sorted(int(v) for v in y.unique())
    members = {k: (y == k).nonzero().flatten() for k in classes}
    members = {k: m[torch.randperm(len(m), generator=gen)].tolist() for k, m in members.items()}
    same_class = same_class or len(classes) == 1
    pairs: list[tuple[int, int]] = []
    for p in range(n_pairs * len(classes)):  # enough attempts to skip classes with few images
        if len(pairs) == n_pairs:
            break
        a, r = classes[p % len(classes)], p // len(classes)
        if same_class:
            if len(members[a]) >= 2 * r + 2:
                pairs.append((members[a][2 * r], members[a][2 * r + 1]))
        else:
            b = classes[(p + 1) % len(classes)]
            if len(members[a]) > r and len(members[b]) > r:
                pairs.append((members[a][r], members[b][r]))
    return pairs


@torch.no_grad()
def interpolation_panel(
    name: str,
    model: BaseVAE,
    x: Tensor,
    y: Tensor | None,
    class_names: Sequence[str] | None = None,
    pairs: int = INTERPOLATION_PAIRS,
    steps: int = INTERPOLATION_STEPS,
    seed: int = 0,
) -> Panel:
    """Rows: an image, E[x|z] at ``steps`` points from its posterior mean to another's, that image.

    A conditional model decodes with the pair's class (both images share it), so its rows
    change style, not class.
    """
    conditional = bool(getattr(model, "num_classes", None))
    chosen = interpolation_pairs(y, pairs, same_class=conditional, seed=seed, n=len(x))
    if not chosen:
        raise ValueError(f"interpolation needs at least 2 images, got {len(x)}")
    a = torch.tensor([i for i, _ in chosen])
    b = torch.tensor([j for _, j in chosen])
    ya = None if y is None else y[a].to(model.device)
    yb = None if y is None else y[b].to(model.device)
    za, zb = posterior_mean(model, x[a], ya), posterior_mean(model, x[b], yb)
    t = torch.linspace(0, 1, steps, device=za.device, dtype=za.dtype)
    z = (1 - t)[None, :, None] * za[:, None] + t[None, :, None] * zb[:, None]  # [P, steps, D]
    labels = None if not conditional else ya.repeat_interleave(steps)
    decoded = model.likelihood.mean(model.decode(z.reshape(-1, z.shape[-1]), labels))
    decoded = decoded.float().cpu().view(len(chosen), steps, *decoded.shape[1:])
    rows = torch.cat([x[a].float().cpu()[:, None], decoded, x[b].float().cpu()[:, None]], 1)
    row_labels = None
    if y is not None:
        row_labels = [
            f"{_class_label(int(y[i]), class_names)} → {_class_label(int(y[j]), class_names)}"
            for i, j in chosen
        ]
    how = "pairs of one class, decoded with it" if conditional else "pairs of test images"
    title = (
        f"{name}: interpolations between posterior means ({how}); first and last column: "
        "the images"
    )
    return Panel(title, grid(rows.flatten(0, 1), nrow=steps + 2), row_labels,
                 f"interpolations_{slug(name)}")


def latent_panels(
    name: str,
    model: BaseVAE,
    x: Tensor,
    y: Tensor | None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, Panel]:
    """The latent figures of a model on images ``x``: latents, manifold (2-D), interpolations."""
    z = posterior_means(model, x, y, batch_size)
    title = f"{name}: posterior means E[z|x] of {len(x)} images, coloured by label"
    panels = {"latents": scatter_panel(title, [(name, z, y)], class_names,
                                       f"latents_{slug(name)}")}
    if model.latent_dim == 2:
        panels["manifold"] = manifold_panel(name, model)
    panels["interpolations"] = interpolation_panel(name, model, x, y, class_names, seed=seed)
    return panels
