"""A quiet one-process CPU ``Trainer`` for tests that fit or evaluate a model directly."""

import lightning as L


def quiet_trainer(**kwargs) -> L.Trainer:
    """CPU, one device, no logger, checkpoints, progress bar or summary; ``kwargs`` override."""
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**settings, **kwargs})
