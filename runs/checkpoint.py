"""Explicit checkpoints at experience boundaries (Avalanche's dill-based ``save_checkpoint`` fails on
current torch). A checkpoint holds the model's unit/trainable tensors, the state of every plugin
that declares one, the accuracy rows so far and the RNG states, so an interrupted run resumes at
the next experience with the same numbers it would have produced.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strategies.clip import CLIPClassifier, unit_parameters

log = logging.getLogger(__name__)

# Avalanche plugins have no state_dict: the attributes that carry their state across experiences.
_AVALANCHE_STATE = {
    "LwFPlugin": ("lwf",),
    "EWCPlugin": ("saved_params", "importances"),
    "ReplayPlugin": ("storage_policy",),
    "Clock": ("train_iterations", "train_exp_counter", "total_iterations"),
}
_STATELESS = {"EvaluationPlugin", "RecipePlugin", "PeriodicEval"}


def model_state(model: CLIPClassifier) -> dict[str, torch.Tensor]:
    """Tensors that training can change: trainable parameters and every unit parameter (ZO units too)."""
    unit_ids = {id(p) for p in unit_parameters(model.units)}
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or id(p) in unit_ids}


def plugin_states(plugins: list[Any]) -> dict[str, Any] | None:
    """State of every plugin, or None when one of them cannot be checkpointed."""
    states: dict[str, Any] = {}
    for plugin in plugins:
        name = type(plugin).__name__
        if hasattr(plugin, "state_dict"):
            states[name] = plugin.state_dict()
        elif name in _AVALANCHE_STATE:
            states[name] = {attr: getattr(plugin, attr) for attr in _AVALANCHE_STATE[name]}
        elif name not in _STATELESS:
            return None
    return states


def load_plugin_states(plugins: list[Any], states: dict[str, Any]) -> None:
    for plugin in plugins:
        name = type(plugin).__name__
        if name not in states:
            continue
        if hasattr(plugin, "load_state_dict"):
            plugin.load_state_dict(states[name])
        else:
            for attr, value in states[name].items():
                setattr(plugin, attr, value)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a half-written checkpoint never replaces a good one."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, weights_only=False)
