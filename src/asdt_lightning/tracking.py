"""Experiment tracking for the entry points: loggers (CSV, TensorBoard, W&B; several at once) and the callbacks
that feed them (learning rates, per-class IoU tables, image panels, rich progress bar and model summary).

W&B never needs an account: ``mode: auto`` runs offline (``wandb sync <run dir>`` uploads later) unless the user
is logged in (``WANDB_API_KEY`` or a ``wandb login`` entry in ``~/.netrc``) or ``WANDB_MODE`` says otherwise.
Group and run name default to the Hydra sweep's name and the run's overrides.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import netrc
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, RichModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .errors import ASDTUserError
from .lit.callbacks import PerClassIoULogger
from .lit.image_logging import ImagePanelLogger

WANDB_MODES = ("auto", "online", "offline", "disabled")
# what Lightning and torch print at every start that says nothing about this run
_NOISE = (
    "try installing [litlogger]",
    "Trainer already configured with model summary callbacks",
)
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric")
_NOISY_WARNINGS = (
    r"Precision .* is not supported by the model summary",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*'pin_memory' argument is set as true but no accelerator is found",
)
PROGRESS_BARS = ("rich", "tqdm")
_WANDB_TARGETS = ("asdt_lightning.tracking.wandb_logger", "lightning.pytorch.loggers.WandbLogger")
_TENSORBOARD_TARGETS = ("lightning.pytorch.loggers.TensorBoardLogger",)


def wandb_logged_in(env: Mapping[str, str] | None = None) -> bool:
    """Whether W&B has credentials here: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in the netrc file."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    path = Path(env.get("NETRC") or Path(env.get("HOME", Path.home())) / ".netrc").expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str, env: Mapping[str, str] | None = None) -> str:
    """``auto`` -> ``WANDB_MODE`` if set, else ``online`` with credentials, else ``offline``; others as given."""
    if mode not in WANDB_MODES:
        raise ASDTUserError(f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ if env is None else env
    forced = env.get("WANDB_MODE", "").strip().lower()
    if forced in ("online", "offline", "disabled"):
        return forced
    if forced == "dryrun":
        return "offline"
    return "online" if wandb_logged_in(env) else "offline"


def hydra_run_info() -> dict[str, Any]:
    """What Hydra knows of this run (empty outside a Hydra job): ``sweep`` (the chosen sweep config),
    ``multirun_dir`` (the multirun's folder name, in a multirun) and ``overrides`` (the job's override string)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return {
        "sweep": hc.runtime.choices.get("sweep"),
        "multirun_dir": Path(hc.sweep.dir).name if multirun else None,
        "overrides": hc.job.override_dirname or None,
    }


def default_group(info: Mapping[str, Any]) -> str | None:
    """Runs of one sweep share a group: the sweep config's name, else the multirun's folder name."""
    return info.get("sweep") or (f"multirun-{info['multirun_dir']}" if info.get("multirun_dir") else None)


def wandb_logger(
    project: str = "asdt-lightning",
    group: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str | Path = ".",
    mode: str = "auto",
    log_model: bool | str = False,
    entity: str | None = None,
    **kwargs: Any,
) -> Logger:
    """A Lightning ``WandbLogger`` that never prompts: offline without credentials (see ``resolve_wandb_mode``).

    ``group`` defaults to the sweep's name and ``name`` to the run's overrides (or its folder's name);
    ``log_model=True`` logs the best and last checkpoints as artifacts at the end of training, ``"all"`` every one
    (offline runs keep them for ``wandb sync``).
    """
    if importlib.util.find_spec("wandb") is None:
        raise ASDTUserError('logger=wandb needs the wandb package: pip install -e ".[wandb]"')
    from lightning.pytorch.loggers import WandbLogger

    info = hydra_run_info()
    resolved = resolve_wandb_mode(mode)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        project=project,
        group=group or default_group(info),
        name=name or info.get("overrides") or save_dir.name,
        tags=list(tags),
        save_dir=str(save_dir),
        log_model=log_model,
        entity=entity,
        mode=resolved,
        **kwargs,
    )
    init = getattr(logger, "_wandb_init", None)  # Lightning always passes anonymous=, which wandb now warns of
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def check_tracking(loggers: Mapping[str, Any] | None, tracking: Mapping[str, Any]) -> None:
    """Cheap checks, before data or model are built: the chosen loggers' packages exist, options are valid."""
    for key, conf in (loggers or {}).items():
        if not isinstance(conf, Mapping) or "_target_" not in conf:
            raise ASDTUserError(f"logger.{key} must be a config with a _target_ (see conf/logger/)")
        target = conf["_target_"]
        if target in _WANDB_TARGETS:
            if importlib.util.find_spec("wandb") is None:
                raise ASDTUserError('logger=wandb needs the wandb package: pip install -e ".[wandb]"')
            resolve_wandb_mode(conf.get("mode", "auto"))
        if target in _TENSORBOARD_TARGETS and not any(
            importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX")
        ):
            raise ASDTUserError('logger=tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"')
    if tracking.get("progress_bar") not in PROGRESS_BARS:
        raise ASDTUserError(f"tracking.progress_bar must be one of {', '.join(PROGRESS_BARS)}")
    panels = tracking.get("panels", 0)
    if isinstance(panels, bool) or not isinstance(panels, int) or panels < 0:
        raise ASDTUserError(f"tracking.panels must be a number of images >= 0, got {panels!r}")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


def hydra_logging() -> bool:
    """Whether this is a Hydra job, whose logging Hydra configured (console and ``<run>/<job>.log``)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and bool(logging.getLogger().handlers)


def quiet_start() -> None:
    """Drop the start-up lines that say nothing about the run (adverts, notes on our own callbacks, deprecations
    inside Lightning), and, in a Hydra job, send Lightning's log and the remaining warnings to Hydra's console
    and ``<run>/<job>.log`` handlers."""
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    own = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    root = logging.getLogger()
    if hydra_logging():  # let Hydra's console and file handlers take Lightning's records
        for logger in own:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
        logging.captureWarnings(True)
    for handler in [*root.handlers, *(h for logger in own for h in logger.handlers)]:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())


def announce(text: str, logger: str = "asdt_lightning") -> None:
    """Show ``text`` to the user: logged in a Hydra job (console and run log), else printed."""
    if hydra_logging():
        logging.getLogger(logger).info(text)
    else:
        print(text)


class ModelSummary(RichModelSummary):
    """The rich model summary with FLOPs per training image but without the input/output size columns (the
    network returns a tuple of four maps, which those columns cannot show)."""

    def summarize(self, summary_data: list[tuple[str, list[str]]], *args: Any, **kwargs: Any) -> None:
        kept = [(name, column) for name, column in summary_data if name not in ("In sizes", "Out sizes")]
        super().summarize(kept, *args, **kwargs)


def epochs_description(trainer: Any, current_epoch: int) -> str | None:
    """``Epoch 3/15`` for a run bounded by ``max_steps`` (Lightning's bars read ``Epoch 3/-2`` or ``Epoch 3``
    then), or None when the number of epochs is not known from the steps."""
    batches = trainer.num_training_batches
    if trainer.max_steps > 0 and isinstance(batches, int) and batches > 0:
        epochs = math.ceil(trainer.max_steps / batches)
        if trainer.max_epochs not in (None, -1):
            epochs = min(epochs, trainer.max_epochs)
        return f"Epoch {current_epoch}/{epochs - 1}"
    return None


class StepsProgressBar(RichProgressBar):
    """The rich progress bar, reading ``Epoch 3/15`` when training is bounded by ``max_steps``."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = epochs_description(self.trainer, current_epoch)
        if description is None:
            return super()._get_train_description(current_epoch)
        return f"{description:{len(self.validation_description)}}"


class StepsTQDMProgressBar(TQDMProgressBar):
    """The tqdm progress bar, reading ``Epoch 3/15`` when training is bounded by ``max_steps``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        description = epochs_description(trainer, trainer.current_epoch)
        if description is not None:
            self.train_progress_bar.set_description(description)


def build_loggers(loggers: Mapping[str, Any] | None, config: Mapping[str, Any] | None = None) -> list[Logger]:
    """Instantiate every configured logger and log the resolved run ``config`` (a plain dict) to each."""
    built = [instantiate(conf) for conf in (loggers or {}).values()]
    if config is not None:
        for logger in built:
            logger.log_hyperparams({"config": dict(config)})
    return built


def build_callbacks(
    tracking: Mapping[str, Any], trainer: Mapping[str, Any], out_dir: str | Path, has_loggers: bool
) -> list[L.Callback]:
    """Learning rates (with loggers), per-class IoU tables, image panels, rich progress bar and model summary."""
    callbacks: list[L.Callback] = [PerClassIoULogger(out_dir)]
    if has_loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tracking.get("panels", 0) > 0:
        callbacks.append(ImagePanelLogger(tracking["panels"], out_dir, tracking.get("panel_tile", 192)))
    if trainer.get("enable_progress_bar", True):
        callbacks.append(StepsProgressBar() if tracking.get("progress_bar") == "rich" else StepsTQDMProgressBar())
    if trainer.get("enable_model_summary", True):
        callbacks.append(ModelSummary(max_depth=tracking.get("summary_depth", 2)))
    return callbacks


@rank_zero_only
def finish_loggers(loggers: Sequence[Logger], summary: Mapping[str, Any] | None = None) -> None:
    """End of a run: put the final per-branch mIoU into each W&B run's summary and close it.

    A W&B run left open would swallow the next run of a multirun in the same process.
    """
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            run = logger.experiment
            if summary is not None:
                run.summary.update({f"final/miou_{k}": v for k, v in summary.get("miou", {}).items()})
            run.finish()
