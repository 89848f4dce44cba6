"""``python -m vae_zoo compare``: evaluate trained runs on the same test images, side by side.

Every model is loaded from its run folder or checkpoint, evaluated on the first ``--n_test``
images of its data set's test split (the same images, in the same order, for every model of
that data set) with the same seed, and drawn in the same figures. Outputs in ``--out``:

* ``comparison.md``, ``comparison.csv``, ``comparison.json``: one row per run (the JSON adds
  the per-unit KL and posterior-mean variance vectors and the settings);
* ``comparison.png``: reconstructions, prior samples, beta-VAE traversals, CVAE class grids,
  the test posterior means of every model (PCA when D > 2), 2-D latent manifolds,
  interpolations and the training curves; each panel also as its own PNG.

``recon_acc``, ``cond_acc`` and ``fid_clf`` (:mod:`vae_zoo.evaluation.fid`) need a classifier of
the data set (see :mod:`vae_zoo.evaluation.classifier`), which is never part of a model.
"""

import argparse
import csv
import inspect
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vae_zoo import runs
from vae_zoo.callbacks.images_per_second import METRIC as THROUGHPUT_METRIC
from vae_zoo.cli.flags import add_flag, add_test_set_flags, add_wandb_flags
from vae_zoo.errors import ConfigError, exit_status
from vae_zoo.evaluation import figures, latent_figures
from vae_zoo.evaluation.aggregate_posterior import aggregate_posterior_stats
from vae_zoo.evaluation.classifier import (
    ClassifierUnavailableError,
    TrainedClassifier,
    get_classifier,
)
from vae_zoo.evaluation.evaluate import Evaluation, evaluate
from vae_zoo.evaluation.fid import DEFAULT_SAMPLES, ClassifierFID, grey_images
from vae_zoo.evaluation.latent_codes import latent_is_continuous, posterior_means
from vae_zoo.evaluation.loading import (
    LoadedRun,
    likelihood_name,
    load_run,
    read_metrics_csv,
    resolve_device,
    unique_labels,
)
from vae_zoo.evaluation.wandb_upload import log_to_wandb
from vae_zoo.metrics import ACTIVE_UNIT_THRESHOLD

PROG = "python -m vae_zoo compare"
#: throughput columns other loggers use (Lightning's ThroughputMonitor)
THROUGHPUT_COLUMNS = (THROUGHPUT_METRIC, "images_per_sec", "train/samples_per_sec")
#: data-module arguments that decide which images the test set holds
DATA_KEYS = ("dataset", "data_dir", "binarize", "seed", "download")
SHOWN = 8  # test images in the reconstruction panel
SAMPLES_PER_ROW = 12

#: (column, markdown header, format) of the markdown table
MD_COLUMNS = (
    ("run", "run", "{}"),
    ("variant", "variant", "{}"),
    ("objective", "objective", "{}"),
    ("dataset", "data set", "{}"),
    ("likelihood", "p(x|z)", "{}"),
    ("latent_dim", "D", "{}"),
    ("params", "params", "{:,}"),
    ("epochs", "epochs", "{}"),
    ("images_per_sec", "train img/s", "{:,.0f}"),
    ("nll", "NLL (nats)", "{:.2f}"),
    ("bpd", "bits/dim", "{:.4f}"),
    ("elbo", "ELBO", "{:.2f}"),
    ("recon", "recon", "{:.2f}"),
    ("kl", "KL", "{:.2f}"),
    ("mse", "MSE", "{:.4f}"),
    ("active_units", "active", "{:.0f}"),
    ("kl_dim_max", "max KL/dim", "{:.2f}"),
    ("recon_acc", "recon acc", "{:.3f}"),
    ("cond_acc", "cond acc", "{:.3f}"),
    ("mmd_qp", "MMD²(q,p)", "{:.4f}"),
    ("tc_q", "TC(q)", "{:.2f}"),
    ("fid_clf", "fid_clf", "{:.2f}"),
    ("fid_clf_ref", "fid ref", "{:.2f}"),
    ("classifier_acc", "clf acc", "{:.4f}"),
    ("other_terms", "other terms", "{}"),
)
#: metrics with a column of their own; a variant's other terms share the last column
STANDARD_METRICS = (
    "nll", "bpd", "elbo", "recon", "kl", "loss", "mse", "kl_dim_max", "active_units",
    "recon_acc", "cond_acc", "mmd_qp", "tc_q", "fid_clf", "fid_clf_ref", "classifier_acc",
)


