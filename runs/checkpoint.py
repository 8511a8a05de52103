"""Explicit checkpoints at experience boundaries, loaded with ``torch.load(weights_only=True)``.

Avalanche's dill-based ``save_checkpoint`` fails on current torch, and a pickle that can hold any
object can also run any code when loaded: a checkpoint planted in a results folder from elsewhere
would execute on the next ``run``. So a checkpoint holds only tensors and plain values (dicts,
lists, numbers, strings): the model's trainable/unit tensors, every plugin's state, the accuracy
rows so far and the RNG states (CPU, CUDA when used, NumPy, Python).

**Plugin state protocol.** A plugin with state across experiences implements
``state_dict() -> dict`` and ``load_state_dict(state)`` with tensors and plain values only (as
MoZO's and ConDU's plugins do). Avalanche's own stateful plugins get adapters here
(:data:`ADAPTERS`): LwF's previous model as its trainable tensors, Replay's and A-GEM's buffers as
dataset indices per experience, EWC's and SI's importances as name -> tensor dicts, the clock's
counters. Plugins known to carry nothing across experiences are listed in
:func:`_stateless_types`. Any other plugin is refused when the run starts
(:func:`check_checkpointable`), instead of silently disabling checkpoints.
"""

from __future__ import annotations

import copy
import logging
import pickle
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader
from avalanche.training.plugins import (
    AGEMPlugin,
    EvaluationPlugin,
    EWCPlugin,
    LwFPlugin,
    ReplayPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.plugins.clock import Clock
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.templates.base_sgd import PeriodicEval
from avalanche.training.utils import ParamData

from strategies.clip import unit_parameters
from strategies.training import RecipePlugin

from .io import atomic_write

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (a plugin without the protocol) or read (damaged / unsafe)."""


@dataclass
class Context:
    """What adapters need besides the plugin: the strategy (its model) and the training stream."""

    strategy: Any
    train_stream: Any


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensors that training can change: trainable parameters and every unit parameter (ZO units too)."""
    units = getattr(model, "units", None)
    unit_ids = {id(p) for p in unit_parameters(units)} if units is not None else set()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or id(p) in unit_ids}


