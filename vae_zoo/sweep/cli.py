"""``python -m vae_zoo sweep SWEEP.yaml``: run a W&B sweep file offline, without a W&B server.

Online, the same file runs as W&B documents it: ``wandb sweep sweeps/x.yaml`` then
``wandb agent ENTITY/PROJECT/SWEEP_ID``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path

from vae_zoo.cli.flags import add_flag
from vae_zoo.errors import VAEZooError, exit_status
from vae_zoo.shipped import locate

from .results import RESULTS_FILE, RunRecord, format_table, rank_records
from .spec import SweepSpec, load_spec

PROG = "python -m vae_zoo sweep"
COMPARE_MODULE = "vae_zoo.evaluation.compare"
EPILOG = """\
examples:
  python -m vae_zoo sweep beta_vae_mnist
  python -m vae_zoo sweep vae_mnist_bayes --count 12 --parallel 2
  python -m vae_zoo sweep beta_vae_mnist --count 3 --out runs/sweeps/smoke \\
      -- --trainer.max_epochs=1 --trainer.limit_train_batches=20
  python -m vae_zoo sweep my_sweep.yaml

A sweep is a file or a shipped sweep's name (`python -m vae_zoo configs` lists them).

Everything after `--` is appended to every run's command (LightningCLI overrides).
Each run writes DIR/run_XXX (stdout.log, stderr.log, metrics.csv, checkpoints/); the ranked
table goes to DIR/sweep_results.csv. Online: `wandb sweep FILE` then `wandb agent SWEEP_ID`.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the sweep command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a W&B sweep file offline: propose runs with W&B's sweep engine "
        "(grid/random/bayes, hyperband early termination), run them, rank them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sweep_file", help="a W&B sweep YAML, or a shipped sweep's name such as beta_vae_mnist"
    )
    parser.add_argument(
        "--count", type=int, default=None,
        help="number of runs (default: the whole grid; random/bayes: the file's run_cap)",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="sweep directory (default: runs/sweeps/<sweep name>/sweep_<N>)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time (default 1)")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the proposals (random/bayes draws); runs keep their config's seed",
    )
    add_flag(
        parser, "--wandb_mode", choices=("offline", "disabled"), default="offline",
        help="WANDB_MODE of the runs when the command logs to W&B (default offline: "
        "`wandb sync` can upload them later)",
    )
    parser.add_argument(
        "--poll", type=float, default=2.0,
        help="seconds between reads of the runs' metrics.csv (hyperband decisions)",
    )
    add_flag(
        parser, "--no_check", action="store_true",
        help="skip checking the parameters with `fit --print_config` before the first run",
    )
    add_flag(parser, "--no_compare", action="store_true", help="do not run `compare` at the end")
    add_flag(
        parser, "--compare_k", type=int, default=100,
        help="importance samples per image for compare's test NLL (default 100: quick)",
    )
    add_flag(
        parser, "--compare_n_test", type=int, default=1000,
        help="test images compare evaluates (default 1000: quick)",
    )
    add_flag(
        parser, "--dry_run", action="store_true",
        help="print the first runs' command lines (first proposals) and exit",
    )
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` at the first ``--`` into (sweep options, overrides for every run)."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def default_count(spec: SweepSpec) -> int:
    """Runs to do without ``--count``: the grid (capped by run_cap), else run_cap."""
    grid = spec.grid_size()
    cap = spec.run_cap
    if grid is not None:
        return min(grid, cap) if cap else grid
    if cap:
        return cap
    raise VAEZooError(
        f"a {spec.method} sweep has no natural end; pass --count N (or set run_cap in {spec.path})"
    )


def default_out(spec: SweepSpec) -> Path:
    """``runs/sweeps/<name>/sweep_<N>`` with N one more than the highest existing one."""
    from vae_zoo.runs import RUNS_ROOT, next_version_dir

    return next_version_dir(RUNS_ROOT / "sweeps" / spec.name, prefix="sweep_")


def run_compare(records: list[RunRecord], out: Path, k: int, n_test: int) -> int | None:
    """Compare the runs (best first) with ``vae_zoo.evaluation.compare``; None if it is absent.

    Only a cached classifier is used for the accuracy columns: training one is not the sweep's job.
    """
    try:
        compare = importlib.import_module(COMPARE_MODULE)
    except ModuleNotFoundError as err:
        if err.name and COMPARE_MODULE.startswith(err.name):
            return None
        raise
    dirs = [str(r.run_dir) for r in records]
    # fid_clf with as many samples as test images keeps the quick comparison quick
    argv = [*dirs, "--out", str(out / "compare"), "--k", str(k), "--n_test", str(n_test),
            "--fid_samples", str(max(n_test, 2)), "--classifier", "cached"]
    print(f"sweep: comparing {len(dirs)} runs: python -m vae_zoo compare {shlex.join(argv)}")
    return int(compare.main(argv) or 0)


def _print_dry_run(spec: SweepSpec, count: int, out: Path, overrides: list[str], seed: int) -> None:
    from .proposer import Proposer
    from .runner import SweepOptions, SweepRunner

    options = SweepOptions(out_dir=out, count=count, seed=seed, overrides=overrides)
    runner = SweepRunner(spec, options)
    proposals = Proposer(spec, seed=seed).propose([], count)
    if spec.method == "bayes":
        print("sweep: bayes proposals after the first depend on the runs' results; shown "
              "as if all were pending")
    for i, params in enumerate(proposals):
        print(shlex.join(runner.build_command(params, runner.run_dir(i))))


def main(argv: list[str] | None = None) -> int:
    """Run the sweep command; returns the exit status (0 when at least one run finished)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, overrides = split_overrides(argv)
    args = build_parser().parse_args(own)
    return exit_status(lambda: _main(args, overrides))


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    from .check import check_cli_accepts
    from .runner import SweepOptions, SweepRunner

    spec = load_spec(locate(args.sweep_file, "sweeps"))
    count = args.count if args.count is not None else default_count(spec)
    out = args.out if args.out is not None else default_out(spec)
    if args.dry_run:
        _print_dry_run(spec, count, out, overrides, args.seed)
        return 0
    if out.is_dir() and any(out.glob("run_*")):
        raise VAEZooError(f"{out} already holds a sweep's runs; choose a new --out directory")
    if not args.no_check:
        print(f"sweep: checking the parameters with `fit --print_config` ({spec.path})")
        check_cli_accepts(spec, overrides)
    print(f"sweep: {spec.name}: {spec.method} search, {count} runs, {args.parallel} at a time, "
          f"metric {spec.metric_name} ({spec.goal}); results in {out}")
    if spec.early_terminate:
        et = spec.early_terminate
        print(f"sweep: early_terminate hyperband (min_iter={et.get('min_iter')}, "
              f"max_iter={et.get('max_iter')}, eta={et.get('eta')}): running runs are compared "
              f"at each band epoch with every run so far and stopped when outside the top 1/eta")
    options = SweepOptions(
        out_dir=out, count=count, parallel=args.parallel, seed=args.seed,
        overrides=overrides, wandb_mode=args.wandb_mode, poll_interval=args.poll,
    )
    runner = SweepRunner(spec, options)
    try:
        records = runner.run()
    except KeyboardInterrupt:
        print(f"\nsweep: interrupted; partial results in {out / RESULTS_FILE}", file=sys.stderr)
        return 130
    print()
    print(format_table(records, spec.goal, spec.parameter_names, spec.metric_name or "metric"))
    print(f"\nsweep: ranked results in {out / RESULTS_FILE}")
    ranked = [r for _, r in rank_records(records, spec.goal)]
    succeeded = [r for r in ranked if r.status == "finished"]
    if not succeeded:
        print(f"sweep: no run finished; see {out}/run_XXX/stderr.log", file=sys.stderr)
        return 1
    if args.no_compare:
        return 0
    status = run_compare(succeeded, out, args.compare_k, args.compare_n_test)
    if status is None:
        print(f"sweep: skipping compare ({COMPARE_MODULE} is not installed)")
    elif status != 0:
        print(f"sweep: compare failed (exit {status}); the sweep's results stand", file=sys.stderr)
    return 0
