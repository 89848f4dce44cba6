"""What ``BaseVAE.training_step`` adds to a step over the bare loss, by step parity in one fit.

One Lightning fit of the throughput benchmark's model (``configs/mnist/vae.yaml`` on the real
data module, a bare Trainer: no logger, checkpoints or callbacks but a timer) in which the even
steps run the model's own ``training_step`` (its terms held for the epoch means and the NaN
check, step logging on the steps Lightning writes) and the odd steps the bare
``model.elbo(x, y)["loss"].mean()``. The two kinds alternate every step, so a slow spell of the
shared machine slows both alike, and the difference of their median step times is what the
model's step adds: a few tens of microseconds resolve where whole fits move by 1-2%. A control
fit with both parities bare shows the method's own spread. ``--repeats`` alternates measured
and control fits and prints each, then the medians.

    python benchmarks/training_step.py --steps 400 --repeats 3
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from throughput import Setup, bare_trainer, build_cli, quiet

Step = Callable[[Any, Any, int], torch.Tensor]


def bare_step(model: Any, batch: Any, batch_idx: int) -> torch.Tensor:
    """The plain loop's objective: the mean per-example loss of the model's ``elbo``."""
    x, y = batch
    return model.elbo(x, y)["loss"].mean()


def own_step(model: Any, batch: Any, batch_idx: int) -> torch.Tensor:
    """The model's own ``training_step`` (the class's, not an instance override)."""
    return type(model).training_step(model, batch, batch_idx)


class ParityTimer(L.Callback):
    """Median times of the even and the odd steps, from one step's end to the next's."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: tuple[list[float], list[float]] = ([], [])
        self._last: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        now = time.perf_counter()
        if self._last is not None and trainer.global_step > self.warmup:
            self.times[batch_idx % 2].append(now - self._last)
        self._last = now

    def medians(self) -> tuple[float, float]:
        """(even, odd) median step times in seconds."""
        return statistics.median(self.times[0]), statistics.median(self.times[1])


def parity_fit(setup: Setup, even: Step, odd: Step) -> tuple[float, float]:
    """One fit whose even steps run ``even`` and odd steps ``odd``: their median step times."""
    cli = build_cli(setup)
    model = cli.model

    # an instance attribute: Lightning calls model.training_step, the class stays untouched
    # (Lightning passes batch_idx only to a step with a parameter of that name)
    def training_step(batch: Any, batch_idx: int) -> torch.Tensor:
        return (even if batch_idx % 2 == 0 else odd)(model, batch, batch_idx)

    model.training_step = training_step
    timer = ParityTimer(setup.warmup)
    with quiet():
        trainer = bare_trainer(setup, timer, limit_val_batches=0)
        trainer.fit(model, datamodule=cli.datamodule)
    return timer.medians()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="timed steps per fit (both kinds)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="measured and control fits each")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Alternate measured and control fits; print each fit's medians and their summary."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setup = Setup(
        "mlp", args.steps, args.warmup, args.batch_size, "cpu", "32-true", False, 0, False
    )
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} "
        f"threads, batch {args.batch_size}, {args.steps} steps per fit after {args.warmup}"
    )
    added: dict[str, list[float]] = {"training_step": [], "control": []}
    for r in range(args.repeats):
        kinds = [("training_step", own_step), ("control", bare_step)]
        for name, even in kinds if r % 2 == 0 else kinds[::-1]:
            a, b = parity_fit(setup, even, bare_step)
            added[name].append(a - b)
            print(
                f"{name:14s} even {a * 1e6:8.0f} us  odd (bare) {b * 1e6:8.0f} us  "
                f"added {(a - b) * 1e6:+6.0f} us ({(a / b - 1) * 100:+.2f}% of the step)"
            )
    for name, values in added.items():
        us = [v * 1e6 for v in values]
        print(
            f"{name}: median added {statistics.median(us):+.0f} us per step "
            f"(range {min(us):+.0f} to {max(us):+.0f}) over {len(us)} fits"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