@dataclass
class TestSet:
    """The first n test images of one data set under one data configuration."""

    dataset: str
    x: Tensor
    y: Tensor | None
    class_names: list[str] | None
    settings: dict[str, Any]
    runs: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``compare``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate trained VAE runs on the same test images and compare them "
        "(metrics table, figures).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_CKPT", help="run folders or .ckpt files")
    p.add_argument("--out", default="outputs/compare", help="output folder (default %(default)s)")
    p.add_argument("--k", type=int, default=5000, help="importance samples for NLL (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (%(default)s)")
    add_test_set_flags(p, 100, "evaluation batch", runs="runs")
    p.add_argument(
        "--classifier",
        default="auto",
        help="for recon_acc/cond_acc/fid_clf: auto (cached, else train one), cached, train, "
        "none, or a classifier file (default %(default)s)",
    )
    add_flag(p, "--samples_per_class", type=int, default=100,
             help="CVAE samples per class for cond_acc (%(default)s)")
    add_flag(p, "--fid_samples", type=int, default=DEFAULT_SAMPLES,
             help="samples, test and training images for fid_clf and its reference "
             "(%(default)s; 0: no fid_clf)")
    add_flag(p, "--active_threshold", type=float, default=ACTIVE_UNIT_THRESHOLD,
             help="Cov_x(E_q[z_u]) above which a unit is active (%(default)s)")
    add_wandb_flags(p, "the table and figures")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``compare``; returns the exit status (2 with one error line on bad input)."""
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    _check_args(args)
    compare(args)


def _check_args(args: argparse.Namespace) -> None:
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    if args.n_test is not None and args.n_test < 1:
        raise ConfigError(f"--n_test must be >= 1, got {args.n_test}")
    if args.batch_size < 1 or args.samples_per_class < 1:
        raise ConfigError("--batch_size and --samples_per_class must be >= 1")
    if args.fid_samples < 0 or args.fid_samples == 1:
        raise ConfigError(f"--fid_samples must be 0 (off) or >= 2, got {args.fid_samples}")


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate, tabulate and draw every run of ``args``; returns the JSON report."""
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(path, map_location=device) for path in args.runs]
    for run, label in zip(runs, unique_labels(runs), strict=True):
        run.name = label
    test_sets = _test_sets(runs, args)
    classifiers, notes = _classifiers(test_sets, args, device)
    fids, fid_refs = _fid_references(test_sets, classifiers, args, notes)

    rows, evaluations = [], {}
    for run in runs:
        ts = test_sets[_data_key(run, args)]
        L.seed_everything(args.seed, verbose=False)
        print(f"evaluating {run.name} on {len(ts.x)} {ts.dataset} test images (k={args.k})",
              file=sys.stderr)
        ev = evaluate(
            run.model,
            ts.x,
            ts.y,
            k=args.k,
            batch_size=args.batch_size,
            classifier=classifiers.get(ts.dataset),
            active_threshold=args.active_threshold,
            samples_per_class=args.samples_per_class,
            progress=run.name,
        )
        L.seed_everything(args.seed, verbose=False)
        ev.metrics.update(aggregate_posterior_stats(run.model, ts.x, ts.y, args.batch_size))
        if ts.dataset in fids:
            L.seed_everything(args.seed, verbose=False)
            ev.metrics["fid_clf"] = fids[ts.dataset].of_model(run.model, args.fid_samples)
            ev.metrics["fid_clf_ref"] = fid_refs[ts.dataset]
        if ts.dataset in classifiers:
            ev.metrics["classifier_acc"] = classifiers[ts.dataset].test_accuracy
        evaluations[run.name] = ev
        rows.append(_row(run, ts, ev, args))
        notes += [f"{run.name}: {n}" for n in ev.notes]

    datasets = sorted({ts.dataset for ts in test_sets.values()})
    if len(test_sets) > 1:
        notes.append(
            "The runs use different test sets (" + "; ".join(_describe(ts) for ts in
            test_sets.values()) + "): each model is evaluated on its own, so compare numbers "
            "only between rows with the same data set and binarization."
        )
    report = {
        "settings": {
            "k": args.k,
            "n_test": args.n_test,
            "fid_samples": args.fid_samples,
            "seed": args.seed,
            "device": str(device),
            "active_threshold": args.active_threshold,
            "datasets": datasets,
        },
        "classifiers": {
            name: {"path": str(c.path) if c.path else None, "test_accuracy": c.test_accuracy,
                   "fid_clf_ref": fid_refs.get(name)}
            for name, c in classifiers.items()
        },
        "runs": [
            {**row, "kl_per_dim": evaluations[row["run"]].kl_per_dim,
             "mu_variance": evaluations[row["run"]].mu_variance}
            for row in rows
        ],
        "notes": notes,
    }
    _write_table(rows, out)
    (out / "comparison.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "comparison.md").write_text(markdown(rows, report))
    images = _figures(runs, test_sets, evaluations, args, out)
    if args.wandb:
        config = {"k": args.k, "n_test": args.n_test, "seed": args.seed, "runs": args.runs,
                  "fid_samples": args.fid_samples}
        log_to_wandb(out, args.wandb_project, "compare", config, images, rows, "comparison")
    print(markdown_table(rows))
    print(f"wrote {out / 'comparison.md'}, comparison.csv, comparison.json and "
          f"{len(images)} PNGs to {out}", file=sys.stderr)
    return report


# ---------------------------------------------------------------------- data
def _data_key(run: LoadedRun, args: argparse.Namespace) -> tuple:
    settings = _data_settings(run, args)
    return tuple((k, settings.get(k)) for k in DATA_KEYS)


def _data_settings(run: LoadedRun, args: argparse.Namespace) -> dict[str, Any]:
    return run_data_settings(run, args.data_dir, args.dataset)


def run_data_settings(
    run: LoadedRun, data_dir: str | None = None, dataset: str | None = None
) -> dict[str, Any]:
    """The data-module settings of a run, with ``--data_dir``/``--dataset`` applied."""
    settings = dict(run.data)
    if data_dir is not None:
        settings["data_dir"] = data_dir
    if not settings.get("dataset"):
        if dataset is None:
            raise ConfigError(
                f"{run.source}: neither a config.yaml nor the checkpoint says which data set "
                "the model was trained on; pass --dataset mnist or --dataset fashion_mnist"
            )
        settings["dataset"] = dataset
    return settings


def _test_sets(runs: list[LoadedRun], args: argparse.Namespace) -> dict[tuple, TestSet]:
    sets: dict[tuple, TestSet] = {}
    for run in runs:
        key = _data_key(run, args)
        if key not in sets:
            sets[key] = load_test_set(_data_settings(run, args), args.n_test, args.batch_size)
        sets[key].runs.append(run.name)
        _check_shape(run, sets[key])
    return sets


def load_test_set(settings: dict[str, Any], n: int | None, batch_size: int = 256) -> TestSet:
    """The first ``n`` test images (all when None) of the data module ``settings`` describe."""
    from vae_zoo.data import VAEDataModule

    accepted = inspect.signature(VAEDataModule.__init__).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted}
    kwargs.update(eval_batch_size=batch_size, num_workers=0)
    if "on_device" in accepted:
        kwargs["on_device"] = False
    dm = VAEDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("test")
    xs, ys, have = [], [], 0
    for batch in dm.test_dataloader():
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        xs.append(x.cpu())
        ys.append(None if y is None else y.cpu())
        have += len(x)
        if n is not None and have >= n:
            break
    x = torch.cat(xs)[:n]
    y = None if any(t is None for t in ys) else torch.cat(ys)[:n]
    names = getattr(dm, "class_names", None)
    return TestSet(str(settings["dataset"]), x, y, list(names) if names else None, kwargs)


