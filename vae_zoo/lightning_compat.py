"""The one place where vae_zoo relies on how Lightning works inside, for want of a public hook.

Every item says which Lightning behaviour it relies on; ``tests/test_lightning_compat.py``
checks each against the installed Lightning and fails, naming the item, when it changes.

1. **LightningCLI's checkpoint hyper-parameters.** When the parsed config holds a
   ``ckpt_path`` that is a file, ``LightningCLI.__init__`` merges the hyper-parameters stored in
   that checkpoint over the whole model config (a private step, ``_parse_ckpt_path``, run after
   the public ``parse_arguments`` and before ``before_instantiate_classes``). That would switch
   the variant silently and overwrite the evaluation settings given on the command line
   (``test_k``...). vae_zoo does the merge itself in ``parse_arguments`` and keeps the path out
   of the config while Lightning's step runs: :func:`stash_ckpt_path` there,
   :func:`restore_ckpt_path` in ``before_instantiate_classes``.
2. **When Lightning writes step metrics.** Lightning decides it in a private property,
   ``_LoggerConnector.should_update_logs`` (``log_every_n_steps`` counted in batches that
   stepped an optimizer, plus the last step before a stop); its own ``LearningRateMonitor`` and
   ``ThroughputMonitor`` read it too. The model logs its train terms only on those steps
   (:func:`lightning_writes_step_logs`), because each ``self.log`` costs about 0.4 ms on a CPU.
"""

from typing import Any

import lightning as L

#: the Lightning release line these items were checked against
CHECKED_WITH = "2.6"


def stash_ckpt_path(section: Any) -> str | None:
    """Take ``ckpt_path`` out of a subcommand's parsed config (item 1); returns it."""
    path = section.get("ckpt_path")
    section.ckpt_path = None
    return path


def restore_ckpt_path(section: Any, path: str | None) -> None:
    """Put back the ``ckpt_path`` that :func:`stash_ckpt_path` took (item 1)."""
    section.ckpt_path = path


def lightning_writes_step_logs(trainer: L.Trainer) -> bool:
    """Whether Lightning writes step metrics to the loggers after this training batch (item 2)."""
    return bool(trainer._logger_connector.should_update_logs)
