"""ConDU strategy: Avalanche's ``SupervisedTemplate`` plus :class:`ConDUPlugin`; evaluation
forwards go through the plugin's task-aware / aggregated prediction."""

from __future__ import annotations

from typing import Any

from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..registry import MethodSpec, register
from ..training import make_optimizer
from .plugin import ConDUConfig, ConDUPlugin


class ConDU(SupervisedTemplate):
    """Continual decoupling-unifying with prototype-aggregated prediction (arXiv 2503.10705)."""

    def __init__(self, *, model: CLIPClassifier, condu: ConDUPlugin, plugins: list | None = None,
                 **kwargs: Any) -> None:
        self.condu = condu
        super().__init__(model=model, plugins=[*(plugins or []), condu], **kwargs)

    def forward(self) -> Any:
        if self.is_training:
            return super().forward()
        return self.condu.predict(self.model, self.mb_x, self.experience.current_experience)


def build_condu(model: CLIPClassifier, cfg: ConDUConfig, *, train: Any, plugins: list, evaluator: Any,
                device: Any, criterion: Any, benchmark: Any, task_aware: bool = False, **_: Any) -> ConDU:
    plugin = ConDUPlugin(model, cfg, task_aware=task_aware or benchmark.protocol == "task")
    return ConDU(
        model=model, condu=plugin, optimizer=make_optimizer(model, train), criterion=criterion,
        train_mb_size=train.batch_size, train_epochs=train.epochs, eval_mb_size=train.eval_batch_size,
        device=device, plugins=plugins, evaluator=evaluator, eval_every=-1,
    )


# ConDU's code recipe (condu.md "Per task"): label smoothing 0.2, AdamW wd 0, cosine with 100 warm-up
# steps, 1000 iterations, batch 64, lr 1e-5 (full fine-tuning; MTIL uses 5e-5 for Aircraft and MNIST).
RECIPE = {"label_smoothing": 0.2, "weight_decay": 0.0, "warmup": 100, "iterations": 1000, "batch_size": 64,
          "lr": 1e-5, "augment": True}
register("condu", MethodSpec(ConDUConfig, build_condu, recipe=RECIPE))