def _check_shape(run: LoadedRun, ts: TestSet) -> None:
    if tuple(ts.x.shape[1:]) != tuple(run.model.image_shape):
        raise ConfigError(
            f"{run.name} was trained on images of shape {tuple(run.model.image_shape)} but the "
            f"{ts.dataset} test images are {tuple(ts.x.shape[1:])}; check the run's data settings"
        )


def _test_set_name(ts: TestSet) -> str:
    binarize = ts.settings.get("binarize")
    extra = f", binarize={binarize}" if binarize else ""
    return f"{ts.dataset} test, {len(ts.x)} images{extra}"


def _describe(ts: TestSet) -> str:
    return f"{_test_set_name(ts)}: {', '.join(ts.runs)}"


def _classifiers(
    test_sets: dict[tuple, TestSet], args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, TrainedClassifier], list[str]]:
    found: dict[str, TrainedClassifier] = {}
    notes: list[str] = []
    if args.classifier == "none":
        return found, ["recon_acc/cond_acc skipped (--classifier none)"]
    for ts in test_sets.values():
        if ts.dataset in found:
            continue
        data_dir = ts.settings.get("data_dir")
        try:
            clf = get_classifier(ts.dataset, data_dir, args.classifier, device)
        except ClassifierUnavailableError as err:
            print(f"warning: {err}", file=sys.stderr)
            notes.append(f"no {ts.dataset} classifier, recon_acc/cond_acc left empty: {err}")
            continue
        if clf is not None:
            found[ts.dataset] = clf
            notes.append(
                f"recon_acc/cond_acc on {ts.dataset} use the classifier {clf.path} "
                f"(its own test accuracy: {clf.test_accuracy:.4f})"
            )
    return found, notes


