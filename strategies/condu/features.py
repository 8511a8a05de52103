"""The features ConDU's prototypes are built from (ConDU §3, semantic prototypes; docs/methods/condu.md).

P_k = normalize((mean normalize(f_img) + t_k) / 2) (:func:`~.prototypes.class_prototypes`) from the
pretrained model (θ⁰ loaded by the caller): the image half over the experience's training data
with its training transform (the official code's train loader) or, ``images_from="eval"``, the
evaluation transform; the text half t_k the mean of the normalised features of class k's
*evaluation* prompts, not re-normalised. Features come from the classifier's own methods, at its
compute precision, as float32 on the CPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from .prototypes import class_prototypes

PROMPT_CHUNK = 256  # prompts per text-tower pass


def experience_prototypes(model: Any, experience: Any, *, device: Any, batch_size: int, images_from: str = "train",
                          max_images: int | None = None, normalize_text: bool = False) -> Tensor:
    """Prototypes (C, D) of the experience's classes, in sorted class order, with the loaded model."""
    classes = sorted(experience.classes_in_this_experience)
    was_training = model.training
    model.eval()
    feats, labels = image_features(model, experience.dataset, device=device, batch_size=batch_size,
                                   images_from=images_from, max_images=max_images)
    text = template_means(model, classes)
    model.train(was_training)
    return class_prototypes(feats, labels, text, classes, normalize_text=normalize_text)


def image_features(model: Any, dataset: Any, *, device: Any, batch_size: int, images_from: str = "train",
                   max_images: int | None = None) -> tuple[Tensor, Tensor]:
    """Image features (N, D) and labels (N,) of an Avalanche dataset, in order, with its training
    (``images_from="train"``) or evaluation transform; it stops after the batch that reaches ``max_images`` images."""
    data = dataset.train() if images_from == "train" else dataset.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    feats, labels, seen = [], [], 0
    with torch.no_grad():
        for batch in loader:
            feats.append(model.encode_image(batch[0].to(device)).cpu())
            labels.append(batch[1])
            seen += len(batch[1])
            if max_images is not None and seen >= max_images:
                break
    return torch.cat(feats), torch.cat(labels)


def template_means(model: Any, classes: list[int]) -> Tensor:
    """t_k = mean over the evaluation prompts of class k of normalize(f_txt(prompt)), not re-normalised
    (the official code's src/models/finetune.py); (C, D) on the CPU."""
    use = getattr(model, "using_prompts", None)  # the evaluation prompt set, where the model has two
    with use("eval") if use is not None else nullcontext(), torch.no_grad():
        prompts = [p for c in classes for p in model.class_prompts[c]]
        owner = torch.repeat_interleave(torch.arange(len(classes)),
                                        torch.tensor([len(model.class_prompts[c]) for c in classes]))  # (P,)
        # the classifier's text forward: its compute precision, float32 features
        feats = [F.normalize(model.encode_text(model.tokenizer(prompts[i:i + PROMPT_CHUNK])), dim=-1).cpu()
                 for i in range(0, len(prompts), PROMPT_CHUNK)]
    sums = torch.zeros(len(classes), feats[0].shape[1]).index_add_(0, owner, torch.cat(feats))  # (C, D)
    return sums / torch.bincount(owner, minlength=len(classes)).unsqueeze(1)
