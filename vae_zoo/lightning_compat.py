"""The one place that reads Lightning state with no public accessor; each use says why.

``tests/test_lightning_compat.py`` checks every function here against the Lightning that is
installed, so an upgrade that moves the state fails there, loudly, not as silent gaps in logs.
"""

import lightning as L


def lightning_writes_step_logs(trainer: L.Trainer) -> bool:
    """Whether Lightning writes step metrics to the loggers after the current training batch.

    Lightning decides this in a private property, ``_LoggerConnector.should_update_logs``
    (``log_every_n_steps`` counted in batches that stepped an optimizer, plus the last step
    before a stop); its own ``LearningRateMonitor`` and ``ThroughputMonitor`` read it too.
    """
    return bool(trainer._logger_connector.should_update_logs)