def _fid_references(
    test_sets: dict[tuple, TestSet],
    classifiers: dict[str, TrainedClassifier],
    args: argparse.Namespace,
    notes: list[str],
) -> tuple[dict[str, ClassifierFID], dict[str, float]]:
    """Per data set: the fid_clf evaluator on its grey test images and the reference distance."""
    fids: dict[str, ClassifierFID] = {}
    refs: dict[str, float] = {}
    if not args.fid_samples:
        notes.append("fid_clf skipped (--fid_samples 0)")
        return fids, refs
    for ts in test_sets.values():
        if ts.dataset in fids or ts.dataset not in classifiers:
            continue
        train, test = grey_images(ts.dataset, ts.settings.get("data_dir"), args.fid_samples)
        print(f"fid_clf on {ts.dataset}: {len(test)} grey test images, reference with "
              f"{len(train)} training images", file=sys.stderr)
        fids[ts.dataset] = ClassifierFID(classifiers[ts.dataset], test, args.batch_size)
        refs[ts.dataset] = fids[ts.dataset].of_images(train)
        notes.append(
            f"fid_clf on {ts.dataset}: Fréchet distance between the classifier's penultimate "
            f"features of {args.fid_samples} mean samples E[x|z] and of {len(test)} grey-level "
            f"test images; reference (fid ref) {refs[ts.dataset]:.2f} = the same distance for "
            f"{len(train)} training images; classifier test accuracy "
            f"{classifiers[ts.dataset].test_accuracy:.4f}"
        )
    return fids, refs


# ---------------------------------------------------------------------- rows
def _row(run: LoadedRun, ts: TestSet, ev: Evaluation, args: argparse.Namespace) -> dict[str, Any]:
    model = run.model
    rate, source = training_throughput(run)
    m = ev.metrics
    others = {k: v for k, v in m.items() if k not in STANDARD_METRICS}
    return {
        "run": run.name,
        "variant": run.variant,
        "dataset": ts.dataset,
        "test_set": _test_set_name(ts),
        "binarize": ts.settings.get("binarize"),
        "latent_dim": model.latent_dim,
        "likelihood": likelihood_name(model),
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": run.epochs,
        "global_step": run.global_step,
        "images_per_sec": rate,
        "images_per_sec_source": source,
        "k": args.k,
        "n_test": ev.num_examples,
        "objective": model.objective,
        "nll_is_bound": model.likelihood_is_bound,
        **{name: m.get(name) for name in STANDARD_METRICS},
        "other_terms": ", ".join(f"{k} {_fmt(v, '{:.4g}')}" for k, v in others.items()) or None,
        **others,
        "checkpoint": str(run.ckpt_path),
    }