# ---- adapters for Avalanche's plugins -----------------------------------------------------------
def _param_data(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {name: ParamData(name, init_tensor=t.clone(), device=t.device) for name, t in tensors.items()}


def _tensors(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: p.data.detach().clone() for name, p in params.items()}


def _positions(subset: Any, parent: Any) -> list[int]:
    """Indices of ``subset``'s samples inside ``parent`` (both Avalanche datasets over the same data)."""
    sub, par = subset._flat_data, parent._flat_data
    if len(sub._datasets) != len(par._datasets) or any(a is not b for a, b in zip(sub._datasets, par._datasets,
                                                                                   strict=True)):
        raise CheckpointError("a replay buffer is not a subset of its experience's dataset; cannot store it "
                              "as indices")
    where = {g: i for i, g in enumerate(par._indices if par._indices is not None else range(len(parent)))}
    return [where[g] for g in (sub._indices if sub._indices is not None else range(len(subset)))]


def classifier_extras(model: Any) -> dict[str, Any]:
    """What a copied model carries besides its tensors and changes its forward: each module's
    train/eval mode (dropout draws), the classifier's active classes and prompt set (which text
    features are encoded, so how many random draws they take) and its cached text features.

    LwF's teacher is ``deepcopy(model)`` taken in train mode right after an experience, scoring
    that experience's label space with the training prompts; rebuilt at resume from a freshly
    built model it would score every class with the evaluation prompts, draw other dropout masks
    and shift every later random draw (docs/reliability.md#exact-resume).
    """
    extras: dict[str, Any] = {"training": [name for name, m in model.named_modules() if m.training]}
    for attr in ("active_classes", "prompt_set"):
        if hasattr(model, attr):
            value = getattr(model, attr)
            extras[attr] = [int(c) for c in value] if attr == "active_classes" else str(value)
    cache = getattr(model, "_text_cache", None)
    if isinstance(cache, dict) and hasattr(model, "_text_state_version"):
        extras["text_cache"] = [[str(p), str(s), [int(i) for i in ids], t.detach().clone()]
                                for (p, s, ids), t in cache.items()]
        extras["text_cache_valid"] = getattr(model, "_text_version", None) == model._text_state_version()
    return extras


def load_classifier_extras(model: Any, extras: dict[str, Any]) -> None:
    """Apply :func:`classifier_extras` to ``model`` (after its tensors were loaded)."""
    training = set(extras.get("training", []))
    for name, module in model.named_modules():
        module.training = name in training
    if "active_classes" in extras:
        model.active_classes = list(extras["active_classes"])
    if "prompt_set" in extras:
        model.prompt_set = extras["prompt_set"]
    if "text_cache" in extras:
        model._text_cache = {(p, s, tuple(ids)): t for p, s, ids, t in extras["text_cache"]}
        model._text_version = model._text_state_version() if extras.get("text_cache_valid") else None


def _lwf_state(plugin: Any, ctx: Context) -> dict[str, Any]:
    lwf = plugin.lwf
    prev = lwf.prev_model
    return {"expcount": lwf.expcount,
            "prev_classes_by_task": {int(t): sorted(int(c) for c in cs) for t, cs in lwf.prev_classes_by_task.items()},
            "prev_model": None if prev is None else model_state(prev),
            "prev_extras": None if prev is None else classifier_extras(prev)}


def _lwf_load(plugin: Any, state: dict[str, Any], ctx: Context) -> None:
    lwf = plugin.lwf
    lwf.expcount = state["expcount"]
    lwf.prev_classes_by_task = defaultdict(set, {t: set(cs) for t, cs in state["prev_classes_by_task"].items()})
    lwf.prev_model = None
    if state["prev_model"] is not None:
        lwf.prev_model = copy.deepcopy(ctx.strategy.model)
        lwf.prev_model.load_state_dict(state["prev_model"], strict=False)
        if state.get("prev_extras") is not None:
            load_classifier_extras(lwf.prev_model, state["prev_extras"])


def _ewc_state(plugin: Any, ctx: Context) -> dict[str, Any]:
    return {"saved_params": {int(e): _tensors(p) for e, p in plugin.saved_params.items()},
            "importances": {int(e): _tensors(p) for e, p in plugin.importances.items()}}


def _ewc_load(plugin: Any, state: dict[str, Any], ctx: Context) -> None:
    plugin.saved_params = defaultdict(dict, {e: _param_data(p) for e, p in state["saved_params"].items()})
    plugin.importances = defaultdict(dict, {e: _param_data(p) for e, p in state["importances"].items()})


def _si_state(plugin: Any, ctx: Context) -> dict[str, Any]:
    return {"ewc_data": [_tensors(d) for d in plugin.ewc_data],
            "syn_data": {k: _tensors(d) for k, d in plugin.syn_data.items()}}


def _si_load(plugin: Any, state: dict[str, Any], ctx: Context) -> None:
    plugin.ewc_data = tuple(_param_data(d) for d in state["ewc_data"])
    plugin.syn_data = {k: _param_data(d) for k, d in state["syn_data"].items()}


def _replay_state(plugin: Any, ctx: Context) -> dict[str, Any]:
    policy = plugin.storage_policy
    groups = {}
    for exp, group in policy.buffer_groups.items():
        groups[int(exp)] = {"max_size": group.max_size, "weights": group._buffer_weights.clone(),
                            "indices": _positions(group.buffer, ctx.train_stream[exp].dataset)}
    return {"max_size": policy.max_size, "num_exps": policy._num_exps, "groups": groups}


def _replay_load(plugin: Any, state: dict[str, Any], ctx: Context) -> None:
    policy = plugin.storage_policy
    policy.max_size, policy._num_exps = state["max_size"], state["num_exps"]
    policy.buffer_groups = {}
    for exp, group in state["groups"].items():
        buffer = ReservoirSamplingBuffer(group["max_size"])
        buffer.buffer = ctx.train_stream[exp].dataset.subset(group["indices"])
        buffer._buffer_weights = group["weights"]
        policy.buffer_groups[exp] = buffer


def _agem_state(plugin: Any, ctx: Context) -> dict[str, Any]:
    return {"indices": [_positions(b, ctx.train_stream[e].dataset) for e, b in enumerate(plugin.buffers)]}


def _agem_load(plugin: Any, state: dict[str, Any], ctx: Context) -> None:
    """Buffers restored exactly; the memory sampler restarts (A-GEM resumes are not bit-identical)."""
    plugin.buffers = [ctx.train_stream[e].dataset.subset(ix) for e, ix in enumerate(state["indices"])]
    if plugin.buffers:
        plugin.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            plugin.buffers, batch_size=plugin.sample_size // len(plugin.buffers), num_workers=0, pin_memory=False)
        plugin.buffer_dliter = iter(plugin.buffer_dataloader)


def _clock_state(plugin: Any, ctx: Context) -> dict[str, Any]:
    return {k: v for k, v in vars(plugin).items() if isinstance(v, int) and not isinstance(v, bool)}


def _clock_load(plugin: Any, state: dict[str, Any], ctx: Context) -> None:
    for key, value in state.items():
        setattr(plugin, key, value)


Adapter = tuple[Callable[[Any, Context], dict[str, Any]], Callable[[Any, dict[str, Any], Context], None]]


def _adapters() -> dict[type, Adapter]:
    return {LwFPlugin: (_lwf_state, _lwf_load), EWCPlugin: (_ewc_state, _ewc_load),
            SynapticIntelligencePlugin: (_si_state, _si_load), ReplayPlugin: (_replay_state, _replay_load),
            AGEMPlugin: (_agem_state, _agem_load), Clock: (_clock_state, _clock_load)}


def _stateless_types() -> tuple[type, ...]:
    """Plugins that carry nothing from one experience to the next that a resume needs."""
    return (EvaluationPlugin, PeriodicEval, RecipePlugin)


def _adapter(plugin: Any) -> Adapter | None:
    for cls, adapter in _adapters().items():
        if type(plugin) is cls:  # exact type: a subclass may add state the adapter does not know
            return adapter
    return None


def _key(index: int, plugin: Any) -> str:
    return f"{index}:{type(plugin).__name__}"


def check_checkpointable(plugins: list[Any]) -> None:
    """Refuse, with one message, a plugin whose state a checkpoint could not carry."""
    stateless = _stateless_types()
    for plugin in plugins:
        if hasattr(plugin, "state_dict") and hasattr(plugin, "load_state_dict"):
            continue
        if _adapter(plugin) is not None or isinstance(plugin, stateless):
            continue
        raise CheckpointError(
            f"plugin {type(plugin).__name__} has no state_dict()/load_state_dict(): an interrupted run could not "
            f"resume it. Implement both (tensors and plain values only), or drop the plugin")


def plugin_states(plugins: list[Any], ctx: Context) -> dict[str, Any]:
    states: dict[str, Any] = {}
    stateless = _stateless_types()
    for index, plugin in enumerate(plugins):
        adapter = _adapter(plugin)
        if hasattr(plugin, "state_dict") and hasattr(plugin, "load_state_dict"):
            states[_key(index, plugin)] = plugin.state_dict()
        elif adapter is not None:
            states[_key(index, plugin)] = adapter[0](plugin, ctx)
        elif not isinstance(plugin, stateless):
            check_checkpointable([plugin])
    return states


def load_plugin_states(plugins: list[Any], states: dict[str, Any], ctx: Context) -> None:
    for index, plugin in enumerate(plugins):
        key = _key(index, plugin)
        if key not in states:
            continue
        adapter = _adapter(plugin)
        if hasattr(plugin, "load_state_dict"):
            plugin.load_state_dict(states[key])
        elif adapter is not None:
            adapter[1](plugin, states[key], ctx)


# ---- RNG ---------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain values (NumPy's keys as an int64 tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # legacy=True: the (kind, keys, pos, has_gauss, cached) tuple
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _python_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- files ---------------------------------------------------------------------------------------
def save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (per-process temporary sibling + rename): a torn checkpoint never replaces a good one."""
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (None when absent), loaded with ``weights_only=True``.

    Raises :class:`CheckpointError` for a damaged file or one whose pickle asks for anything but
    tensors and plain values (nothing in it is executed).
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError,
            UnicodeDecodeError, TypeError) as error:
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: unreadable or unsafe checkpoint ({first})") from None
    if not isinstance(state, dict) or not {"model", "plugins", "rng", "rows", "next_step"} <= set(state):
        raise CheckpointError(f"{path}: not a checkpoint of this toolkit (missing keys)")
    return state
