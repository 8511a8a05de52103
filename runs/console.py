"""A quiet console: one progress bar per experience, one line per finished experience, the table.

Avalanche's full metric dump goes to the run folder's ``log.txt`` (its ``TextLogger``) and to the
console only with ``-v``. :class:`ProgressPlugin` draws a tqdm bar per training experience
(iterations, loss, ETA) on a terminal; when stderr is not a terminal (a batch job's log) it writes a
plain line at every 10 % of an experience instead, but at most one per ``min_interval`` seconds
(10 s), so short experiences (the smoke suite's) print only their one summary line. The loss shown
is read from the device only at those marks (no host sync per iteration). Python warnings are
routed to logging: they land in ``log.txt`` and stay off the console (:class:`QuietWarnings`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from avalanche.core import SupervisedPlugin
from tqdm import tqdm

from strategies.training import RecipePlugin

log = logging.getLogger(__name__)


class ProgressPlugin(SupervisedPlugin):
    """Progress of each training experience: a tqdm bar on a TTY, a line every 10 % otherwise."""

    def __init__(self, run_id: str, n_experiences: int, *, tty: bool | None = None,
                 min_interval: float = 10.0) -> None:
        super().__init__()
        self.min_interval = min_interval
        self.last_line = 0.0
        self.run_id = run_id
        self.n_experiences = n_experiences
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: Any = None
        self.total = 0
        self.done = 0
        self.marks: set[int] = set()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def _total(self, strategy: Any) -> int:
        """Iterations of this experience: the recipe's count (iteration caps included) when present."""
        for plugin in strategy.plugins:
            if isinstance(plugin, RecipePlugin) and plugin.total:
                return int(plugin.total)
        return len(strategy.dataloader) * max(1, int(strategy.train_epochs))

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.total = self._total(strategy)
        self.done = 0
        self.marks = {math.ceil(self.total * k / 10) for k in range(1, 11)}
        label = f"{self.run_id} exp {strategy.experience.current_experience + 1}/{self.n_experiences}"
        if self.tty:
            self.bar = tqdm(total=self.total, desc=label, unit="it", leave=False, dynamic_ncols=True)
        self.label = label
        self.last_line = time.monotonic()

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.done += 1
        at_mark = self.done in self.marks
        if self.bar is not None:
            self.bar.update(1)
            if at_mark:
                self.bar.set_postfix(loss=f"{float(strategy.loss):.4f}")
        elif at_mark and time.monotonic() - self.last_line >= self.min_interval:
            self.last_line = time.monotonic()
            log.info("%s  %3d%%  iteration %d/%d  loss %.4f", self.label, round(100 * self.done / self.total),
                     self.done, self.total, float(strategy.loss))

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class QuietWarnings(logging.Filter):
    """Keeps Python warnings (``py.warnings``) off the console; the run's ``log.txt`` still gets them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "py.warnings"