def training_throughput(run: LoadedRun) -> tuple[float | None, str | None]:
    """Training images/s: as logged in metrics.csv, else estimated from file times.

    The estimate divides the images seen (global_step x batch_size) by the time between the
    run's config.yaml (written at the start) and its checkpoint, so validation time counts
    and it is a lower bound.
    """
    columns = read_metrics_csv(run.metrics_csv)
    for name in THROUGHPUT_COLUMNS:
        values = [v for _, v in columns.get(name, []) if math.isfinite(v)]
        if values:
            # the first epoch includes warm-up (compilation, caches): leave it out when possible
            steady = values[1:] if len(values) > 1 else values
            return sum(steady) / len(steady), f"logged ({name})"
    config = runs.config_file(run.run_dir)
    batch = run.data.get("batch_size")
    if config is None or not config.is_file() or not run.global_step or not batch:
        return None, None
    elapsed = run.ckpt_path.stat().st_mtime - config.stat().st_mtime
    if elapsed <= 0:
        return None, None
    return run.global_step * int(batch) / elapsed, "estimated from file times (lower bound)"


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table."""
    lines = [
        "| " + " | ".join(_cell(h) for _, h, _ in MD_COLUMNS) + " |",
        # text columns left, numbers right
        "|" + "|".join("---" if f == "{}" else "--:" for _, _, f in MD_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [_fmt(row.get(c), f) for c, _, f in MD_COLUMNS]
        if row.get("nll_is_bound") and row.get("nll") is not None:
            cells[[c for c, _, _ in MD_COLUMNS].index("nll")] += " (bound)"
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A markdown table cell: a literal | (as in p(x|z) or |KL - C|) would end the cell."""
    return text.replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], report: dict[str, Any]) -> str:
    """comparison.md: the table, what each column means, and the notes."""
    s = report["settings"]
    n_test = "all" if s["n_test"] is None else s["n_test"]
    parts = [
        "# Comparison",
        "",
        f"Test images: {n_test} per data set, the same for every model of a data set; "
        f"importance samples k = {s['k']}; seed {s['seed']}; device {s['device']}.",
        "",
        markdown_table(rows),
        "",
        "Columns: NLL = -log p(x) per test image by importance sampling (nats; bits/dim = "
        "NLL / (784 ln 2) for 28x28); ELBO, recon = E_q log p(x|z), KL = KL(q(z|x)||p(z)) in "
        "nats per image; MSE = mean squared error per pixel of E[x|z=mu] on [0,1] pixels "
        "(comparable across likelihoods, unlike NLL); active = units with "
        f"Cov_x(E_q[z_u]) > {s['active_threshold']} (Burda et al. 2015); max KL/dim = the "
        "largest mean KL of one latent unit (absent where the KL does not factorise over "
        "units); objective = what the variant minimises (an ELBO unless it says otherwise); "
        "(bound) marks an NLL that is a bound, not an importance-sampled estimate; "
        "other terms = the variant's own terms; recon acc = classifier accuracy on "
        "reconstructions; cond acc = fraction of CVAE samples of class c classified as c; "
        "MMD²(q,p) = unbiased MMD² (IMQ kernel, scales 2D·{0.1..10}) between one z ~ q(z|x) "
        "per test image and as many prior draws; TC(q) = total correlation of the test set's "
        "aggregate posterior, exact over its components (diagonal-Gaussian posteriors only; "
        "it grows with the number of test images, compare it at one n_test); "
        f"fid_clf = Fréchet distance between the classifier's penultimate-layer features of "
        f"{s['fid_samples']} mean samples E[x|z], z ~ p(z), and of as many grey-level test "
        "images (fewer when the test set is smaller, see the notes; lower is better); fid ref "
        "= the same distance for training images instead of samples (what real images "
        "score); clf acc = the classifier's own test accuracy; "
        "train img/s: " + _throughput_note(rows) + ".",
        "",
        "NLL and bits/dim compare models only with the same likelihood and the same "
        "binarization: a Gaussian or continuous-Bernoulli density on grey pixels is not on the "
        "scale of a Bernoulli probability of binary pixels.",
    ]
    if report["notes"]:
        parts += ["", "Notes:", "", *(f"- {n}" for n in report["notes"])]
    figures_md = ["", "![comparison](comparison.png)", ""]
    return "\n".join(parts + figures_md)


