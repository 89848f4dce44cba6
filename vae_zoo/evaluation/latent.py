"""``python -m vae_zoo latent RUN --out DIR``: pictures of one trained model's latent space.

Writes to ``DIR``:

* ``latents.png``: the posterior means E[z|x] of the test images, coloured by label (a 2-D
  latent as it is; a larger one projected on its first two principal components, said so in
  the title);
* ``manifold.png`` (2-D latents only): images decoded on a grid of prior quantiles;
* ``interpolations.png``: images decoded along straight lines between the posterior means of
  pairs of test images;
* ``latent.png``: the three stacked, with titles.

``--wandb`` also logs them to W&B (offline without credentials).
"""

import argparse
import sys
from pathlib import Path

import lightning as L

from vae_zoo.cli.flags import add_test_set_flags, add_wandb_flags
from vae_zoo.errors import ConfigError, exit_status
from vae_zoo.evaluation import figures
from vae_zoo.evaluation.compare import load_test_set, run_data_settings
from vae_zoo.evaluation.latent_codes import latent_is_continuous
from vae_zoo.evaluation.latent_figures import latent_panels
from vae_zoo.evaluation.loading import load_run, resolve_device
from vae_zoo.evaluation.wandb_upload import log_to_wandb

PROG = "python -m vae_zoo latent"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``latent``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Draw a trained model's latent space: test posterior means by label, the "
        "decoded manifold (2-D latents) and interpolations between test images.",
    )
    p.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder or a .ckpt file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair choice (%(default)s)")
    add_test_set_flags(p, 500, "encoder batch", runs="run")
    add_wandb_flags(p, "the figures")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``latent``; returns the exit status (2 with one error line on bad input)."""
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.n_test is not None and args.n_test < 2:
        raise ConfigError(f"--n_test must be >= 2 (pairs are interpolated), got {args.n_test}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    written = draw(args)
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")


def draw(args: argparse.Namespace) -> list[Path]:
    """Load the run and its test images, write the latent figures; returns the PNG paths."""
    run = load_run(args.run, map_location=resolve_device(args.device))
    # the last three parts (mnist/vae/version_0) name a run well enough for a title
    run.name = "/".join((run.run_dir or run.ckpt_path.with_suffix("")).resolve().parts[-3:])
    ts = load_test_set(run_data_settings(run, args.data_dir, args.dataset), args.n_test)
    if tuple(ts.x.shape[1:]) != tuple(run.model.image_shape):
        raise ConfigError(
            f"{run.name} was trained on images of shape {tuple(run.model.image_shape)} but the "
            f"{ts.dataset} test images are {tuple(ts.x.shape[1:])}; check --dataset/--data_dir"
        )
    if not latent_is_continuous(run.model, ts.x, ts.y):
        raise ConfigError(
            f"{run.name} ({run.variant}) has a discrete latent (code indices): there are no "
            "posterior means to draw; use `sample` or `compare` for this model"
        )
    print(f"{run.name} ({run.variant}, {run.model.latent_dim}-D latent): posterior means of "
          f"{len(ts.x)} {ts.dataset} test images", file=sys.stderr)
    L.seed_everything(args.seed, verbose=False)
    panels = latent_panels(run.name, run.model, ts.x, ts.y, ts.class_names, args.seed,
                           args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [figures.save_panel(panel, out / f"{kind}.png") for kind, panel in panels.items()]
    written.append(figures.save_figure(list(panels.values()), {}, out / "latent.png"))
    if args.wandb:
        config = {"run": str(args.run), "n_test": len(ts.x), "seed": args.seed}
        log_to_wandb(out, args.wandb_project, "latent", config, written)
    return written


if __name__ == "__main__":
    sys.exit(main())
