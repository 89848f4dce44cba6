"""``VAEZooCLI``: LightningCLI for the training commands (fit, validate, test, predict).

On top of LightningCLI it chooses the run directory (see :mod:`vae_zoo.cli.run_dir`), always
logs ``metrics.csv`` there, saves ``best.ckpt``/``last.ckpt`` (and ``last.ckpt`` on Ctrl-C or
SIGTERM), logs image grids, adds the classifier metrics (``fid_clf``) to ``test``, resolves
``--ckpt_path last|best`` to the latest run, refuses a checkpoint of another variant, and
prints where the results went.
"""

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from vae_zoo.callbacks import ImageGridLogger, InterruptCheckpoint
from vae_zoo.checkpoints import (
    AtomicCheckpointIO,
    class_from_path,
    read_checkpoint_meta,
    variant_of,
)
from vae_zoo.cli import run_dir as rd
from vae_zoo.cli.parser import VAEZooParser
from vae_zoo.errors import CheckpointMismatchError, ConfigError
from vae_zoo.evaluation.classifier_metrics import ClassifierMetrics
from vae_zoo.loggers import RunCSVLogger, prepare_wandb, previous_wandb_id
from vae_zoo.models import BaseVAE

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: model arguments that say how to evaluate, not what was trained: the config decides them
EVALUATION_KEYS = ("val_k", "test_k", "iw_rows", "compile")
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.filename": "best",
    "checkpoint.save_last": True,
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.enable_version_counter": False,
}


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


def _no_advert(record: logging.LogRecord) -> bool:
    """Logging filter dropping Lightning's advertisement for its cloud logger."""
    return "litlogger" not in str(record.msg)


def _quiet_known_noise() -> None:
    """Silence messages of the installed libraries that tell a user nothing about the run."""
    # lightning's pytree helper uses an API torch deprecated; nothing the user can change
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _no_advert not in log.filters:
        log.addFilter(_no_advert)


