"""Log the files of ``compare`` or ``latent`` (a table, PNGs) to one W&B run; never fatal."""

import sys
from pathlib import Path
from typing import Any


def log_to_wandb(
    out: Path,
    project: str,
    job_type: str,
    config: dict[str, Any],
    images: list[Path],
    rows: list[dict[str, Any]] | None = None,
    table_key: str = "table",
) -> bool:
    """Log ``rows`` as a table and ``images`` as ``figures/<stem>``; offline without credentials.

    Returns whether it worked: W&B trouble is a warning, as the files in ``out`` are complete.
    """
    try:
        import wandb

        from vae_zoo.loggers import prepare_wandb

        mode = prepare_wandb(out)
        run = wandb.init(
            project=project,
            dir=str(out),
            job_type=job_type,
            mode=mode,
            config=config,
            settings=wandb.Settings(init_timeout=60),
        )
        payload: dict[str, Any] = {f"figures/{p.stem}": wandb.Image(str(p)) for p in images}
        if rows:
            columns = list(rows[0])
            payload[table_key] = wandb.Table(
                columns=columns, data=[[_plain(r[c]) for c in columns] for r in rows]
            )
        run.log(payload)
        run.finish()
    except Exception as err:  # W&B trouble must not lose the files already written
        print(f"warning: logging to W&B failed ({type(err).__name__}: {err}); the files in "
              f"{out} are complete", file=sys.stderr)
        return False
    return True


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
