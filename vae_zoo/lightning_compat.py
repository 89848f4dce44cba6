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
3. **Lightning's NVML-based CUDA check.** Importing Lightning sets
   ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that ``torch.cuda.is_available()`` asks NVML instead
   of initialising CUDA in a process that may fork. torch's optimizers call it in every
   ``step()`` (their graph-capture health check), and where NVML cannot be loaded (no NVIDIA
   driver: a CPU machine with a CUDA build of torch) each call tries to load
   ``libnvidia-ml.so.1`` again, fails and falls back to CUDA's own device count: 0.05-0.5 ms
   an optimizer step, 4% of the MLP VAE's step on 2 CPU cores. There the variable changes
   nothing but that cost, so the CLI removes it (:func:`drop_nvml_check_without_nvml`), and so
   does ``BaseVAE.setup`` for a model trained by a ``Trainer`` of the user's own.
"""

import ctypes
import os
from typing import Any

import lightning as L
import torch

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


#: the variable Lightning sets on import (item 3)
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
#: the library torch's NVML check loads (``torch.cuda._raw_device_count_nvml``)
NVML_LIBRARY = "libnvidia-ml.so.1"


def drop_nvml_check_without_nvml() -> bool:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` where NVML cannot be loaded (item 3); True if so.

    torch then answers ``torch.cuda.is_available()`` from CUDA's own device count, as it did
    after each failed load, so the answer does not change; only the failed load a call goes.
    """
    if os.environ.get(NVML_CHECK) != "1" or not torch.backends.cuda.is_built() or torch.version.hip:
        return False  # nothing set, no CUDA, or ROCm (whose check goes through amdsmi instead)
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        del os.environ[NVML_CHECK]
        return True
    return False
