"""Nothing lost on a kill: a SIGKILL-ed fit resumed with ``--ckpt_path last`` logs every step once.

The fit runs in a subprocess that hangs at a chosen step (``cli_support.PauseAt``) after a
mid-epoch ``last.ckpt`` exists, and is killed there with SIGKILL: no handler runs, as when a
machine dies. The resumed run must end like an uninterrupted one with the same settings: the
same rows in ``metrics.csv`` (one per logged step, none twice, none missing), the same number
of epochs and the same final global step, and Lightning must not warn that the data loader
cannot resume mid-epoch.
"""

import csv
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from cli_support import ROOT, TINY, config, run, step_of, subprocess_env

RUN = Path("runs/mnist/vae/version_0")
ARGS = [
    "--config", config("mnist", "vae"), *TINY,
    "--trainer.limit_train_batches=5",  # the whole tiny training split: 80 images, batch 16
    "--trainer.max_epochs=3",
    "--trainer.log_every_n_steps=1",
    "--last.every_n_train_steps=2",
]
# epoch 1 runs steps 6..10; hanging at the end of its last batch (before its validation and
# epoch-end save, after the step-9 row is logged), last.ckpt holds step 8, three batches in
KILL_AT, SAVED = 10, 8


def rows(run_dir: Path) -> list[tuple[str, str, frozenset[str]]]:
    """Each metrics.csv row as (epoch, step, the columns it fills)."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [
            (r["epoch"], r["step"], frozenset(k for k, v in r.items() if v not in ("", None)))
            for r in csv.DictReader(f)
        ]


def kill_at(step: int, workdir: Path, factory: pytest.TempPathFactory) -> None:
    """Run ``fit ARGS`` in a subprocess and SIGKILL it while it hangs at ``step``."""
    marker = workdir / "paused"
    pause = (
        '--trainer.callbacks=[{"class_path": "cli_support.PauseAt", '
        f'"init_args": {{"step": {step}, "marker": "{marker}"}}}}]'
    )
    command = [sys.executable, str(ROOT / "tests" / "cli_support.py"), "fit", *ARGS, pause]
    log = (workdir / "killed.log").open("w")
    proc = subprocess.Popen(command, cwd=workdir, env=subprocess_env(factory), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the fit ended (exit {proc.returncode}) before step {step}:\n"
                            + (workdir / "killed.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("the fit did not reach the step within 300 s")
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
        log.close()


def test_a_killed_fit_resumes_without_losing_or_repeating_a_row(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", *ARGS, "--trainer.default_root_dir=uninterrupted") == 0
    expected = rows(Path("uninterrupted"))

    kill_at(KILL_AT, workdir, tmp_path_factory)
    assert step_of(RUN / "checkpoints/last.ckpt") == SAVED
    killed = rows(RUN)
    before = [r for r in killed if int(r[1]) < SAVED]
    assert len(before) < len(killed)  # the killed run had logged past its checkpoint
    capsys.readouterr()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run("fit", *ARGS, "--ckpt_path", "last") == 0
    assert f"from global step {SAVED}" in capsys.readouterr().out
    assert not [w for w in caught if "not resumable" in str(w.message)]

    resumed = rows(RUN)
    assert resumed == expected  # every logged step once, in order, with the same columns
    assert len({r for r in resumed}) == len(resumed)
    assert resumed[: len(before)] == before  # the rows before the checkpoint are kept
    assert {r[0] for r in resumed} == {"0", "1", "2"}
    assert step_of(RUN / "checkpoints/last.ckpt") == step_of(
        Path("uninterrupted/checkpoints/last.ckpt")
    ) == 15
