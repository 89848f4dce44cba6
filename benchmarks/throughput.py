"""Training throughput: ``vae_zoo fit``'s own Lightning path against a plain PyTorch loop.

For each model (the default MLP VAE of ``configs/mnist/vae.yaml``, and the same VAE with
``ConvEncoder``/``ConvDecoder``) this trains for a fixed number of steps

(a) ``lightning``: ``VAEZooCLI(args=["fit", ...])``, i.e. ``python -m vae_zoo fit`` itself: the
    real ``VAEDataModule`` over real MNIST (``$VAE_ZOO_DATA``, dynamic binarization) and the
    callbacks and loggers a default ``fit`` has (checkpoints, image grids, ``metrics.csv``). The
    progress bar is off unless ``--progress_bar``, so the output stays readable;
(b) ``plain``: a hand-written loop over the data module's training images held in one tensor,
    with a fresh model of the same class, config and seed (same initial weights, checked), the
    same optimizer (the model's own ``configure_optimizers``: Adam, fused where it applies),
    batch size, device, precision and dynamic binarization
    (``vae_zoo.data.loader.binarize`` per batch, as the data module draws it), calling the same
    ``model.elbo(x, y)["loss"].mean()``;

alternating in one process with the same torch threads, ``--repeats`` pairs in the order
a b, b a, a b, ... (so that a machine that speeds up or slows down during the run favours
neither side).
The timed window runs from the end of warm-up step ``--warmup`` (compilation happens before
it) to the end of the last step, so it holds whole steps: data, forward, backward, optimizer,
logging. It must fit in one epoch (epoch ends add validation and checkpointing).

Per model it prints the median over repeats of images/s for each side and their ratio. On a
shared CPU other processes inflate wall-clock times at random, so a second line gives numbers
that resist that: the median and range of the ratios of the pairs (each pair ran back to back,
under nearly the same load), the ratio of median step times, and the ratio of images per second
of this process's CPU time (with one thread the CPU time is the work done).

With ``--interleaved`` it also measures both sides step by step inside one fit: after every
Lightning training step a callback runs one step of the plain loop (its own model, optimizer
and data, as in (b)) and times it, and the Lightning step is timed from the end of that plain
step to the end of the next Lightning step. The two sides then alternate every few
milliseconds, so a machine that slows down for seconds slows both alike; its ratio of median
step times moves by about 0.01 between repeats where the separate runs move by 0.1 or more.
``--bare`` adds, alternating with those fits, a bare Lightning fit of the same model and
data module (no logger, checkpoints, summary or vae_zoo callbacks; :class:`BareModule`) with
its own plain twin: Lightning's own overhead. The quotient of the two ratios is the part that
vae_zoo adds to it.

    python benchmarks/throughput.py --steps 300
    python benchmarks/throughput.py --steps 300 --models mlp --interleaved
    python benchmarks/throughput.py --steps 300 --models mlp --interleaved --bare
    python benchmarks/throughput.py --steps 300 --compile        # adds compile=True rows
    python benchmarks/throughput.py --device cuda --precision bf16-mixed
"""

