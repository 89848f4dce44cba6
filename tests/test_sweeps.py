"""Sweeps: the sweep files, W&B's engine behind the proposer, the agent's argv, the runner."""

import csv
import json
import math
import os
import random
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from vae_zoo.shipped import locate
from vae_zoo.sweep import cli as sweep_cli
from vae_zoo.sweep.check import check_cli_accepts, fit_args, print_config_argv
from vae_zoo.sweep.command import expand_command, sweep_command_args, use_interpreter
from vae_zoo.sweep.proposer import Proposer, TrialState
from vae_zoo.sweep.results import (
    RunRecord,
    format_table,
    rank_records,
    read_history,
    write_results_csv,
)
from vae_zoo.sweep.runner import SweepOptions, SweepRunner, fit_index
from vae_zoo.sweep.spec import SweepConfigError, load_spec, validate_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
REQUIRED = {
    "beta_vae_mnist.yaml": "grid",
    "beta_vae_fashion_mnist.yaml": "grid",
    "vae_mnist_bayes.yaml": "bayes",
    "cvae_mnist_random.yaml": "random",
    "iwae_mnist.yaml": "grid",
    "info_vae_mnist.yaml": "grid",
    "beta_tcvae_mnist.yaml": "grid",
    "factor_vae_mnist.yaml": "grid",
}


