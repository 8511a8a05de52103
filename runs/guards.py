"""Non-finite values stop a run: a diverged run must never be reported as numbers.

:class:`FiniteGuard` is an Avalanche plugin. It watches the training loss of every iteration (the
FO loss, which MoZO also computes when every unit is ZO), MoZO's ZO loss where the strategy has a
MoZO plugin, and the evaluation logits. The checks stay on the device — a running "first bad
iteration" tensor — and are read back (one host sync) every ``check_every`` iterations and at the
end of every experience, so a CUDA run does not synchronise per step; a diverged run stops at most
``check_every`` iterations late, naming the experience, the first non-finite iteration and the
learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin


class DivergedError(RuntimeError):
    """A loss or the logits became NaN or infinite."""


class FiniteGuard(SupervisedPlugin):
    """Raise :class:`DivergedError` when the training loss, ZO loss or eval logits are non-finite."""

    def __init__(self, run_id: str = "run", check_every: int = 50) -> None:
        super().__init__()
        self.run_id = run_id
        self.check_every = check_every
        self._first_bad: torch.Tensor | None = None  # iteration index of the first non-finite loss, or -1
        self._lr = 0.0
        self._bad_eval: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing crosses an experience boundary (a bad run never checkpoints)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    # ---- training ----------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._first_bad = None

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        loss = strategy.loss
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss))
        values = [loss.detach().float().reshape(-1)]
        mozo = getattr(strategy, "mozo", None)
        last = getattr(mozo, "last", None)
        if last is not None and getattr(last, "loss", None) is not None:
            values.append(torch.as_tensor(last.loss, dtype=torch.float32, device=loss.device).reshape(-1))
        bad = ~torch.isfinite(torch.cat(values)).all()
        iteration = strategy.clock.train_exp_iterations
        here = torch.where(bad, torch.tensor(iteration, device=bad.device), torch.tensor(-1, device=bad.device))
        self._first_bad = here if self._first_bad is None else torch.where(self._first_bad >= 0, self._first_bad, here)
        group = strategy.optimizer.param_groups[0] if strategy.optimizer.param_groups else {}
        self._lr = float(group.get("lr", 0.0))
        if (iteration + 1) % self.check_every == 0:
            self._raise_if_bad(strategy)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._raise_if_bad(strategy)

    def _raise_if_bad(self, strategy: Any) -> None:
        if self._first_bad is None:
            return
        first = int(self._first_bad)
        if first >= 0:
            exp = strategy.experience.current_experience
            raise DivergedError(f"{self.run_id}: non-finite training loss at experience {exp}, iteration "
                                f"{first} (lr {self._lr:.3g}); the run diverged")

    # ---- evaluation --------------------------------------------------------------------------
    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._bad_eval = None

    def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        output = strategy.mb_output
        if isinstance(output, torch.Tensor):
            bad = ~torch.isfinite(output.detach()).all()
            self._bad_eval = bad if self._bad_eval is None else self._bad_eval | bad

    def after_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._bad_eval is not None and bool(self._bad_eval):
            exp = strategy.experience.current_experience
            raise DivergedError(f"{self.run_id}: non-finite evaluation logits on test experience {exp}; "
                                f"the model diverged")