def _throughput_note(rows: list[dict[str, Any]]) -> str:
    sources = sorted({r["images_per_sec_source"] for r in rows if r["images_per_sec_source"]})
    return "; ".join(sources) if sources else "not available (no metrics.csv or timestamps)"


def _write_table(rows: list[dict[str, Any]], out: Path) -> None:
    # variants add columns of their own terms: the header is the union, in first-seen order
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with (out / "comparison.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------- figures
def _figures(
    runs: list[LoadedRun],
    test_sets: dict[tuple, TestSet],
    evaluations: dict[str, Evaluation],
    args: argparse.Namespace,
    out: Path,
) -> list[Path]:
    panels: list[figures.Panel] = []
    by_name = {run.name: run for run in runs}
    for i, ts in enumerate(test_sets.values()):
        n = min(SHOWN, len(ts.x))
        x, y = ts.x[:n], None if ts.y is None else ts.y[:n]
        recons = [(name, figures.reconstructions(by_name[name].model, x, y)) for name in ts.runs]
        slug = "reconstructions" if len(test_sets) == 1 else f"reconstructions_{i}"
        title = f"Reconstructions E[x|z=mu] of the same {ts.dataset} test images"
        panels.append(figures.reconstruction_panel(title, x, recons, slug))
    samples = []
    for run in runs:
        L.seed_everything(args.seed, verbose=False)
        samples.append((run.name, run.model.sample(SAMPLES_PER_ROW).cpu()))
    panels.append(figures.samples_panel("Prior samples E[x|z], z ~ p(z) (CVAE: classes "
                                        "0, 1, 2, ... in turn)", samples))
    for run in runs:
        ts = test_sets[_data_key(run, args)]
        L.seed_everything(args.seed, verbose=False)
        if run.model.show_traversals and evaluations[run.name].kl_per_dim is not None:
            panels.append(figures.traversal_panel(
                run.name, run.model, ts.x[:1], None if ts.y is None else ts.y[:1],
                evaluations[run.name].kl_per_dim,
            ))
        if run.model.num_classes:
            panels.append(figures.class_grid_panel(run.name, run.model, ts.class_names))
        if run.model.latent_dim == 2:
            panels.append(figures.manifold_panel(run.name, run.model))
    panels += _latent_panels(runs, test_sets, args)
    curves = {run.name: read_metrics_csv(run.metrics_csv) for run in runs}
    written = [figures.save_panel(p, out / f"{p.slug}.png") for p in panels]
    fig = figures.curves_figure(curves)
    if fig is not None:
        fig.savefig(out / "curves.png", dpi=100)
        figures.plt.close(fig)
        written.append(out / "curves.png")
    written.insert(0, figures.save_figure(panels, curves, out / "comparison.png"))
    return written


def _latent_panels(
    runs: list[LoadedRun], test_sets: dict[tuple, TestSet], args: argparse.Namespace
) -> list[figures.Panel]:
    """Per test set the posterior-mean scatters of its models side by side; interpolations.

    Models with a discrete latent (the VQ-VAE's code indices) have no posterior means: skipped.
    """
    panels = []
    runs = [
        r for r in runs if latent_is_continuous(r.model, *_first(test_sets[_data_key(r, args)]))
    ]
    for i, ts in enumerate(test_sets.values()):
        scatters = []
        for name in ts.runs:
            run = next((r for r in runs if r.name == name), None)
            if run is None:
                continue
            scatters.append((name, posterior_means(run.model, ts.x, ts.y, args.batch_size), ts.y))
        if not scatters:
            continue
        slug = "latents" if len(test_sets) == 1 else f"latents_{i}"
        title = f"Posterior means E[z|x] of the {_test_set_name(ts)}, coloured by label"
        panels.append(latent_figures.scatter_panel(title, scatters, ts.class_names, slug))
    for run in runs:
        ts = test_sets[_data_key(run, args)]
        if len(ts.x) < 2:
            continue
        panels.append(latent_figures.interpolation_panel(
            run.name, run.model, ts.x, ts.y, ts.class_names, seed=args.seed
        ))
    return panels


def _first(ts: TestSet) -> tuple[Tensor, Tensor | None]:
    """One test image (and label) of a test set: enough to ask a model about its latent."""
    return ts.x[:1], None if ts.y is None else ts.y[:1]


if __name__ == "__main__":
    sys.exit(main())