class VAEZooCLI(LightningCLI):
    """LightningCLI over any :class:`BaseVAE` variant and :class:`VAEDataModule`.

    Args:
        args: command-line arguments (None: ``sys.argv[1:]``).
        run: run the subcommand (False: only build model, data and trainer).
        **kwargs: further LightningCLI arguments.
    """

    def __init__(self, args: list[str] | dict | None = None, run: bool = True, **kwargs: Any):
        from vae_zoo.data import VAEDataModule

        _quiet_known_noise()

        mode = {"parser_mode": "omegaconf"}
        settings: dict[str, Any] = {
            "model_class": BaseVAE,
            "datamodule_class": VAEDataModule,
            "subclass_mode_model": True,
            "parser_class": VAEZooParser,
            "save_config_kwargs": {"overwrite": True},
            "seed_everything_default": 0,
            # parser_mode is per parser: each subcommand reads its own --config files
            "parser_kwargs": {"prog": "python -m vae_zoo", **mode}
            | {s: dict(mode) for s in SUBCOMMANDS},
        }
        settings.update(kwargs)
        self.run_dir: Path | None = None
        self._resume_step: int | None = None
        super().__init__(args=args, run=run, **settings)

    # ------------------------------------------------------------------ parsing
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the always-on callbacks as config sections ``checkpoint`` and ``images``."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(ImageGridLogger, "images")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (LightningCLI's version warns when they come from ``main(argv)``)."""
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``/``best``, refuse another variant's checkpoint, take its hparams.

        Replaces LightningCLI's version, which merges the checkpoint's hyper-parameters over
        the whole model config (switching the variant silently and ignoring ``test_k`` given
        on the command line). Here the architecture comes from the checkpoint and the
        evaluation settings (``EVALUATION_KEYS``) from the config.
        """
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        ckpt = cfg.get("ckpt_path")
        if not ckpt:
            return
        if ckpt in ("last", "best"):
            path = rd.resolve_alias(ckpt, self._experiment_dir(cfg), cfg.trainer.default_root_dir)
            _say(f"--ckpt_path {ckpt}: {rd.display(path)}")
            cfg.ckpt_path = ckpt = str(path)
        if not Path(ckpt).is_file():
            raise ConfigError(f"--ckpt_path {ckpt}: no such file; give a .ckpt file, last or best")
        hparams, self._resume_step = read_checkpoint_meta(ckpt)
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if not class_path:
            return
        self._check_variant(cfg, str(class_path), ckpt)
        current = cfg.model.init_args
        for key in EVALUATION_KEYS:
            if key in hparams and key in current:
                hparams[key] = current[key]
        changed = [
            f"{k}={hparams[k]!r}"
            for k in hparams
            if k in current and _plain(current[k]) != _plain(hparams[k])
        ]
        merged = {"model": {"class_path": cfg.model.class_path, "init_args": hparams}}
        self.config = self.parser.parse_object({sub: merged}, self.config)
        if changed:
            _say(f"model settings from the checkpoint: {', '.join(changed)}")

    def _check_variant(self, cfg: Namespace, class_path: str, ckpt: str) -> None:
        wanted, written = class_from_path(cfg.model.class_path), class_from_path(class_path)
        if wanted is written and written is not None:
            return
        variant = variant_of(class_path)
        run = rd.run_dir_of_checkpoint(ckpt)
        use = (
            f"{run / 'config.yaml'}"
            if run is not None and (run / "config.yaml").is_file()
            else f"configs/{cfg.data.dataset}/{variant}.yaml"
        )
        raise CheckpointMismatchError(
            f"checkpoint {ckpt} was written by {class_path} (variant '{variant}') but the config "
            f"selects {cfg.model.class_path}; use --config {use}"
        )

    # ------------------------------------------------------------------ run directory
    def _cfg(self) -> Namespace:
        """The config of the subcommand being run (the whole config when run=False)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def _experiment_dir(self, cfg: Namespace) -> Path:
        return rd.experiment_dir(str(cfg.data.dataset), variant_of(str(cfg.model.class_path)))

    def _choose_run_dir(self, sub: str, cfg: Namespace) -> Path:
        inherited = rd.inherited_run_dir()
        if inherited:
            return Path(inherited)
        explicit = cfg.trainer.default_root_dir
        ckpt_run = rd.run_dir_of_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
        if sub == "fit":
            if explicit:
                return Path(explicit)
            return ckpt_run or rd.next_version_dir(self._experiment_dir(cfg))
        base = ckpt_run or (Path(explicit) if explicit else None)
        if base is None:
            return rd.next_version_dir(self._experiment_dir(cfg), prefix=f"{sub}_")
        return base / sub

    def before_instantiate_classes(self) -> None:
        """Fix the run directory before the loggers and the trainer are built."""
        sub = self.subcommand or "fit"  # run=False builds what fit would
        self.run_dir = self._choose_run_dir(sub, self._cfg())
        os.environ[rd.RUN_DIR_ENV] = str(self.run_dir)

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does, with every logger's files put in the run dir."""
        config = copy.deepcopy(self.config)
        self._place_loggers(self._get(config, "trainer"))
        self.config_init = self.parser.instantiate_classes(config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def _place_loggers(self, trainer_cfg: Namespace) -> None:
        specs = trainer_cfg.logger
        for spec in specs if isinstance(specs, list) else [specs]:
            if not isinstance(spec, Namespace) or "class_path" not in spec:
                continue
            cls = class_from_path(spec.class_path)
            if not isinstance(cls, type) or not issubclass(cls, (WandbLogger, TensorBoardLogger)):
                continue
            spec.init_args.save_dir = str(self.run_dir)
            if issubclass(cls, WandbLogger):
                if rank_zero_only.rank == 0:
                    prepare_wandb(self.run_dir)
                if not spec.init_args.get("name"):
                    spec.init_args.name = "/".join(Path(self.run_dir).parts[-3:])
                resuming = self.subcommand == "fit" and self._resume_step is not None
                if resuming and not (spec.init_args.get("id") or spec.init_args.get("version")):
                    spec.init_args.id = previous_wandb_id(self.run_dir)  # continue that W&B run
            else:
                spec.init_args.name, spec.init_args.version = "", ""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with the run dir, the run's CSV logger and the checkpoint callbacks."""
        config = self._get(self.config_init, "trainer", default={})
        checkpointing = config.get("enable_checkpointing") is not False
        keys = self._parser(self.subcommand).callback_keys
        extra = [self._get(self.config_init, key) for key in keys]
        extra = [cb for cb in extra if checkpointing or not isinstance(cb, ModelCheckpoint)]
        ckpt_dir = Path(self.run_dir or ".") / "checkpoints"
        ckpt_path = self._get(self.config_init, "ckpt_path")
        if self.subcommand != "fit" and ckpt_path:
            # only fit writes checkpoints; pointing the callback at the checkpoint's own folder
            # lets Lightning restore its state without warnings about a changed dirpath
            ckpt_dir = Path(ckpt_path).parent
        if checkpointing and self.subcommand == "fit":
            extra.append(InterruptCheckpoint(ckpt_dir))
        if self.subcommand == "test" and not _has(config.get("callbacks"), ClassifierMetrics):
            # test/recon_acc, cond_acc and fid_clf whenever a classifier is cached; configure
            # it by listing it in trainer.callbacks (e.g. with init_args.fid_samples)
            extra.append(ClassifierMetrics())
        trainer_config = {**config, "default_root_dir": str(self.run_dir), **kwargs}
        trainer_config["logger"] = self._loggers(config.get("logger"))
        trainer_config["plugins"] = _with_atomic_io(config.get("plugins"))
        try:
            trainer = self._instantiate_trainer(trainer_config, extra)
        except (ValueError, TypeError) as err:
            # Trainer(...) rejects impossible settings (e.g. FSDP without a GPU) this way
            raise ConfigError(f"trainer settings: {err}") from err
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.realpath(ckpt_dir)
        return trainer

    def _loggers(self, given: Any) -> list[Logger] | bool:
        if given is False:
            return False
        others = [] if given in (None, True) else given if isinstance(given, list) else [given]
        # the run's own CSV logger replaces any other CSVLogger: both would write metrics.csv
        others = [lg for lg in others if not isinstance(lg, CSVLogger)]
        resume = self._resume_step if self.subcommand == "fit" else None
        return [RunCSVLogger(self.run_dir, resume_step=resume), *others]

    # ------------------------------------------------------------------ around the run
    def before_fit(self) -> None:
        """Say where the run goes (and from which step it resumes)."""
        if self.config.fit.get("ckpt_path"):
            # resuming in place: the run's checkpoints are expected to be there
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            _say(f"resuming in {rd.display(self.run_dir)} from global step {self._resume_step}")
        else:
            _say(f"fit: results go to {rd.display(self.run_dir)}")

    def before_validate(self) -> None:
        """Say where the validation results go."""
        _say(f"validate: results go to {rd.display(self.run_dir)}")

    def before_test(self) -> None:
        """Say where the test results go."""
        _say(f"test: results go to {rd.display(self.run_dir)}")

    def before_predict(self) -> None:
        """Say where the predictions go."""
        _say(f"predict: results go to {rd.display(self.run_dir)}")

    def after_fit(self) -> None:
        """Print where the checkpoints, config and metrics of the run are."""
        self._finish_wandb()
        if not self.trainer.is_global_zero or self.run_dir is None:
            return
        parts = []
        cb = self.trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint) and cb.best_model_path:
            parts.append(f"best checkpoint {rd.display(cb.best_model_path)}")
        parts += self._files("config.yaml", "metrics.csv")
        _say(f"results in {rd.display(self.run_dir)} ({', '.join(parts) or 'no files written'})")

    def after_validate(self) -> None:
        """Print where the validation metrics went."""
        self._after_evaluation()

    def after_test(self) -> None:
        """Print where the test metrics went."""
        self._after_evaluation()

    def after_predict(self) -> None:
        """Save the predictions (mu, logvar, reconstruction, y) to ``predictions.pt``."""
        self._finish_wandb()
        batches = self.trainer.predict_loop.predictions
        if not self.trainer.is_global_zero or self.run_dir is None or not batches:
            return
        if isinstance(batches[0], list):  # several predict dataloaders: keep the first
            batches = batches[0]
        merged = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "predictions.pt"
        torch.save(merged, path)
        _say(f"results in {rd.display(self.run_dir)} (predictions {rd.display(path)})")

    def _after_evaluation(self) -> None:
        self._finish_wandb()
        if self.trainer.is_global_zero and self.run_dir is not None:
            files = ", ".join(self._files("metrics.csv", "config.yaml")) or "no files written"
            _say(f"results in {rd.display(self.run_dir)} ({files})")

    def _files(self, *names: str) -> list[str]:
        assert self.run_dir is not None
        found = [self.run_dir / n for n in names if (self.run_dir / n).is_file()]
        return [f"{p.stem} {rd.display(p)}" for p in found]

    def _finish_wandb(self) -> None:
        # WandbLogger leaves the run open; closing it flushes the (offline) run to disk now
        if any(isinstance(lg, WandbLogger) for lg in self.trainer.loggers):
            import wandb

            if wandb.run is not None:
                wandb.finish()


def _has(callbacks: Any, kind: type) -> bool:
    """Whether the trainer's configured callbacks (one, a list or None) include a ``kind``."""
    given = callbacks if isinstance(callbacks, list) else [callbacks]
    return any(isinstance(cb, kind) for cb in given)


def _with_atomic_io(plugins: Any) -> list[Any]:
    """The trainer's plugins plus :class:`AtomicCheckpointIO` unless one writes checkpoints."""
    given = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in given):
        return given
    return [*given, AtomicCheckpointIO()]


def _plain(value: Any) -> Any:
    """A config value as plain Python data, for comparing a checkpoint's with the config's."""
    if isinstance(value, Namespace):
        return _plain(value.as_dict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
