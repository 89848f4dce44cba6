"""``python -m vae_zoo sample``: a PNG grid of prior samples from a trained model.

Unconditional models: ``--n`` samples, ``--nrow`` per row (default: a square-ish grid).
Conditional models: one row per requested class (``--classes 0..9``, ``--classes 3,5``,
default all), ``--n`` samples in all, shared out evenly between the classes.
"""

import argparse
import math
import sys
from pathlib import Path

import lightning as L
import torch
from torchvision.utils import save_image

from vae_zoo.errors import ConfigError, exit_status
from vae_zoo.evaluation.loading import load_run, resolve_device

PROG = "python -m vae_zoo sample"


def parse_classes(text: str, num_classes: int) -> list[int]:
    """``"0..9"``, ``"3,5"``, ``"0..2,7"`` -> class labels, each checked against num_classes."""
    labels: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        try:
            if ".." in token:
                lo, hi = (int(v) for v in token.split("..", 1))
                if hi < lo:
                    raise ValueError
                labels += range(lo, hi + 1)
            else:
                labels.append(int(token))
        except ValueError:
            raise ConfigError(
                f"--classes {text!r}: use a range like 0..9, a list like 3,5, or both (0..2,7)"
            ) from None
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(
            f"--classes: {bad} out of range; this model has classes 0..{num_classes - 1}"
        )
    return labels


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``sample``."""
    p = argparse.ArgumentParser(prog=PROG, description="Save a grid of prior samples as a PNG.")
    p.add_argument("checkpoint", metavar="CKPT", help="a .ckpt file or a run folder")
    p.add_argument("--n", type=int, default=64, help="number of samples (default %(default)s)")
    p.add_argument("--classes", default=None,
                   help="conditional models: classes, one row each (0..9, 3,5; default all)")
    p.add_argument("--nrow", type=int, default=None, help="images per row (unconditional)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (%(default)s)")
    p.add_argument("--draw", action="store_true",
                   help="show draws x ~ p(x|z) instead of the means E[x|z]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (%(default)s)")
    p.add_argument("--out", required=True, help="PNG file to write")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``sample``; returns the exit status (2 with one error line on bad input)."""
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.nrow is not None and args.nrow < 1:
        raise ConfigError(f"--nrow must be >= 1, got {args.nrow}")
    print(f"wrote {sample_grid(args)}")


@torch.no_grad()
def sample_grid(args: argparse.Namespace) -> Path:
    """Draw the samples ``args`` ask for and save them as one grid; returns the PNG path."""
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: give a .png file name")
    run = load_run(args.checkpoint, map_location=resolve_device(args.device))
    model = run.model
    num_classes = model.num_classes
    L.seed_everything(args.seed, verbose=False)
    if num_classes:
        classes = (
            parse_classes(args.classes, num_classes)
            if args.classes is not None
            else list(range(num_classes))
        )
        per_class = max(1, args.n // len(classes))
        labels = torch.tensor(classes, device=model.device).repeat_interleave(per_class)
        images, nrow = model.sample(len(labels), labels, mean=not args.draw), per_class
        layout = f"{len(classes)} rows (classes {','.join(map(str, classes))}) of {per_class}"
    else:
        if args.classes is not None:
            raise ConfigError(
                f"--classes needs a conditional model; {run.ckpt_path} is a '{run.variant}' model"
            )
        nrow = args.nrow or math.ceil(math.sqrt(args.n))
        images = model.sample(args.n, mean=not args.draw)
        layout = f"{args.n} samples, {nrow} per row"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), out, nrow=nrow, padding=2, pad_value=1.0)
    print(f"{run.variant} from {run.ckpt_path}: {layout}; z ~ {model.prior_description}",
          file=sys.stderr)
    return out