import argparse
import contextlib
import io
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vae_zoo.cli.flags import add_flag
from vae_zoo.data.loader import binarize

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mnist" / "vae.yaml"
MODELS: dict[str, list[str]] = {
    "mlp": [],
    "conv": [
        "--model.init_args.encoder=vae_zoo.networks.ConvEncoder",
        "--model.init_args.decoder=vae_zoo.networks.ConvDecoder",
    ],
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class Setup:
    """One measured configuration, shared by both sides."""

    model: str
    steps: int
    warmup: int
    batch_size: int
    device: str
    precision: str
    compile: bool
    seed: int
    progress_bar: bool


@dataclass
class Window:
    """Wall-clock and process CPU times at the ends of the steps of the timed window."""

    device: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    images: int = 0
    init_checksum: float = math.nan

    def mark(self, images: int, sync_device: bool) -> None:
        """Record the end of a step (the first mark opens the window) that had ``images``."""
        if sync_device and self.device == "cuda":
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if len(self.wall) > 1:
            self.images += images

    def rates(self) -> dict[str, float]:
        """Images/s over the window, from the median step time, and per CPU second."""
        if len(self.wall) < 2:
            raise RuntimeError("the run stopped before the timed window closed")
        steps = [b - a for a, b in zip(self.wall, self.wall[1:], strict=False)]
        per_step = self.images / len(steps)
        return {
            "wall": self.images / (self.wall[-1] - self.wall[0]),
            "median_step": per_step / statistics.median(steps),
            "cpu": self.images / max(self.cpu[-1] - self.cpu[0], 1e-9),
        }


def checksum(model: torch.nn.Module) -> float:
    """A fingerprint of the weights, to show both sides start from the same initialisation."""
    return sum(p.detach().double().abs().sum().item() for p in model.parameters())


class StepTimer(L.Callback):
    """Marks the ends of training steps ``warmup`` .. ``warmup + steps`` of a Lightning fit."""

    def __init__(self, setup: Setup) -> None:
        self.first, self.last = setup.warmup, setup.warmup + setup.steps
        self.window = Window(setup.device)

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: D102
        self.window.init_checksum = checksum(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        step = trainer.global_step
        if self.first <= step <= self.last:
            self.window.mark(len(batch[0]), sync_device=step in (self.first, self.last))


class PlainTwin(L.Callback):
    """Runs and times one plain-loop step after each Lightning step (``--interleaved``)."""

    def __init__(self, setup: Setup, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.setup = setup
        self.first, self.last = setup.warmup, setup.warmup + setup.steps
        self.step, _ = plain_step(setup, images, labels)
        self.lightning: list[float] = []
        self.plain: list[float] = []
        self._resumed: float | None = None  # when the Lightning side got the CPU back

    def _now(self) -> float:
        if self.setup.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        if not self.first <= trainer.global_step <= self.last:
            return
        end = self._now()
        if self._resumed is not None:
            self.lightning.append(end - self._resumed)
        self.step()
        self._resumed = self._now()
        self.plain.append(self._resumed - end)

    def ratio(self) -> float:
        """Median plain step time over median Lightning step time (1.0: no overhead)."""
        return statistics.median(self.plain) / statistics.median(self.lightning)


def cli_args(setup: Setup, run_dir: str) -> list[str]:
    """Arguments of ``python -m vae_zoo fit`` (after the subcommand) for this setup."""
    return [
        "--config",
        str(CONFIG),
        *MODELS[setup.model],
        f"--seed_everything={setup.seed}",
        f"--model.init_args.compile={str(setup.compile).lower()}",
        f"--data.batch_size={setup.batch_size}",
        f"--trainer.max_steps={setup.warmup + setup.steps}",
        f"--trainer.accelerator={setup.device}",
        "--trainer.devices=1",
        f"--trainer.precision={setup.precision}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.enable_progress_bar={str(setup.progress_bar).lower()}",
    ]


def quiet() -> contextlib.ExitStack:
    """Silence the CLI's, Lightning's and torch.compile's messages so the table stays readable."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "torch"):
        log = logging.getLogger(name)
        stack.callback(log.setLevel, log.level)
        log.setLevel(logging.ERROR)
    return stack


def build_cli(setup: Setup):  # noqa: ANN201 - a VAEZooCLI, imported lazily
    """Model, data module and trainer exactly as ``fit`` configures them, without running."""
    from vae_zoo.cli import VAEZooCLI

    with quiet():
        return VAEZooCLI(args=cli_args(setup, os.devnull), run=False)


def run_lightning(setup: Setup) -> Window:
    """The timed window of ``python -m vae_zoo fit`` itself, run in this process."""
    from vae_zoo.cli import VAEZooCLI

    timer = StepTimer(setup)
    with tempfile.TemporaryDirectory(prefix="vae_zoo_bench_") as run_dir, quiet():
        # trainer_defaults' callbacks are appended to the ones the CLI builds (LightningCLI API)
        VAEZooCLI(args=["fit", *cli_args(setup, run_dir)], trainer_defaults={"callbacks": [timer]})
    return timer.window


class BareModule(L.LightningModule):
    """The least a LightningModule can do with the model: its loss, one Adam, nothing logged."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """The plain loop's objective: the mean per-example loss of the model's ``elbo``."""
        x, y = batch
        return self.model.elbo(x, y)["loss"].mean()

    def configure_optimizers(self) -> Any:
        """The model's own optimizer, as in the plain loop."""
        return self.model.configure_optimizers()


def run_bare_interleaved(setup: Setup, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Lightning's own floor: a bare Trainer (no logger, checkpoints, summary or callbacks of
    vae_zoo) fitting :class:`BareModule` on the same data module, with the plain twin."""
    cli = build_cli(setup)
    twin = PlainTwin(setup, images, labels)
    with quiet():
        bare_trainer(setup, twin).fit(BareModule(cli.model), datamodule=cli.datamodule)
    return twin.ratio()


def bare_trainer(setup: Setup, *callbacks: L.Callback, **kwargs: Any) -> L.Trainer:
    """A Trainer for the setup's window with nothing of its own: no logger, checkpoints,
    progress bar or model summary; only ``callbacks`` (and ``kwargs``, e.g. no validation)."""
    return L.Trainer(
        max_steps=setup.warmup + setup.steps,
        accelerator=setup.device,
        devices=1,
        precision=setup.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kwargs,
    )


def autocast(setup: Setup) -> contextlib.AbstractContextManager:
    """The autocast context Lightning's mixed-precision plugin uses."""
    if setup.precision == "bf16-mixed":
        return torch.autocast(setup.device, dtype=torch.bfloat16)
    if setup.precision == "16-mixed":
        return torch.autocast(setup.device, dtype=torch.float16)
    return contextlib.nullcontext()


def batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches of uint8 ``images`` forever, binarized afresh each time (dynamic
    binarization, the data module's own draw)."""
    n = len(images)
    order = torch.Generator().manual_seed(seed)
    draws = torch.Generator(images.device).manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=order).to(images.device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            x = binarize(images.index_select(0, idx), draws).to(torch.float32)
            yield x, labels.index_select(0, idx)


def plain_step(
    setup: Setup, images: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[], int], float]:
    """A fresh model, optimizer and batch stream: (a function that trains one step and returns
    its batch size, the checksum of the initial weights)."""
    model = build_cli(setup).model  # same class, config and seed_everything as the fit run
    device = torch.device(setup.device)
    model.to(device).train()
    images, labels = images.to(device), labels.to(device)
    opt = model.configure_optimizers()  # the fit's optimizer, settings and all
    scaler = torch.amp.GradScaler(setup.device, enabled=setup.precision == "16-mixed")
    data = batches(images, labels, setup.batch_size, setup.seed)

    def step() -> int:
        x, y = next(data)
        with autocast(setup):
            loss = model.elbo(x, y)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return len(x)

    return step, checksum(model)


def run_plain(setup: Setup, images: torch.Tensor, labels: torch.Tensor) -> Window:
    """The timed window of a hand-written loop over the same model, data and objective."""
    step, init_checksum = plain_step(setup, images, labels)
    window = Window(setup.device, init_checksum=init_checksum)
    with quiet():  # torch.compile's log lines; stdout is not used in the loop
        for i in range(1, setup.warmup + setup.steps + 1):
            n = step()
            if i >= setup.warmup:
                last = i in (setup.warmup, setup.warmup + setup.steps)
                window.mark(n, sync_device=last)
    return window


def run_interleaved(setup: Setup, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One fit with a plain step after each Lightning step; the ratio of median step times."""
    from vae_zoo.cli import VAEZooCLI

    twin = PlainTwin(setup, images, labels)
    with tempfile.TemporaryDirectory(prefix="vae_zoo_bench_") as run_dir, quiet():
        VAEZooCLI(args=["fit", *cli_args(setup, run_dir)], trainer_defaults={"callbacks": [twin]})
    return twin.ratio()


def training_images(setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """The data module's training split: uint8 images and int64 labels."""
    dm = build_cli(setup).datamodule
    with quiet():
        dm.prepare_data()
        dm.setup("fit")
    split = dm.train_dataloader().dataset  # a BatchDataset over uint8 images
    return split.images, split.labels


def check_window(setup: Setup, num_train: int) -> None:
    """Refuse windows that cross an epoch end, where Lightning would also validate."""
    per_epoch = num_train // setup.batch_size
    if setup.warmup + setup.steps > per_epoch:
        sys.exit(
            f"error: --warmup + --steps = {setup.warmup + setup.steps} exceeds one epoch "
            f"({per_epoch} batches of {setup.batch_size}); the timed window would include "
            "validation and checkpointing. Use fewer steps or a smaller --batch_size."
        )


def measure(
    setup: Setup, repeats: int, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, list[dict[str, float]]]:
    """Alternate lightning and plain runs; the rates of each run, in run order."""
    out: dict[str, list[dict[str, float]]] = {"lightning": [], "plain": []}
    threads = torch.get_num_threads()
    inits = set()
    for pair in range(repeats):
        for side in ("lightning", "plain") if pair % 2 == 0 else ("plain", "lightning"):
            if setup.compile:
                # every run compiles its fresh model in its warm-up; without a reset the
                # accumulated recompilations reach dynamo's limit and it falls back to eager
                torch._dynamo.reset()
            if side == "lightning":
                window = run_lightning(setup)
            else:
                window = run_plain(setup, images, labels)
            out[side].append(window.rates())
            inits.add(round(window.init_checksum, 6))
            torch.set_num_threads(threads)  # identical threads for every run
    if len(inits) != 1:
        raise RuntimeError(f"the runs started from different weights (checksums {inits})")
    return out


def median(runs: list[dict[str, float]], key: str) -> float:
    """Median over repeats of one rate."""
    return statistics.median(r[key] for r in runs)


def report(label: str, runs: dict[str, list[dict[str, float]]], device: str) -> tuple[float, float]:
    """Print the summary line, the noise-resistant ratios and the repeats; return (a) img/s."""
    a, b = median(runs["lightning"], "wall"), median(runs["plain"], "wall")
    print(f"{label:<13} lightning {a:7.0f} img/s  plain {b:7.0f} img/s  ratio {a / b:.2f}")
    paired = [x["wall"] / y["wall"] for x, y in zip(runs["lightning"], runs["plain"], strict=True)]
    print(
        f"{'':<13} ratio of each pair: median {statistics.median(paired):.2f}, "
        f"range {min(paired):.2f}-{max(paired):.2f} over {len(paired)} pairs"
    )
    if device == "cpu":
        step = median(runs["lightning"], "median_step") / median(runs["plain"], "median_step")
        cpu = median(runs["lightning"], "cpu") / median(runs["plain"], "cpu")
        print(f"{'':<13} ratio of median step times {step:.2f}, of images per CPU second {cpu:.2f}")
    pairs = zip(runs["lightning"], runs["plain"], strict=True)
    print(
        f"{'':<13} img/s per repeat (lightning/plain): "
        + "  ".join(f"{x['wall']:.0f}/{y['wall']:.0f}" for x, y in pairs)
    )
    return a, b


def report_interleaved(
    setup: Setup, repeats: int, images: torch.Tensor, labels: torch.Tensor, bare: bool = False
) -> dict[str, list[float]]:
    """Run ``repeats`` interleaved fits (alternating with bare ones when ``bare``) and print the
    median and range of their ratios to the plain step."""
    threads = torch.get_num_threads()
    sides = {"interleaved": run_interleaved} | (
        {"bare Lightning": run_bare_interleaved} if bare else {}
    )
    ratios: dict[str, list[float]] = {name: [] for name in sides}
    for pair in range(repeats):
        for name in sides if pair % 2 == 0 else reversed(list(sides)):
            if setup.compile:
                torch._dynamo.reset()
            ratios[name].append(sides[name](setup, images, labels))
            torch.set_num_threads(threads)
    for name, rs in ratios.items():
        print(
            f"{'':<13} {name}: ratio of median step times {statistics.median(rs):.3f}, "
            f"range {min(rs):.3f}-{max(rs):.3f} over {len(rs)} fits: "
            + " ".join(f"{r:.3f}" for r in rs)
        )
    if bare:
        # both are ratios to the same plain step, so their quotient is vae_zoo's own share
        own = [a / b for a, b in zip(ratios["interleaved"], ratios["bare Lightning"], strict=True)]
        print(
            f"{'':<13} vae_zoo fit / bare Lightning: median {statistics.median(own):.3f}, "
            f"range {min(own):.3f}-{max(own):.3f}"
        )
    return ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed training steps per run")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before the window")
    add_flag(p, "--batch_size", type=int, default=128)
    p.add_argument("--models", default="mlp,conv", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    p.add_argument("--precision", default="32-true", choices=PRECISIONS)
    p.add_argument("--compile", action="store_true", help="also measure model compile=True")
    p.add_argument("--repeats", type=int, default=5, help="alternating (lightning, plain) pairs")
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="also time both sides step by step inside one fit (robust to a noisy machine)",
    )
    p.add_argument(
        "--bare",
        action="store_true",
        help="with --interleaved, also time a bare Lightning fit of the same model: "
        "Lightning's own overhead, which no vae_zoo change can remove",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (both sides)")
    p.add_argument("--seed", type=int, default=0)
    add_flag(p, "--progress_bar", action="store_true", help="keep Lightning's progress bar on")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        p.error(f"--models: unknown {unknown or 'empty list'}; choose from {', '.join(MODELS)}")
    args.models = models
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.precision == "16-mixed" and args.device != "cuda":
        p.error("--precision 16-mixed needs --device cuda (use bf16-mixed on a CPU)")
    if min(args.steps, args.warmup, args.repeats, args.batch_size) < 1:
        p.error("--steps, --warmup, --repeats and --batch_size must be >= 1")
    if args.bare and not args.interleaved:
        p.error("--bare is measured step by step: add --interleaved")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the lines per model (and per compile setting)."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not os.environ.get("VAE_ZOO_DATA"):
        print("note: $VAE_ZOO_DATA is unset; the data module looks in ./data")
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} threads, precision {args.precision}, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} repeats, "
        f"progress bar {'on' if args.progress_bar else 'off'}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for model in args.models:
        medians = {}
        for compiled in [False, True] if args.compile else [False]:
            setup = Setup(
                model=model,
                steps=args.steps,
                warmup=args.warmup,
                batch_size=args.batch_size,
                device=args.device,
                precision=args.precision,
                compile=compiled,
                seed=args.seed,
                progress_bar=args.progress_bar,
            )
            images, labels = training_images(setup)
            check_window(setup, len(images))
            runs = measure(setup, args.repeats, images, labels)
            medians[compiled] = report(model + ("+compile" if compiled else ""), runs, args.device)
            if args.interleaved:
                report_interleaved(setup, args.repeats, images, labels, bare=args.bare)
        if args.compile:
            (a0, b0), (a1, b1) = medians[False], medians[True]
            speedup = f"lightning {a1 / a0:.2f}x  plain {b1 / b0:.2f}x"
            print(f"{model:<13} compile=True speedup (img/s): {speedup}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
