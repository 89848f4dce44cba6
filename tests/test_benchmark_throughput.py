"""benchmarks/throughput.py runs end to end on tiny data (speed itself is never asserted here)."""

import contextlib
import importlib.util
import io
import math
import sys
from types import ModuleType

import pytest
import torch
from cli_support import ROOT, VAL_SIZE


@pytest.fixture
def throughput(monkeypatch) -> ModuleType:
    """The benchmark script, imported as a module (it is not part of the package), set up for
    the tiny data sets (whose training split is smaller than the default validation split)."""
    path = ROOT / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module
    spec.loader.exec_module(module)
    monkeypatch.setitem(module.MODELS, "mlp", [f"--data.val_size={VAL_SIZE}"])
    yield module
    sys.modules.pop("throughput", None)


def test_pairs_alternate_their_order(throughput: ModuleType, monkeypatch) -> None:
    """a b, b a, a b: a machine that drifts during the run favours neither side."""
    order = []

    def fake(side):
        def run(*args):
            order.append(side)
            window = throughput.Window("cpu", wall=[0.0, 1.0], cpu=[0.0, 1.0], images=10)
            window.init_checksum = 1.0
            return window

        return run

    monkeypatch.setattr(throughput, "run_lightning", fake("L"))
    monkeypatch.setattr(throughput, "run_plain", fake("P"))
    setup = throughput.Setup("mlp", 1, 1, 8, "cpu", "32-true", False, 0, False)
    runs = throughput.measure(setup, 3, None, None)
    assert order == ["L", "P", "P", "L", "L", "P"]
    assert len(runs["lightning"]) == len(runs["plain"]) == 3


def test_benchmark_runs_both_methods(workdir, throughput: ModuleType) -> None:
    """Separate runs and the interleaved fit both produce their lines, with sane ratios."""
    argv = ["--steps", "3", "--warmup", "2", "--repeats", "2", "--models", "mlp"]
    argv += ["--batch_size", "8", "--threads", "1", "--interleaved", "--bare"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert throughput.main(argv) == 0
    text = out.getvalue()
    assert "ratio of each pair: median" in text
    for name in ("interleaved:", "bare Lightning:"):
        line = next(ln for ln in text.splitlines() if name in ln)
        ratios = [float(r) for r in line.split("fits: ")[1].split()]
        assert len(ratios) == 2 and all(math.isfinite(r) and r > 0 for r in ratios)
    assert "vae_zoo fit / bare Lightning: median" in text


def test_bare_module_trains_the_plain_objective(throughput: ModuleType) -> None:
    """The bare module's step is the plain loop's loss, and it optimises the model's weights."""
    setup = throughput.Setup("mlp", 1, 1, 8, "cpu", "32-true", False, 0, False)
    model = throughput.build_cli(setup).model
    bare = throughput.BareModule(model)
    x = torch.rand(4, 1, 28, 28).bernoulli()
    torch.manual_seed(0)
    got = bare.training_step((x, None), 0)
    torch.manual_seed(0)
    assert torch.equal(got, model.elbo(x, None)["loss"].mean())
    opt = bare.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters()
    }
    assert opt.defaults["lr"] == model.hparams.lr


def test_bare_needs_interleaved(throughput: ModuleType, capsys) -> None:
    """--bare alone is refused with a line that names the missing flag."""
    with pytest.raises(SystemExit) as err:
        throughput.parse_args(["--bare"])
    assert err.value.code == 2
    assert "add --interleaved" in capsys.readouterr().err


def test_twin_times_every_window_step(workdir, throughput: ModuleType) -> None:
    """The interleaved twin runs one plain step per Lightning step of the window and times both."""
    setup = throughput.Setup("mlp", 4, 2, 8, "cpu", "32-true", False, 0, False)
    images, labels = throughput.training_images(setup)
    twin = throughput.PlainTwin(setup, images, labels)
    from vae_zoo.cli import VAEZooCLI

    args = ["fit", *throughput.cli_args(setup, str(workdir / "run"))]
    with throughput.quiet():
        VAEZooCLI(args=args, trainer_defaults={"callbacks": [twin]})
    # steps warmup..warmup+steps end the window: steps+1 plain steps, steps Lightning intervals
    assert len(twin.plain) == setup.steps + 1
    assert len(twin.lightning) == setup.steps
    assert all(t > 0 for t in twin.plain + twin.lightning)


def test_training_step_benchmark_prints_both_kinds(workdir, throughput: ModuleType) -> None:
    """benchmarks/training_step.py: the measured and the control fits, and their summary."""
    path = ROOT / "benchmarks" / "training_step.py"
    spec = importlib.util.spec_from_file_location("training_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports the throughput fixture's module (tiny data)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["--steps", "6", "--warmup", "2", "--repeats", "2", "--batch_size", "8"]
        assert module.main([*argv, "--threads", "1"]) == 0
    lines = out.getvalue().splitlines()
    assert sum(ln.startswith("training_step ") for ln in lines) == 2
    assert sum(ln.startswith("control ") for ln in lines) == 2
    for name in ("training_step", "control"):
        summary = next(ln for ln in lines if ln.startswith(f"{name}: median added"))
        assert math.isfinite(float(summary.split()[3]))
