"""What every stream hands to the rest of the toolkit: an Avalanche benchmark plus the text side.

A CLIP classifier scores *global* class ids (every class of the benchmark). The benchmark says
which ids an experience uses, how each class is prompted — ``train_prompts`` for the training loss,
``class_prompts`` for evaluation (and ConDU's prototypes) — and which label space evaluation uses:

- ``protocol="seen"`` (class-incremental): evaluation scores all classes seen so far;
- ``protocol="task"`` (MTIL, task-incremental): each experience is scored over its own classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["seen", "task"]


@dataclass
class CLIPBenchmark:
    """An Avalanche benchmark with class names, prompts and the label-space protocol."""

    name: str  # stream name, e.g. "split_cifar100"
    scenario: Any  # Avalanche benchmark: .train_stream / .test_stream, global class ids as targets
    class_names: list[str]  # global class id -> name (cleaned for prompts)
    class_prompts: list[list[str]]  # global class id -> evaluation prompts (templates filled in)
    experience_classes: list[list[int]]  # experience index -> its global class ids (sorted)
    protocol: Protocol = "seen"
    experience_names: list[str] = field(default_factory=list)  # e.g. MTIL dataset names
    train_prompts: list[list[str]] | None = None  # global class id -> training prompts (None: class_prompts)
    omitted_experiences: list[str] = field(default_factory=list)  # left out by a selection (MTIL datasets)

    def __post_init__(self) -> None:
        if self.train_prompts is None:
            self.train_prompts = self.class_prompts
        for what, prompts in (("evaluation", self.class_prompts), ("training", self.train_prompts)):
            if len(self.class_names) != len(prompts):
                raise ValueError(f"{self.name}: {len(self.class_names)} class names but {len(prompts)} "
                                 f"{what} prompt lists")
        if not self.experience_names:
            self.experience_names = [f"exp{i}" for i in range(len(self.experience_classes))]

    @property
    def n_experiences(self) -> int:
        return len(self.experience_classes)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def fill_templates(templates: list[str], class_names: list[str]) -> list[list[str]]:
    """Prompts per class: every template with ``{}`` replaced by the class name."""
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder for the class name")
    return [[template.format(name) for template in templates] for name in class_names]


@dataclass
class StreamContext:
    """What a stream builder needs from the run besides its own config."""

    data_root: str  # one folder holding every dataset (each in its standard layout)
    train_transform: Any  # PIL image -> tensor, the CLIP model's training preprocessing
    eval_transform: Any  # PIL image -> tensor, the CLIP model's evaluation preprocessing
    image_size: int  # the CLIP model's input resolution (synthetic streams draw tensors this size)
    download: bool = True  # allow downloads where the source permits them


class DatasetMissingError(RuntimeError):
    """Raised when a dataset is absent and cannot be downloaded; the message says what to put where."""
