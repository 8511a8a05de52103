"""An Avalanche logger for Weights & Biases that works with wandb 0.31.

Avalanche 0.6's own ``avalanche.logging.WandBLogger`` calls ``wandb.util.generate_id`` and
``wandb.viz``, both removed from current wandb, so it fails at construction. This one subclasses
:class:`avalanche.logging.BaseLogger` and can be passed to ``EvaluationPlugin(loggers=[...])``.

Steps. Avalanche's ``x_plot`` is not monotonic across phases: training metrics use the training
iteration counter, evaluation metrics of several streams share one value, and some metrics use 0.
W&B drops any ``log(..., step=s)`` whose ``s`` is below its current step, so ``x_plot`` is never
passed as ``step``. Instead every row carries it as the field ``trainer/step``, declared once with
``define_metric("*", step_metric="trainer/step")``: charts use it as their x axis, equal or decreasing
values are kept, and W&B's own ``_step`` simply counts rows. Metrics that Avalanche publishes in one
callback with the same ``x_plot`` go into one row.

Values. Scalars (Python, NumPy, one-element tensors) are logged as numbers; 2-D tensors (e.g.
Avalanche's accuracy matrix) as a ``wandb.Table``; other tensors as a ``wandb.Histogram``; PIL
images, :class:`TensorImage` and matplotlib figures as ``wandb.Image``. For ``AlternativeValues`` the
first representation among those is used. Anything else (strings, checkpoint bytes) is skipped with a
debug message.

Files. With ``mode="offline"`` the run lands in ``<dir>/wandb/offline-run-<date>_<time>-<id>/``
(``run-<id>.wandb`` holds history, summary and config; ``files/`` holds media and tables); upload it
later with ``wandb sync <that folder>``. ``mode="disabled"`` writes nothing.
"""

from __future__ import annotations

import logging
import netrc
import numbers
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch
import wandb

import strategies._torchvision_compat  # noqa: F401  (before avalanche: makes torchvision importable)

# isort: split
from avalanche.evaluation.metric_results import AlternativeValues, TensorImage
from avalanche.logging import BaseLogger
from matplotlib.figure import Figure
from PIL.Image import Image

if TYPE_CHECKING:
    from avalanche.evaluation.metric_results import MetricValue
    from avalanche.training.templates import SupervisedTemplate

log = logging.getLogger(__name__)


def login_problem() -> str | None:
    """Why ``run --online`` cannot log to W&B here (no API key: ``WANDB_API_KEY`` or a netrc entry for
    the W&B host), checked before any work; None when a key is configured."""
    if os.environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return (f"--online needs a W&B login and none is configured (no WANDB_API_KEY, no netrc entry for {host}): "
            f"run `wandb login`, or drop --online (nothing ran)")


REACH_TIMEOUT_S = 5.0


