"""``VAEZooCLI``: LightningCLI for the training commands (fit, validate, test, predict).

On top of LightningCLI it chooses the run directory (see :mod:`vae_zoo.runs`), always logs
``metrics.csv`` and ``train/images_per_sec`` there, saves ``best.ckpt`` and ``last.ckpt``
(every epoch end and on Ctrl-C or SIGTERM), logs image grids, adds the classifier metrics
(``recon_acc``, ``cond_acc``, ``fid_clf``) to ``test``, resolves
``--ckpt_path last|best`` to the latest run, refuses a checkpoint of another variant and an
evaluation without a checkpoint, and prints where the results went.

Only LightningCLI's public hooks are overridden (``add_arguments_to_parser``,
``parse_arguments``, ``before/after_instantiate_classes``, ``instantiate_trainer``, the static
``configure_optimizers``, ``before_<command>``/``after_<command>``); the one place that relies
on more is :mod:`vae_zoo.lightning_compat`.
"""

import copy
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from vae_zoo import runs
from vae_zoo.callbacks import (
    ImageGridLogger,
    ImagesPerSecond,
    InterruptCheckpoint,
    LastCheckpoint,
)
from vae_zoo.callbacks.classifier_metrics import ClassifierMetrics
from vae_zoo.checkpoints import AtomicCheckpointIO, variant_of
from vae_zoo.cli.parser import VAEZooParser, check_config_files
from vae_zoo.errors import CheckpointMismatchError, ConfigError
from vae_zoo.lightning_compat import (
    drop_nvml_check_without_nvml,
    restore_ckpt_path,
    stash_ckpt_path,
)
from vae_zoo.loggers import RunCSVLogger, prepare_wandb, previous_wandb_id
from vae_zoo.models import BaseVAE
from vae_zoo.models.registry import class_from_path

SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: model arguments that say how to evaluate, not what was trained: the config decides them
EVALUATION_KEYS = ("val_k", "test_k", "iw_rows", "compile")
#: the flag that lets validate/test/predict run without a checkpoint
UNTRAINED_FLAG = "allow_untrained"
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.filename": "best",
    # here save_last means "write last.ckpt": LastCheckpoint does, at every epoch end
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
        # a failed dlopen every optimizer step on a CPU machine; BaseVAE.setup drops it too, but
        # only once a fit starts: here it also goes for models built with run=False (benchmarks)
        drop_nvml_check_without_nvml()

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
        self._ckpt_path: str | None = None  # the resolved --ckpt_path (see lightning_compat)
        self._resume_step: int | None = None
        self._given_loggers: Any = None
        super().__init__(args=args, run=run, **settings)

    # ------------------------------------------------------------------ parsing
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Config sections ``checkpoint``, ``last``, ``images``; the ``allow_untrained`` flag."""
        # not add_lightning_class_args: instantiate_trainer adds these callbacks itself,
        # as it decides which of them a command needs
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", fail_untyped=False,
                                   sub_configs=True)
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_class_arguments(LastCheckpoint, "last", fail_untyped=False, sub_configs=True,
                                   skip={"dirpath", "filename"})
        parser.add_class_arguments(ImageGridLogger, "images", fail_untyped=False,
                                   sub_configs=True)
        parser.add_argument(
            f"--{UNTRAINED_FLAG}",
            type=bool,
            default=False,
            help="validate/test/predict without --ckpt_path: evaluate the untrained model "
            "(without this flag that is an error)",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; then resolve ``--ckpt_path`` and take the model settings from the checkpoint.

        LightningCLI's own step would merge the checkpoint's hyper-parameters over the whole
        model config (switching the variant silently and ignoring ``test_k`` given on the
        command line). Here the architecture comes from the checkpoint and the evaluation
        settings (``EVALUATION_KEYS``) from the config; see :mod:`vae_zoo.lightning_compat`.
        """
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            check_config_files(sys.argv[1:] if args is None else list(args))
            self.config = parser.parse_args(args)
        sub = self.config.get("subcommand")
        if not sub:
            return
        if not self.config[sub].get("ckpt_path"):
            if sub != "fit" and not self.config[sub].get(UNTRAINED_FLAG):
                raise ConfigError(
                    f"{sub} needs a trained model: add --ckpt_path best|last|PATH (best/last: "
                    f"of the newest run of this experiment), or --{UNTRAINED_FLAG}=true to "
                    "evaluate the untrained model"
                )
            return
        self._take_checkpoint(sub)
        self._ckpt_path = stash_ckpt_path(self.config[sub])

    def _take_checkpoint(self, sub: str) -> None:
        """Resolve ``last``/``best``, refuse another variant's checkpoint, take its hparams."""
        cfg = self.config[sub]
        ckpt = cfg.ckpt_path
        if ckpt in runs.ALIASES:
            path = runs.resolve_alias(
                ckpt, self._experiment_dir(cfg), cfg.trainer.default_root_dir
            )
            _say(f"--ckpt_path {ckpt}: {runs.display(path)}")
            cfg.ckpt_path = ckpt = str(path)
        if not Path(ckpt).is_file():
            raise ConfigError(f"--ckpt_path {ckpt}: no such file; give a .ckpt file, last or best")
        hparams, self._resume_step = runs.checkpoint_meta(ckpt)
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
        config = runs.config_file(runs.run_dir_of_checkpoint(ckpt))
        use = config or f"configs/{cfg.data.dataset}/{variant}.yaml"
        raise CheckpointMismatchError(
            f"checkpoint {ckpt} was written by {class_path} (variant '{variant}') but the config "
            f"selects {cfg.model.class_path}; use --config {use}"
        )

    # ------------------------------------------------------------------ run directory
    def _section(self, config: Namespace) -> Namespace:
        """The part of ``config`` of the subcommand being run (all of it when run=False)."""
        return config[self.subcommand] if self.subcommand else config

    def _experiment_dir(self, cfg: Namespace) -> Path:
        return runs.experiment_dir(str(cfg.data.dataset), variant_of(str(cfg.model.class_path)))

    def _choose_run_dir(self, sub: str, cfg: Namespace) -> Path:
        inherited = runs.inherited_run_dir()
        if inherited:
            return Path(inherited)
        explicit = cfg.trainer.default_root_dir
        ckpt_run = runs.run_dir_of_checkpoint(self._ckpt_path) if self._ckpt_path else None
        if sub == "fit":
            if explicit:
                return Path(explicit)
            return ckpt_run or runs.next_version_dir(self._experiment_dir(cfg))
        base = ckpt_run or (Path(explicit) if explicit else None)
        if base is None:
            return runs.next_version_dir(self._experiment_dir(cfg), prefix=f"{sub}_")
        return base / sub

    def before_instantiate_classes(self) -> None:
        """Fix the run directory, and put every logger's files into it."""
        cfg = self._section(self.config)
        if self.subcommand:
            restore_ckpt_path(cfg, self._ckpt_path)
        self.run_dir = self._choose_run_dir(self.subcommand or "fit", cfg)
        os.environ[runs.RUN_DIR_ENV] = str(self.run_dir)
        # placed on the config that is instantiated, and given back (after_instantiate_classes)
        # before config.yaml is written: a reused config must not name this run's folders
        self._given_loggers = copy.deepcopy(cfg.trainer.logger)
        self._place_loggers(cfg.trainer)

    def after_instantiate_classes(self) -> None:
        """Give back the logger settings as the user wrote them (they go to config.yaml)."""
        self._section(self.config).trainer.logger = self._given_loggers

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
        """The trainer with the run dir, the run's CSV logger and the command's callbacks."""
        section = self._section(self.config_init)
        config = section.get("trainer") or {}
        run_dir = Path(self.run_dir or ".")
        settings = {
            "default_root_dir": str(run_dir),
            "logger": self._loggers(config.get("logger")),
            "plugins": _with_atomic_io(config.get("plugins")),
            "callbacks": self._callbacks(section, run_dir),
            **kwargs,
        }
        try:
            trainer = super().instantiate_trainer(**settings)
        except (ValueError, TypeError) as err:
            # Trainer(...) rejects impossible settings (e.g. FSDP without a GPU) this way
            raise ConfigError(f"trainer settings: {err}") from err
        ckpt_dir = os.path.realpath(self._checkpoint_dir(run_dir))
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = ckpt_dir
        return trainer

    def _checkpoint_dir(self, run_dir: Path) -> Path:
        if self.subcommand not in (None, "fit") and self._ckpt_path:
            # only fit writes checkpoints; pointing the callback at the checkpoint's own folder
            # lets Lightning restore its state without warnings about a changed dirpath
            return Path(self._ckpt_path).parent
        return run_dir / runs.CHECKPOINT_DIR

    def _callbacks(self, section: Namespace, run_dir: Path) -> list[Callback]:
        """The user's callbacks, then best/last/interrupt checkpoints, image grids, throughput."""
        given = section.get("trainer", {}).get("callbacks")
        callbacks = [] if given is None else list(given) if isinstance(given, list) else [given]
        fitting = self.subcommand in (None, "fit")
        ckpt_dir = self._checkpoint_dir(run_dir)
        if section.get("trainer", {}).get("enable_checkpointing") is not False:
            best: ModelCheckpoint = section["checkpoint"]
            write_last, best.save_last = bool(best.save_last), False  # LastCheckpoint owns it
            callbacks.append(best)
            if fitting:
                last: LastCheckpoint = section["last"]
                last.dirpath = os.path.realpath(ckpt_dir)
                callbacks += [last] if write_last else []
                callbacks.append(InterruptCheckpoint(ckpt_dir))
        callbacks.append(section["images"])
        if fitting and not any(isinstance(cb, ImagesPerSecond) for cb in callbacks):
            callbacks.append(ImagesPerSecond())
        has_classifier = any(isinstance(cb, ClassifierMetrics) for cb in callbacks)
        if self.subcommand == "test" and not has_classifier:
            # test/recon_acc, cond_acc and fid_clf whenever a classifier is cached; configure
            # it by listing it in trainer.callbacks (e.g. with init_args.fid_samples)
            callbacks.append(ClassifierMetrics())
        if self.subcommand is not None:
            callbacks.append(_Announce(self))
        return callbacks

    def _loggers(self, given: Any) -> list[Logger] | bool:
        if given is False:
            return False
        others = [] if given in (None, True) else given if isinstance(given, list) else [given]
        # the run's own CSV logger replaces any other CSVLogger: both would write metrics.csv
        others = [lg for lg in others if not isinstance(lg, (CSVLogger, RunCSVLogger))]
        resume = self._resume_step if self.subcommand == "fit" else None
        return [RunCSVLogger(self.run_dir or ".", resume_step=resume), *others]

    @staticmethod
    def configure_optimizers(
        lightning_module: LightningModule, optimizer: Any, lr_scheduler: Any = None
    ) -> Any:
        """``--optimizer``/``--lr_scheduler`` given: the model's policy for them if it has one.

        A model with ``configure_optimizers_with(optimizer, lr_scheduler)`` (e.g. one that gives
        the command-line optimizer its main parameters only and adds its own for a second
        network) decides; otherwise LightningCLI's default.
        """
        custom = getattr(lightning_module, "configure_optimizers_with", None)
        if callable(custom):
            return custom(optimizer, lr_scheduler)
        return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)

    # ------------------------------------------------------------------ around the run
    def announce(self) -> None:
        """Say where the run goes (once the data is ready: a data error leaves nothing)."""
        assert self.run_dir is not None
        if self.subcommand == "fit" and self._ckpt_path:
            _say(f"resuming in {runs.display(self.run_dir)} from global step {self._resume_step}")
        else:
            _say(f"{self.subcommand}: results go to {runs.display(self.run_dir)}")

    def before_fit(self) -> None:
        """Expect the checkpoints of a resumed run in its folder."""
        if self._ckpt_path:
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")

    def after_fit(self) -> None:
        """Print where the checkpoints, config and metrics of the run are."""
        self._finish_wandb()
        if not self.trainer.is_global_zero or self.run_dir is None:
            return
        parts = []
        best = next((cb for cb in self.trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if best is not None and best.best_model_path:
            parts.append(f"best checkpoint {runs.display(best.best_model_path)}")
        parts += self._files(runs.CONFIG_FILE, runs.METRICS_FILE)
        _say(f"results in {runs.display(self.run_dir)} ({', '.join(parts) or 'no files written'})")

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
        _say(f"results in {runs.display(self.run_dir)} (predictions {runs.display(path)})")

    def _after_evaluation(self) -> None:
        self._finish_wandb()
        if self.trainer.is_global_zero and self.run_dir is not None:
            files = ", ".join(self._files(runs.METRICS_FILE, runs.CONFIG_FILE))
            _say(f"results in {runs.display(self.run_dir)} ({files or 'no files written'})")

    def _files(self, *names: str) -> list[str]:
        assert self.run_dir is not None
        found = [self.run_dir / n for n in names if (self.run_dir / n).is_file()]
        return [f"{p.stem} {runs.display(p)}" for p in found]

    def _finish_wandb(self) -> None:
        # WandbLogger leaves the run open; closing it flushes the (offline) run to disk now
        if any(isinstance(lg, WandbLogger) for lg in self.trainer.loggers):
            import wandb

            if wandb.run is not None:
                wandb.finish()


class _Announce(Callback):
    """Prints where the run goes at ``setup``, which Lightning calls after the data's setup."""

    def __init__(self, cli: VAEZooCLI) -> None:
        self.cli = cli
        self.done = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Announce once."""
        if not self.done:
            self.done = True
            self.cli.announce()


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