def write_sweep(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def get_nested(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        node = node[key]
    return node


# ---------------------------------------------------------------- the sweep files


def test_required_sweep_files_exist():
    names = {p.name for p in SWEEP_FILES}
    assert set(REQUIRED) <= names
    for name, method in REQUIRED.items():
        assert load_spec(ROOT / "sweeps" / name).method == method
    assert any(load_spec(p).early_terminate for p in SWEEP_FILES), "one file uses hyperband"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_is_valid_and_runs_fit_with_wandb(path):
    from wandb.sdk.launch.sweeps.utils import load_sweep_config

    spec = load_spec(path)
    assert load_sweep_config(str(path)) == spec.raw  # what `wandb sweep` reads
    assert spec.metric_name in ("val/loss", "val/nll")
    assert spec.goal == "minimize"
    argv = spec.command
    assert fit_index(argv) is not None, "the command runs `python -m vae_zoo fit`"
    assert "${args}" in argv
    configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    # config names, so that the file runs from any folder (they resolve to the shipped files)
    files = [locate(config, "configs") for config in configs]
    assert all(not config.endswith(".yaml") for config in configs), configs
    assert ROOT / "configs" / "logger" / "wandb.yaml" in files, "online runs must log to W&B"
    for name in spec.parameter_names:
        assert name.split(".")[0] in ("model", "data", "trainer"), name


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_parameters_are_accepted_by_the_cli(path, monkeypatch, capsys, tmp_path):
    from vae_zoo.cli import main as vae_zoo_main

    monkeypatch.chdir(tmp_path)  # any folder: the sweep names its configs by name
    spec = load_spec(path)
    argv = print_config_argv(spec)
    assert argv is not None and argv[-1] == "--print_config"
    code = vae_zoo_main(fit_args(argv))
    out = capsys.readouterr().out
    assert code == 0
    printed = yaml.safe_load(out)
    for name, value in spec.first_values().items():
        got = get_nested(printed, name)
        assert got == value or math.isclose(float(got), float(value)), (name, got, value)


def test_cli_rejects_a_misspelt_parameter(monkeypatch, capsys):
    from vae_zoo.cli import main as vae_zoo_main

    monkeypatch.chdir(ROOT)
    code = vae_zoo_main(
        ["fit", "--config", "configs/mnist/vae.yaml", "--model.init_args.betta=4", "--print_config"]
    )
    assert code != 0
    assert "betta" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_sweep_is_checked_from_any_folder(tmp_path, monkeypatch):
    # the check runs the sweep's own command (`python -m vae_zoo fit ... --print_config`)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's vae_zoo in the subprocess
    assert check_cli_accepts(load_spec(locate("cvae_mnist_random", "sweeps")))


def test_check_cli_accepts_names_the_rejected_parameter(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = write_sweep(
        tmp_path / "bad.yaml",
        {
            "method": "grid",
            "metric": {"name": "val/loss"},
            "parameters": {"model.init_args.betta": {"values": [2]}},
            "command": ["python", "-m", "vae_zoo", "fit", "--config", "configs/mnist/vae.yaml",
                        "${args}"],
        },
    )
    with pytest.raises(SweepConfigError, match="betta"):
        check_cli_accepts(load_spec(path))


# ---------------------------------------------------------------- validation


GOOD = {
    "method": "grid",
    "metric": {"name": "val/loss", "goal": "minimize"},
    "parameters": {"model.init_args.beta": {"values": [1, 2]}},
    "command": ["python", "-m", "vae_zoo", "fit", "${args}"],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "grdi"}, "unknown or missing method 'grdi'"),
        ({"parameters": None}, "non-empty `parameters`"),
        ({"parameters": {}}, "non-empty `parameters`"),
        ({"parameters": {"model init_args": {"values": [1]}}}, "not a CLI key"),
        ({"parameters": {"model": {"parameters": {"lr": {"values": [1]}}}}}, "nested"),
        ({"parameters": {"a.b": {"min": 3.0, "max": 1.0}}}, "min 3.0 is not less than max 1.0"),
        ({"parameters": {"a.b": {"min": 1.0, "max": 2.0}}}, "grid search needs listed values"),
        ({"metric": {"name": "val/loss", "goal": "minimise"}}, "not a valid W&B sweep"),
        ({"command": ["python", "train.py"]}, "must contain ${args}"),
        ({"command": ["${program}", "${args}"]}, "sets no `program`"),
        ({"early_terminate": {"type": "hyperband"}}, "not a valid W&B sweep"),
        ({"metric": None, "method": "bayes"}, "need a `metric"),
        ({"extra_key": 1}, "'extra_key' was unexpected"),
    ],
)
def test_invalid_sweep_configs_are_refused_with_a_clear_message(change, message):
    config = {**GOOD, **change}
    config = {k: v for k, v in config.items() if v is not None or k == "parameters"}
    with pytest.raises(SweepConfigError) as err:
        validate_config(config, "x.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("sweep file x.yaml")


def test_missing_and_unparsable_sweep_files(tmp_path):
    with pytest.raises(SweepConfigError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    # a flow list with ${...} is not YAML; W&B's examples write the command as a block list
    bad.write_text("method: grid\ncommand: [${env}, python, ${args}]\n")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_spec(bad)


def test_cli_reports_an_invalid_file_in_one_line(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", {**GOOD, "method": "hyper"})
    assert sweep_cli.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sweep file")
    assert "grid, random, bayes" in err[0]


def test_random_sweep_needs_a_count(tmp_path, capsys):
    config = {**GOOD, "method": "random"}
    path = write_sweep(tmp_path / "s.yaml", config)
    assert sweep_cli.main([str(path), "--out", str(tmp_path / "o")]) == 2
    assert "--count" in capsys.readouterr().err
    assert sweep_cli.default_count(validate_config({**config, "run_cap": 7})) == 7
    assert sweep_cli.default_count(validate_config(GOOD)) == 2


# ---------------------------------------------------------------- the proposer (W&B's engine)


def test_grid_enumerates_every_combination_once_then_stops():
    spec = validate_config(
        {
            **GOOD,
            "parameters": {
                "model.init_args.beta": {"values": [1, 4]},
                "model.init_args.latent_dim": {"distribution": "int_uniform", "min": 2, "max": 4},
                "data.batch_size": {"value": 64},
            },
        }
    )
    assert spec.grid_size() == 6
    proposer = Proposer(spec)
    trials = []
    while proposals := proposer.propose(trials, 1):
        trials.append(TrialState(f"r{len(trials)}", proposals[0], "finished", [1.0]))
        assert len(trials) <= 6
    combos = {(t.params["model.init_args.beta"], t.params["model.init_args.latent_dim"])
              for t in trials}
    assert combos == {(b, d) for b in (1, 4) for d in (2, 3, 4)}
    assert all(t.params["data.batch_size"] == 64 for t in trials)
    # several at once (parallel slots) never repeat a grid point
    assert len({tuple(p.values()) for p in Proposer(spec).propose([], 6)}) == 6


RANDOM_PARAMS = {
    "model.init_args.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    "model.init_args.latent_dim": {"distribution": "int_uniform", "min": 2, "max": 9},
    "model.init_args.prior": {"values": ["standard", "learned"]},
}


def test_random_search_respects_distributions_and_is_seeded():
    spec = validate_config({**GOOD, "method": "random", "parameters": RANDOM_PARAMS})
    draws = Proposer(spec, seed=3).propose([], 400)
    lrs = np.array([d["model.init_args.lr"] for d in draws])
    dims = [d["model.init_args.latent_dim"] for d in draws]
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    # log-uniform: half of the draws below the geometric midpoint 1e-3 (uniform would give ~9%)
    assert 0.4 < np.mean(lrs < 1e-3) < 0.6
    assert all(isinstance(d, int) and 2 <= d <= 9 for d in dims) and set(dims) == set(range(2, 10))
    assert {d["model.init_args.prior"] for d in draws} == {"standard", "learned"}
    assert Proposer(spec, seed=3).propose([], 400) == draws
    assert Proposer(spec, seed=4).propose([], 5) != draws[:5]


def test_bayes_search_stays_in_bounds_learns_from_results_and_is_seeded():
    spec = validate_config(
        {**GOOD, "method": "bayes", "parameters": RANDOM_PARAMS, "metric": {"name": "val/loss"}}
    )
    state = (random.getstate(), np.random.get_state())

    def run(seed):
        proposer, trials = Proposer(spec, seed=seed), []
        for i in range(8):
            params = proposer.propose(trials, 1)[0]
            # the best runs have lr near 1e-3
            loss = abs(math.log10(params["model.init_args.lr"]) + 3.0)
            trials.append(TrialState(f"r{i}", params, "finished", [loss + 1.0, loss]))
        return trials

    trials = run(0)
    assert random.getstate() == state[0] and np.all(np.random.get_state()[1] == state[1][1])
    for t in trials:
        assert 1e-4 <= t.params["model.init_args.lr"] <= 1e-2
        assert 2 <= t.params["model.init_args.latent_dim"] <= 9
        assert t.params["model.init_args.prior"] in ("standard", "learned")
    assert [t.params for t in run(0)] == [t.params for t in trials]
    # the metrics steer the search: the same runs with the opposite results, another proposal
    flipped = [TrialState(t.name, t.params, "finished", [-v for v in t.history]) for t in trials]
    assert Proposer(spec, seed=1).propose(trials, 1) != Proposer(spec, seed=1).propose(flipped, 1)
    # a failed run is given to the engine as failed (W&B imputes the worst metric)
    failed = trials + [TrialState("f", trials[0].params, "failed", [])]
    assert len(Proposer(spec).propose(failed, 2)) == 2


def test_hyperband_stops_a_running_run_behind_the_others_at_a_band():
    spec = validate_config(
        {**GOOD, "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2}}
    )
    proposer = Proposer(spec)
    trials = [
        TrialState("done", {"model.init_args.beta": 1}, "finished", [5.0, 3.0, 2.0]),
        TrialState("bad", {"model.init_args.beta": 2}, "running", [9.0, 8.0]),
        TrialState("good", {"model.init_args.beta": 1}, "running", [4.0, 2.5]),
        TrialState("young", {"model.init_args.beta": 2}, "running", [20.0]),
    ]
    assert proposer.to_stop(trials) == ["bad"]
    assert Proposer(validate_config(GOOD)).to_stop(trials) == []


# ---------------------------------------------------------------- the agent's command line


SAMPLE = {"model.init_args.lr": 0.0003, "data.batch_size": 64, "model.init_args.prior": "learned",
          "trainer.fast_dev_run": False, "x.flag": True, "x.none": None}


def test_command_args_equal_wandbs():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    ours = sweep_command_args(SAMPLE)
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in SAMPLE.items()}})
    assert ours == theirs
    assert "--model.init_args.lr=0.0003" in ours["args"]


def test_expanded_command_equals_what_wandb_agent_runs(tmp_path, monkeypatch):
    """Drive wandb's own Agent._command_run and capture the argv it would start."""
    import wandb.wandb_agent as wandb_agent

    captured = {}

    class FakeProcess:
        def __init__(self, command=None, env=None, **kwargs):
            captured["argv"] = command

    monkeypatch.setattr(wandb_agent, "AgentProcess", FakeProcess)
    for var in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SWEEP_ID"):
        monkeypatch.setenv(var, "placeholder")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("MY_CONFIG", "configs/mnist/vae.yaml")
    command = ["${env}", "${interpreter}", "-m", "vae_zoo", "fit", "--config",
               "${envvar:MY_CONFIG}", "${args}", "--x", "${args_no_hyphens}", "${args_json}",
               "${args_json_file}", "${program}", "${unknown}"]
    agent = wandb_agent.Agent.__new__(wandb_agent.Agent)
    agent._sweep_command = list(command)
    agent._function = None
    agent._in_jupyter = False
    agent._forward_signals = False
    agent._run_processes = {}
    agent._command_run(
        {"run_id": "abc", "program": "vae_zoo/__main__.py",
         "args": {k: {"value": v} for k, v in SAMPLE.items()}}
    )
    json_file = os.path.join(str(tmp_path), "wandb", "sweep-placeholder", "config-abc.json")
    ours = expand_command(command, SAMPLE, program="vae_zoo/__main__.py", args_json_file=json_file)
    assert ours == captured["argv"]
    assert "configs/mnist/vae.yaml" in ours and "${unknown}" not in ours


def test_offline_runs_use_the_sweeps_interpreter_and_own_run_dir(tmp_path):
    assert use_interpreter(["/usr/bin/env", "python", "-m", "x"], "/py") == [
        "/usr/bin/env", "/py", "-m", "x"]
    assert use_interpreter(["bash", "python"], "/py") == ["bash", "python"]
    spec = load_spec(ROOT / "sweeps" / "beta_vae_mnist.yaml")
    runner = SweepRunner(spec, SweepOptions(out_dir=tmp_path, count=1,
                                            overrides=["--trainer.max_epochs=1"]))
    argv = runner.build_command({"model.init_args.beta": 4}, tmp_path / "run_000")
    assert argv[1] == sys.executable
    assert argv[-3:] == ["--model.init_args.beta=4", "--trainer.max_epochs=1",
                         f"--trainer.default_root_dir={tmp_path / 'run_000'}"]


# ---------------------------------------------------------------- results


def test_read_history_skips_other_rows_and_partial_lines(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/loss\n0,10,5.0,\n0,10,,4.0\n1,20,3.0,\n1,20,,nan\n"
                    "2,30,,2.5\n3,40,,2.")
    assert read_history(path, "val/loss") == [4.0, 2.5, 2.0]
    assert read_history(path, "val/nll") == []
    assert read_history(tmp_path / "missing.csv", "val/loss") == []


def _record(i, metric, status="finished", **params):
    return RunRecord(index=i, params=params, run_dir=Path(f"d/run_{i:03d}"),
                     command=["python", "-c", "pass", f"--i={i}"], status=status, metric=metric)


def test_ranking_and_results_csv(tmp_path):
    records = [_record(0, 3.0, beta=1), _record(1, None, "failed", beta=2),
               _record(2, 1.5, beta=4), _record(3, 2.0, "stopped", beta=8)]
    assert [r.index for _, r in rank_records(records, "minimize")] == [2, 3, 0, 1]
    assert [r.index for _, r in rank_records(records, "maximize")] == [0, 3, 2, 1]
    path = write_results_csv(tmp_path / "sweep_results.csv", records, "minimize", ["beta"])
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["rank", "run", "status", "metric", "beta", "run_dir", "command"]
    assert [(r["rank"], r["run"], r["status"], r["beta"]) for r in rows] == [
        ("1", "run_002", "finished", "4"), ("2", "run_003", "stopped", "8"),
        ("3", "run_000", "finished", "1"), ("", "run_001", "failed", "2")]
    assert float(rows[0]["metric"]) == 1.5 and rows[3]["metric"] == ""
    assert rows[0]["command"] == "python -c pass --i=2"
    table = format_table(records, "minimize", ["beta"], "val/loss").splitlines()
    assert table[0].split() == ["rank", "run", "status", "val/loss", "beta", "run_dir"]
    assert table[1].split()[:4] == ["1", "run_002", "finished", "1.5000"]


# ---------------------------------------------------------------- the runner, with a fake program

FAKE_FIT = textwrap.dedent(
    """
    import os, sys, time
    x = float(sys.argv[1].split("=", 1)[1])
    run_dir = os.environ["VAE_ZOO_SWEEP_RUN_DIR"]
    if x == 2:
        print("Traceback ...", file=sys.stderr)
        print("error: the model diverged", file=sys.stderr)
        sys.exit(3)
    if x == 5:
        sys.exit(0)  # exits cleanly but never logs the metric
    losses = [x + 3, x + 2, x + 1, x] if x < 9 else [x] * 50
    with open(os.path.join(run_dir, "metrics.csv"), "w") as f:
        f.write("epoch,step,val/loss\\n")
        for epoch, loss in enumerate(losses):
            f.write(f"{epoch},{epoch},{loss}\\n")
            f.flush()
            if x >= 9:
                time.sleep(0.2)  # slow and bad: hyperband should stop it
    open(os.path.join(run_dir, "done"), "w").close()
    """
)


def fake_sweep(tmp_path, values, **extra):
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    return write_sweep(
        tmp_path / "fake.yaml",
        {"method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
         "parameters": {"x": {"values": values}},
         "command": ["${env}", "${interpreter}", str(script), "${args}"], **extra},
    )


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    sweep = fake_sweep(tmp_path, [3, 2, 1, 5, 4])
    out = tmp_path / "out"
    code = sweep_cli.main([str(sweep), "--out", str(out), "--poll", "0.05", "--no_compare"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "run_001 failed (exit 3): error: the model diverged" in printed
    rows = list(csv.DictReader((out / "sweep_results.csv").open()))
    assert [(r["rank"], r["run"], r["status"], r["x"]) for r in rows] == [
        ("1", "run_002", "finished", "1"), ("2", "run_000", "finished", "3"),
        ("3", "run_004", "finished", "4"), ("", "run_001", "failed", "2"),
        ("", "run_003", "failed", "5")]
    assert [float(r["metric"]) for r in rows[:3]] == [1.0, 3.0, 4.0]
    assert "error: the model diverged" in (out / "run_001" / "stderr.log").read_text()
    assert "logged no val/loss" in (out / "run_003" / "stderr.log").read_text()
    assert rows[0]["run_dir"] == str(out / "run_002")
    assert json.loads((out / "run_002" / "sweep_args.json").read_text()) == {"x": 1}


def test_bayes_sweep_in_parallel_feeds_results_back(tmp_path):
    sweep = fake_sweep(tmp_path, [1])
    config = yaml.safe_load(sweep.read_text())
    config.update(method="bayes", parameters={"x": {"min": 3.0, "max": 8.0}})
    spec = validate_config(config, sweep)
    runner = SweepRunner(spec, SweepOptions(out_dir=tmp_path / "o", count=4, parallel=2,
                                            poll_interval=0.05), log=lambda line: None)
    records = runner.run()
    assert [r.status for r in records] == ["finished"] * 4
    xs = [r.params["x"] for r in records]
    assert all(3.0 <= x <= 8.0 for x in xs) and len(set(xs)) == 4
    # each run's metric is its x (the fake run's last val/loss), read back from metrics.csv
    assert [r.metric for r in records] == pytest.approx(xs)
    rows = list(csv.DictReader((tmp_path / "o" / "sweep_results.csv").open()))
    assert [float(r["x"]) for r in rows] == pytest.approx(sorted(xs))


def test_all_runs_failing_exits_nonzero(tmp_path):
    sweep = fake_sweep(tmp_path, [2])
    assert sweep_cli.main([str(sweep), "--out", str(tmp_path / "o"), "--poll", "0.05"]) == 1


@pytest.mark.parametrize("parallel", [1, 2])
def test_hyperband_stops_a_bad_run_offline(tmp_path, parallel):
    # x=1 finishes with 4 epochs; x=9 logs 9.0 every epoch for 50 epochs unless stopped at
    # band 2 (bands min_iter * eta^n = 2, 6, 18; at a band a run must be in the top 1/eta)
    sweep = fake_sweep(tmp_path, [1, 9],
                       early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3})
    spec = load_spec(sweep)
    logs = []
    runner = SweepRunner(spec, SweepOptions(out_dir=tmp_path / "o", count=2, parallel=parallel,
                                            poll_interval=0.05), log=logs.append)
    good, bad = runner.run()
    assert good.status == "finished" and good.metric == 1.0
    assert bad.status == "stopped", logs
    assert not (bad.run_dir / "done").exists()
    assert 2 <= len(bad.history) < 50 and bad.metric == 9.0
    assert any("run_001 stopped early by hyperband" in line for line in logs)


def test_compare_is_skipped_with_a_notice_when_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_cli, "COMPARE_MODULE", "vae_zoo.evaluation.no_such_compare")
    assert sweep_cli.run_compare([_record(0, 1.0)], tmp_path, 10, 10) is None


def test_refuses_to_reuse_a_sweep_directory(tmp_path, capsys):
    sweep = fake_sweep(tmp_path, [1])
    out = tmp_path / "o"
    (out / "run_000").mkdir(parents=True)
    assert sweep_cli.main([str(sweep), "--out", str(out)]) == 2
    assert "choose a new --out" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end, real MNIST


@pytest.mark.integration
@pytest.mark.slow
def test_beta_vae_sweep_end_to_end(tmp_path, monkeypatch):
    data = os.environ.get("VAE_ZOO_DATA")
    if not data:
        if os.environ.get("CI"):
            pytest.fail("VAE_ZOO_DATA must point at the real data in CI")
        pytest.skip("VAE_ZOO_DATA is not set")
    monkeypatch.setenv("VAE_ZOO_DATA", str(Path(data).resolve()))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sweep"
    code = sweep_cli.main(
        ["sweeps/beta_vae_mnist.yaml", "--count", "3", "--out", str(out), "--wandb_mode",
         "disabled", "--poll", "0.5", "--compare_k", "2", "--compare_n_test", "50", "--",
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=20",
         "--trainer.limit_val_batches=2", "--data.eval_batch_size=100", "--model.init_args.val_k=2",
         "--images.every_n_epochs=0"]
    )
    assert code == 0
    rows = list(csv.DictReader((out / "sweep_results.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert {r["model.init_args.beta"] for r in rows} == {"1", "2", "4"}
    metrics = [float(r["metric"]) for r in rows]
    assert metrics == sorted(metrics) and all(math.isfinite(m) and m > 0 for m in metrics)
    for row in rows:
        assert row["status"] == "finished"
        run_dir = Path(row["run_dir"])
        assert (run_dir / "metrics.csv").is_file()
        assert (run_dir / "checkpoints" / "best.ckpt").is_file()
        assert "--trainer.max_epochs=1" in row["command"]
    # compare ran on the finished runs, best first
    compared = list(csv.DictReader((out / "compare" / "comparison.csv").open()))
    assert [r["run"] for r in compared] == [r["run"] for r in rows]


def test_dry_run_prints_the_run_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "o"
    code = sweep_cli.main(["sweeps/beta_vae_mnist.yaml", "--dry_run", "--out", str(out), "--",
                           "--trainer.max_epochs=1"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5  # the whole grid
    assert lines[2].endswith(
        "--model.init_args.beta=4 --trainer.max_epochs=1 "
        f"--trainer.default_root_dir={out / 'run_002'}"
    )
    assert not out.exists()