def reach_problem(timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why ``run --online`` cannot reach the W&B host (``WANDB_BASE_URL``, default api.wandb.ai) within
    ``timeout`` seconds, checked once before any work (proxies from the environment are used): without
    it every run would wait ~90 s for ``wandb.init`` to give up. None when any HTTP answer comes back."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as error:  # the host answered (401, 404, ...): reachable, unless a
        if error.code not in (502, 504):  # proxy's gateway error says it could not reach the host
            return None
        reason: Any = error
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
    return (f"--online: the W&B host {url} cannot be reached within {timeout:g} s ({reason}): check the "
            f"network or proxy, or drop --online (nothing ran)")


STEP_METRIC = "trainer/step"  # x axis of every chart: Avalanche's x_plot
EXPERIENCE_METRIC = "trainer/experience"  # count of finished training experiences
MODES = ("offline", "online", "disabled")
# Representations taken from AlternativeValues, best first.
_SUPPORTED = (Image, TensorImage, Figure, torch.Tensor, numbers.Number)


class WandBLogger(BaseLogger):
    """Log Avalanche metric values to a W&B run (see the module docstring for steps and values)."""

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        *,
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        mode: str | None = None,
        dir: str | Path | None = None,
        id: str | None = None,
        run_id: str | None = None,
        resume: bool | str | None = None,
        **init_kwargs: Any,
    ) -> None:
        """Start the W&B run; every argument is optional and means what it means for ``wandb.init``.

        ``None`` leaves ``wandb.init``'s default (and its environment variables: ``WANDB_PROJECT``,
        ``WANDB_ENTITY``, ``WANDB_MODE``, ``WANDB_DIR``, ...). ``run_id`` is another name for ``id``
        (the runner's keyword). ``resume=True`` continues the run ``id`` if it exists and creates it
        otherwise (``wandb.init(resume="allow")``), so an interrupted run goes on as the same W&B run;
        a string (``"allow"``, ``"must"``, ``"never"``, ``"auto"``) is passed on unchanged. Further
        keywords (``notes``, ``job_type``, ``settings``, ...) go to ``wandb.init`` as they are.
        """
        super().__init__()
        if mode is not None and mode not in MODES:
            raise ValueError(f"WandBLogger mode must be one of {MODES}, got {mode!r}")
        if id is not None and run_id is not None and id != run_id:
            raise ValueError(f"WandBLogger: id={id!r} and run_id={run_id!r} differ; give one of them")
        run_id = id if id is not None else run_id
        if resume is True and not run_id:
            raise ValueError("WandBLogger resume=True needs a run_id (the id of the run to continue)")
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, entity=entity, name=name, group=group,
            tags=None if tags is None else list(tags), config=None if config is None else dict(config),
            mode=mode, dir=None if dir is None else str(dir), id=run_id,  # type: ignore[arg-type]
            resume="allow" if resume is True else (resume or None), **init_kwargs,  # type: ignore[arg-type]
        )
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric(EXPERIENCE_METRIC, step_metric=STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self.last_x_plot = 0
        self.experiences_done = 0
        self._finished = False
        log.info("W&B run %s (%s mode) in %s", self.run.id, self.run.settings.mode, self.run_dir)

    # ------------------------------------------------------------------ properties
    @property
    def run_id(self) -> str:
        """The W&B run id (pass it back as ``run_id`` with ``resume=True`` to continue the run)."""
        return self.run.id

    @property
    def run_dir(self) -> Path:
        """The run's local folder (``offline-run-*`` or ``run-*``); its ``files/`` holds media."""
        return Path(self.run.dir).parent

    # ------------------------------------------------------------------ Avalanche interface
    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        """Log one metric value at Avalanche's ``x_plot`` (unsupported values are skipped)."""
        entry = self._convert(name, value)
        if entry is not None:
            self._log_row({name: entry}, x_plot)

    def log_metrics(self, metric_values: list[MetricValue]) -> None:
        """Log a callback's metric values, one W&B row per distinct ``x_plot`` (in order of arrival)."""
        rows: dict[int, dict[str, Any]] = {}
        for mval in metric_values:
            items = mval.value.items() if isinstance(mval.value, dict) else [(None, mval.value)]
            for key, value in items:
                name = mval.name if key is None else f"{mval.name}/{key}"
                entry = self._convert(name, value)
                if entry is not None:
                    rows.setdefault(int(mval.x_plot), {})[name] = entry
        for x_plot, row in rows.items():
            self._log_row(row, x_plot)

    def after_training_exp(
        self, strategy: SupervisedTemplate, metric_values: list[MetricValue], **kwargs: Any
    ) -> None:
        """Count finished training experiences (Avalanche calls logger callbacks by name)."""
        self.experiences_done += 1
        self._log_row({EXPERIENCE_METRIC: self.experiences_done}, self.last_x_plot)

    # ------------------------------------------------------------------ helpers for runs/
    def log_summary(self, metrics: dict[str, Any]) -> None:
        """Set final values in the run summary (the numbers shown in the W&B runs table)."""
        self.run.summary.update(dict(metrics))

    def log_accuracy_matrix(
        self,
        matrix: Sequence[Sequence[float | None]],
        row_labels: Sequence[str],
        col_labels: Sequence[str],
        *,
        key: str = "accuracy_matrix",
        x_plot: int | None = None,
    ) -> None:
        """Log ``matrix[i][j]`` (accuracy on experience j after training on i) as a ``wandb.Table``."""
        if len(matrix) != len(row_labels):
            raise ValueError(f"accuracy matrix has {len(matrix)} rows but {len(row_labels)} row labels")
        for i, row in enumerate(matrix):
            if len(row) != len(col_labels):
                raise ValueError(f"accuracy matrix row {i} has {len(row)} values, expected {len(col_labels)}")
        columns: list[str | int] = ["trained_on", *[str(c) for c in col_labels]]
        data = [
            [str(label), *[None if v is None else float(v) for v in row]]
            for label, row in zip(row_labels, matrix, strict=True)
        ]
        table = wandb.Table(columns=columns, data=data)
        self._log_row({key: table}, self.last_x_plot if x_plot is None else x_plot)

    def log_artifact_files(self, paths: Iterable[str | Path], *, name: str, type: str = "results") -> None:
        """Store local files (configs, ``metrics.json``, plots) in the run as one W&B artifact."""
        artifact = wandb.Artifact(name, type=type)
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"artifact file not found: {path}")
            artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (idempotent); a non-zero ``exit_code`` marks it failed."""
        if not self._finished:
            self._finished = True
            self.run.finish(exit_code=exit_code)

    # ------------------------------------------------------------------ internals
    def _log_row(self, row: dict[str, Any], x_plot: int) -> None:
        # x_plot is a field, never `step=`: W&B would drop rows whose step goes backwards.
        self.last_x_plot = int(x_plot)
        self.run.log({**row, STEP_METRIC: self.last_x_plot})

    def _convert(self, name: str, value: Any) -> Any | None:
        """The W&B form of one Avalanche value, or None when it cannot be logged."""
        if isinstance(value, AlternativeValues):
            value = value.best_supported_value(*_SUPPORTED)
        if isinstance(value, numbers.Number):  # includes bool and NumPy scalars
            return value.item() if isinstance(value, np.generic) else value
        if isinstance(value, Image | Figure):
            return wandb.Image(value)
        if isinstance(value, TensorImage):
            return wandb.Image(value.image.detach().cpu())  # (C, H, W)
        if isinstance(value, torch.Tensor):
            return _convert_tensor(value.detach().cpu())
        log.debug("W&B logger skips metric %s of type %s", name, type(value).__name__)
        return None


def _convert_tensor(value: torch.Tensor) -> Any | None:
    """Scalar for one element, table for a matrix, histogram otherwise (None when empty)."""
    if value.numel() == 0:
        return None
    if value.numel() == 1:
        return value.item()
    if value.ndim == 2:  # (rows, cols), e.g. Avalanche's accuracy matrix
        columns: list[str | int] = ["row", *[str(j) for j in range(value.shape[1])]]
        data = [[i, *row] for i, row in enumerate(value.float().tolist())]
        return wandb.Table(columns=columns, data=data)
    return wandb.Histogram(value.float().flatten().numpy())  # type: ignore[arg-type]  # arrays are accepted


__all__ = ["WandBLogger", "STEP_METRIC", "EXPERIENCE_METRIC"]
