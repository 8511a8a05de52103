"""What a run costs (docs/metrics.md#cost): trainable parameters, extra stored state, peak device
memory, training and evaluation time, throughput and device-hours.

:class:`CostPlugin` is an Avalanche plugin the run session appends last to the strategy's plugins
(its hooks then see every other plugin's work of the same hook done; appended last, the checkpoint
keys of the other plugins keep their indices). It only reads: it draws no random number and changes
no tensor, so a run's numbers are the same with it.

- **Trainable parameters**: the distinct parameters of the model that were updated at least once —
  by the optimizer (in its parameter groups, with a gradient at ``before_update``: frozen parameters
  have none) or by a zeroth-order step (MoZO's ZO groups, :class:`strategies.mozo.zo.ZOGroup`) — as
  first-order (FO), zeroth-order (ZO) and per tower (vision / language / other). The parameter names
  go into the checkpoint, so a resumed run counts the union over every session.
- **Extra state**: what every plugin reports through ``extra_state()`` (:mod:`strategies.cost`);
  Avalanche's own stateful plugins (LwF, EWC, SI, Replay, A-GEM) through the adapters here, as
  :mod:`runs.checkpoint` adapts their checkpoint state. Measured after each experience's training;
  the largest value per name is kept.
- **Peak memory**: CUDA — ``torch.cuda.max_memory_allocated`` (peak statistics reset at the run's
  start and at each phase boundary); CPU — this process's resident memory, sampled by a background
  thread every :data:`SAMPLE_INTERVAL_S` and at every boundary, minus the resident memory when the run
  started (a serial suite runs every run in one process). Per training experience, and overall.
- **Time**: training (``before_training`` → ``after_training``, evaluations inside it excluded) and
  evaluation (``before_eval`` → ``after_eval``) wall time; the session's wall time from its start
  to its end. Every session records its cost in ``provenance.json``; a finished run's times and
  images are their sums over the sessions, its peak their maximum (:func:`merge_sessions`).
"""

from __future__ import annotations

import copy
import ctypes
import gc
import os
import platform
import random
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import AGEMPlugin, EWCPlugin, LwFPlugin, ReplayPlugin, SynapticIntelligencePlugin

from strategies.clip.units import tower_modules
from strategies.cost import ReportsExtraState, extra_state_of, tensor_bytes

from .folders import read_json

SAMPLE_INTERVAL_S = 0.02  # CPU: resident-memory sampling period of the background thread
BYTES_PER_GB = 1e9  # published memory figures are read as 10⁹ bytes
# flat cost keys (runs.csv, results.csv, the W&B summary as cost/<key>), in table order
FLAT_KEYS: tuple[str, ...] = (
    "trainable_params", "trainable_params_fo", "trainable_params_zo", "trainable_params_vision",
    "trainable_params_language", "extra_state_bytes", "peak_memory_bytes", "train_time_s", "eval_time_s",
    "train_images_per_s", "device_hours",
)
_SUMMED = ("wall_time_s", "train_time_s", "eval_time_s", "train_images")


# ---------------------------------------------------------------------- memory readers
def _statm_anon() -> int | None:
    """Anonymous resident memory from ``/proc/self/statm``: resident minus shared (file-backed) pages."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def resident_bytes() -> int | None:
    """Memory this process holds now: its anonymous resident memory (``/proc/self/statm``), else psutil's
    resident set size, else None. File-backed pages (the libraries' code) are left out: under a container's
    memory limit the kernel evicts them as the run allocates, so total resident memory can stay flat while
    the run's own memory grows."""
    anon = _statm_anon()
    if anon is not None:
        return anon
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def release_free_heap() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Memory freed earlier in a long process stays resident inside the heap, and a new allocation reuses it
    without raising resident memory: a run's peak would read as nothing. Trimmed first, it shows."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc's, where it is the C library
    except (OSError, AttributeError, TypeError):
        pass


def _sample_loop(sampler: weakref.ref, stop: threading.Event, interval_s: float) -> None:
    """The sampling thread: ends when stopped or when its sampler is gone (a session never closed)."""
    while not stop.wait(interval_s):
        current = sampler()
        if current is None:
            return
        current.sample()
        del current


class _RSSSampler:
    """A daemon thread keeping the largest resident memory seen since the last :meth:`take`."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        # first, garbage of earlier runs in this process (a serial suite) is collected, and the heap's free
        # pages go back to the system: reused by this run, either would hide its own peak (release_free_heap)
        gc.collect()
        release_free_heap()
        self.baseline = resident_bytes()
        self._max = self.baseline or 0
        self._floor = self.baseline or 0  # the lowest resident memory seen since the start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.baseline is not None:
            self._thread = threading.Thread(target=_sample_loop, args=(weakref.ref(self), self._stop, interval_s),
                                            name="cost-rss", daemon=True)
            self._thread.start()

    def sample(self) -> None:
        rss = resident_bytes()
        if rss is not None:
            with self._lock:
                self._max = max(self._max, rss)
                self._floor = min(self._floor, rss)

    def take(self) -> int | None:
        """Peak since the last call above the run's floor (bytes, >= 0); starts a new segment. The floor is
        the lowest resident memory seen since the start: memory the process frees that was resident before
        the run (another run's, in a serial suite) would otherwise hide this run's own peak."""
        if self.baseline is None:
            return None
        rss = resident_bytes() or 0
        with self._lock:
            peak, self._max = max(self._max, rss), rss
            self._floor = min(self._floor, rss)
            return max(0, peak - self._floor)

    def stop(self) -> None:
        self._stop.set()


class _CUDAPeak:
    """``max_memory_allocated`` since the last :meth:`take` (the peak statistics are reset there)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        torch.cuda.reset_peak_memory_stats(device)

    def take(self) -> int:
        peak = int(torch.cuda.max_memory_allocated(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def stop(self) -> None:
        pass


def machine_of(device: torch.device, precision: str) -> dict[str, Any]:
    """The machine class costs are compared on: device type, device model (GPU or CPU), precision."""
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    else:
        model = _cpu_model()
    return {"device_type": device.type, "device_model": model, "precision": precision}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# ---------------------------------------------------------------------- extra state of Avalanche's plugins
def _without_rng(fn: Any) -> Any:
    """``fn()`` with torch's CPU, NumPy's and Python's global RNG states put back after it."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        return fn()
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def dataset_bytes(dataset: Any) -> int:
    """Bytes of a stored-exemplar dataset as the model reads it: ``len × bytes of one input``.

    The input is read with the dataset's evaluation transforms (no augmentation) and the global RNG
    states restored, so measuring does not move the run's random stream.
    """
    n = len(dataset) if dataset is not None else 0
    if n == 0:
        return 0
    view = dataset.eval() if hasattr(dataset, "eval") else dataset
    sample = _without_rng(lambda: view[0])
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    return n * tensor_bytes(x)


def _param_data(groups: Any) -> int:
    """Bytes of Avalanche ``ParamData`` values in (nested) dicts / tuples."""
    tensors: list[torch.Tensor] = []
    stack = [groups]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "data") and isinstance(item.data, torch.Tensor):
            tensors.append(item.data)
    return tensor_bytes(tensors)


def _replay_buffers(plugin: Any) -> list[Any]:
    policy = plugin.storage_policy
    groups = getattr(policy, "buffer_groups", None)
    return [g.buffer for g in groups.values()] if groups is not None else [policy.buffer]


def _avalanche_extra_state(plugin: Any) -> dict[str, int] | None:
    """Extra state of Avalanche's stateful plugins (exact types, as :mod:`runs.checkpoint`); None for others."""
    kind = type(plugin)
    if kind is LwFPlugin:
        return {"lwf_previous_model": tensor_bytes(plugin.lwf.prev_model) if plugin.lwf.prev_model is not None else 0}
    if kind is EWCPlugin:
        return {"ewc_saved_params": _param_data(plugin.saved_params),
                "ewc_importances": _param_data(plugin.importances)}
    if kind is SynapticIntelligencePlugin:
        return {"si_params_and_importances": _param_data(plugin.ewc_data),
                "si_trajectories": _param_data(plugin.syn_data)}
    if kind is ReplayPlugin:
        return {"replay_buffer": sum(dataset_bytes(b) for b in _replay_buffers(plugin))}
    if kind is AGEMPlugin:
        return {"agem_memory": sum(dataset_bytes(b) for b in plugin.buffers)}
    return None


class _Reported:
    """An Avalanche plugin seen through :class:`strategies.cost.ReportsExtraState`."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def extra_state(self) -> dict[str, int]:
        return self.sizes


def reporting_parts(strategy: Any) -> list[Any]:
    """The strategy and its plugins, Avalanche's stateful plugins wrapped to report their state."""
    parts: list[Any] = [strategy]
    for plugin in getattr(strategy, "plugins", []):
        if isinstance(plugin, ReportsExtraState):
            parts.append(plugin)
            continue
        sizes = _avalanche_extra_state(plugin)
        if sizes is not None:
            parts.append(_Reported(sizes))
    return parts


def extra_state_of_strategy(strategy: Any) -> dict[str, int]:
    """Bytes per named state beyond the backbone, over the strategy and every plugin (0 names: none)."""
    return extra_state_of(reporting_parts(strategy))


# ---------------------------------------------------------------------- trainable parameters
def tower_of(model: torch.nn.Module) -> dict[int, str]:
    """``id(parameter) -> "vision" | "language"`` for a CLIP classifier (others: not in the map)."""
    clip = getattr(model, "clip", None)
    if clip is None:
        return {}
    towers: dict[int, str] = {}
    for tower, modules in tower_modules(clip).items():
        for module in modules:
            towers.update({id(p): tower for p in module.parameters()})
    for name in ("positional_embedding", "text_projection"):  # the text tower's loose tensors (CLIPClassifier)
        tensor = getattr(clip, name, None)
        if isinstance(tensor, torch.Tensor):
            towers[id(tensor)] = "language"
    return towers


def count_trainable(model: torch.nn.Module, fo_names: Iterable[str], zo_names: Iterable[str]) -> dict[str, Any]:
    """Distinct scalars of the named parameters: total, FO, ZO (a name in both counts as ZO) and per tower."""
    params = dict(model.named_parameters(remove_duplicate=True))
    zo = {n for n in zo_names if n in params}
    fo = {n for n in fo_names if n in params} - zo
    towers = tower_of(model)
    by_tower: dict[str, int] = {"vision": 0, "language": 0}
    for name in fo | zo:
        tower = towers.get(id(params[name]), "other")
        by_tower[tower] = by_tower.get(tower, 0) + params[name].numel()
    fo_count, zo_count = sum(params[n].numel() for n in fo), sum(params[n].numel() for n in zo)
    return {"trainable_params": fo_count + zo_count, "trainable_params_fo": fo_count,
            "trainable_params_zo": zo_count, "trainable_params_by_tower": by_tower}


def _zo_params(plugin: Any) -> list[torch.Tensor]:
    from strategies.mozo.zo import ZOGroup

    groups = getattr(plugin, "groups", None)
    if not isinstance(groups, list):
        return []
    return [p for g in groups if isinstance(g, ZOGroup) for p in g.params]


# ---------------------------------------------------------------------- the plugin
class CostPlugin(SupervisedPlugin):
    """Measures one session of a run (module docstring); :meth:`session_cost` and :meth:`finish` report."""

    def __init__(self, device: torch.device | str, *, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.memory: _CUDAPeak | _RSSSampler = _CUDAPeak(self.device) if self.cuda else _RSSSampler(interval_s)
        self.fo_names: set[str] = set()
        self.zo_names: set[str] = set()
        self.extra: dict[str, int] = {}
        self.train_s = self.eval_s = 0.0
        self.images = 0
        self.peak: int | None = None
        self.peak_per_experience: dict[int, int] = {}
        self._names: dict[int, str] = {}  # id(parameter) -> name, per experience
        self._experience: int | None = None  # the training experience whose peak is being measured
        self._train_since: float | None = None
        self._eval_since: float | None = None
        self._in_training = False
        self._frozen: dict[str, Any] | None = None

    # ---- clocks and memory segments ----------------------------------------------------------
    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _mark(self) -> None:
        """End a memory segment: its peak goes to the overall peak and to the experience in training."""
        peak = self.memory.take()
        if peak is None:
            return
        self.peak = peak if self.peak is None else max(self.peak, peak)
        if self._experience is not None:
            self.peak_per_experience[self._experience] = max(self.peak_per_experience.get(self._experience, 0), peak)

    def _stop_train_clock(self, now: float) -> None:
        if self._train_since is not None:
            self.train_s += now - self._train_since
            self._train_since = None

    # ---- hooks -------------------------------------------------------------------------------
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self._in_training = True
        self._train_since = self._now()

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        self._stop_train_clock(self._now())
        self._in_training = False

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._mark()
        self._experience = int(strategy.experience.current_experience)
        self._names = {id(p): n for n, p in strategy.model.named_parameters()}

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        """Parameters updated at this step: the optimizer's with a gradient, and every ZO group's."""
        names = self._names
        for group in strategy.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) in names:
                    self.fo_names.add(names[id(p)])
        for plugin in strategy.plugins:
            for p in _zo_params(plugin):
                if id(p) in names:
                    self.zo_names.add(names[id(p)])

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.images += len(strategy.mb_y)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._mark()
        self._experience = None
        self.measure_extra_state(strategy)

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        now = self._now()
        self._stop_train_clock(now)  # an evaluation inside train() is evaluation time
        self._mark()
        self._eval_since = now

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        now = self._now()
        if self._eval_since is not None:
            self.eval_s += now - self._eval_since
            self._eval_since = None
        self._mark()
        if self._in_training:
            self._train_since = now

    # ---- reports -----------------------------------------------------------------------------
    def measure_extra_state(self, strategy: Any) -> dict[str, int]:
        """Extra state now (bytes per name); the largest value per name is kept."""
        sizes = extra_state_of_strategy(strategy)
        for name, size in sizes.items():
            self.extra[name] = max(self.extra.get(name, 0), int(size))
        return sizes

    def session_cost(self, wall_s: float, *, final: bool = False) -> dict[str, Any]:
        """This session's measured cost (recorded per session in ``provenance.json``); ``final``
        freezes it, so a later call (the session's close) returns the same figures."""
        if self._frozen is not None:
            return dict(self._frozen)
        self._mark()
        cost = {"wall_time_s": float(wall_s), "train_time_s": self.train_s, "eval_time_s": self.eval_s,
                "train_images": self.images, "peak_memory_bytes": self.peak,
                "peak_memory_per_experience_bytes": {str(k): v for k, v in sorted(self.peak_per_experience.items())},
                "memory_measure": "cuda_max_allocated" if self.cuda else "cpu_anon_rss_above_floor"}
        if final:
            self._frozen = dict(cost)
        return cost

    def finish(self, strategy: Any, model: torch.nn.Module, session: Mapping[str, Any],
               previous: Sequence[Mapping[str, Any]], machine: Mapping[str, Any]) -> dict[str, Any]:
        """The run's cost: static figures (trainable parameters, extra state) with the measured
        figures merged over ``previous`` sessions and this ``session`` (:func:`merge_sessions`)."""
        self.measure_extra_state(strategy)
        cost: dict[str, Any] = count_trainable(model, self.fo_names, self.zo_names)
        cost["extra_state"] = dict(sorted(self.extra.items()))
        cost["extra_state_bytes"] = sum(self.extra.values())
        cost.update(merge_sessions([*previous, session]))
        cost["machine"] = dict(machine)
        return cost

    def close(self) -> None:
        self.memory.stop()

    # ---- checkpoint: the names updated and the extra state so far (union / max across sessions) --
    def state_dict(self) -> dict[str, Any]:
        return {"fo_names": sorted(self.fo_names), "zo_names": sorted(self.zo_names), "extra_state": dict(self.extra)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fo_names = set(state.get("fo_names", []))
        self.zo_names = set(state.get("zo_names", []))
        self.extra = {str(k): int(v) for k, v in (state.get("extra_state") or {}).items()}


def merge_sessions(sessions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum of the sessions' times and images, maximum of their peaks (per experience too); the
    throughput (training images / training time) and device-hours (wall time / 3600, one device)."""
    sessions = [s for s in sessions if isinstance(s, Mapping)]
    out: dict[str, Any] = {key: float(sum(s.get(key) or 0 for s in sessions)) for key in _SUMMED}
    out["train_images"] = int(out["train_images"])
    peaks = [s["peak_memory_bytes"] for s in sessions if s.get("peak_memory_bytes") is not None]
    out["peak_memory_bytes"] = max(peaks) if peaks else None
    per_exp: dict[int, int] = {}
    for s in sessions:
        for exp, value in (s.get("peak_memory_per_experience_bytes") or {}).items():
            per_exp[int(exp)] = max(per_exp.get(int(exp), 0), int(value))
    out["peak_memory_per_experience_bytes"] = [per_exp.get(i) for i in range(max(per_exp) + 1)] if per_exp else []
    measures = list(dict.fromkeys(s["memory_measure"] for s in sessions if s.get("memory_measure")))
    out["memory_measure"] = measures[0] if len(measures) == 1 else ("mixed: " + ", ".join(measures) if measures
                                                                     else None)
    trained = out["train_images"] > 0 and out["train_time_s"] > 0
    out["train_images_per_s"] = out["train_images"] / out["train_time_s"] if trained else None
    out["device_hours"] = out["wall_time_s"] / 3600.0
    out["sessions"] = len(sessions)
    return out


def flat_cost(cost: Mapping[str, Any] | None) -> dict[str, Any]:
    """The flat figures of a run's ``cost`` (:data:`FLAT_KEYS`); empty for a run without one."""
    if not isinstance(cost, Mapping):
        return {}
    towers = cost.get("trainable_params_by_tower") or {}
    flat = {key: cost.get(key) for key in FLAT_KEYS}
    flat["trainable_params_vision"], flat["trainable_params_language"] = towers.get("vision"), towers.get("language")
    return flat


def previous_session_costs(path: Path) -> list[dict[str, Any]]:
    """The ``cost`` of every session in ``provenance.json`` at ``path`` but the last (the current one);
    none when the file is absent or unreadable."""
    try:
        data = read_json(path) if path.is_file() else {}
    except ValueError:
        return []
    sessions = data.get("sessions") if isinstance(data, Mapping) else None
    return [copy.deepcopy(s["cost"]) for s in (sessions or [])[:-1]
            if isinstance(s, Mapping) and isinstance(s.get("cost"), Mapping)]


# ---------------------------------------------------------------------- tables (runs.report, runs.share)
# (flat key, column title, cell format) of the cost table, in order
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("trainable_params", "Trainable params", "count"), ("trainable_params_zo", "of which ZO", "count"),
    ("extra_state_bytes", "Extra state", "bytes"), ("peak_memory_bytes", "Peak memory", "bytes"),
    ("train_time_s", "Train time", "time"), ("eval_time_s", "Eval time", "time"),
    ("train_images_per_s", "Train images/s", "rate"), ("device_hours", "Device-hours", "hours"),
)
COST_NOTE = ("Cost (docs/metrics.md#cost): **Trainable params** = distinct parameters updated by the optimizer "
             "or a zeroth-order step (of which ZO: by the ZO step); **Extra state** = bytes the method stores "
             "beyond the backbone (largest over the experiences); **Peak memory** = CUDA max_memory_allocated, or "
             "on the CPU the sampled resident memory above the run's start; **Train / Eval time** = wall time "
             "in training / evaluation, summed over a resumed run's sessions; **Device-hours** = the run's wall "
             "time (every session) on its one device, in hours. Sizes in 10⁹ / 10⁶ / 10³ bytes.")


def machine_label(machine: Mapping[str, Any]) -> str:
    """``"NVIDIA H200 (cuda), bf16"``."""
    model, kind, precision = (machine.get(k) or "?" for k in ("device_model", "device_type", "precision"))
    return f"{model} ({kind}), {precision}"


def summarize_cost(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``<key>_mean`` over the finished seeds that recorded a cost (None when none did), for every
    :data:`FLAT_KEYS` and ``wall_time_s``; ``cost_seeds`` (how many recorded one) and ``cost_machines``."""
    costs = [r["cost"] for r in records if isinstance(r.get("cost"), Mapping)]
    flats = [flat_cost(c) for c in costs]
    out: dict[str, Any] = {"cost_seeds": len(costs)}
    for key in FLAT_KEYS:
        present = [float(f[key]) for f in flats if f.get(key) is not None]
        out[f"{key}_mean"] = sum(present) / len(present) if present else None
    out["cost_machines"] = list(dict.fromkeys(machine_label(c["machine"]) for c in costs
                                              if isinstance(c.get("machine"), Mapping)))
    return out


def run_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """runs.csv cost columns: :data:`FLAT_KEYS` when any run recorded a cost, else none (absent, not 0)."""
    return list(FLAT_KEYS) if any(isinstance(r.get("cost"), Mapping) for r in records) else []


def group_columns(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """results.csv cost columns (means over seeds), when any group recorded a cost."""
    return [f"{key}_mean" for key in FLAT_KEYS] if any(s.get("cost_seeds") for s in summaries) else []


def _count(n: float) -> str:
    for scale, unit in ((1e9, " B"), (1e6, " M"), (1e3, " K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _size(n: float) -> str:
    for scale, unit in ((1e9, " GB"), (1e6, " MB"), (1e3, " KB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f} B"


def _time(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def _cell(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    formats = {"count": _count, "bytes": _size, "time": _time, "rate": lambda v: f"{v:.1f}",
               "hours": lambda v: f"{v:.3g}"}
    return formats[kind](value)


@dataclass(frozen=True)
class CostComparison:
    """A run group's measured cost against its reference row's published ``cost`` block."""

    run: str
    key: str
    published: dict[str, Any]  # the reference row's cost block
    reason: str = ""  # why not compared ("" when compared)
    rows: tuple[tuple[str, float, float, float], ...] = ()  # (figure, measured, published, measured − published)


def machine_mismatches(published: Mapping[str, Any] | None, machines: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why runs on ``machines`` are not on the machine class of a published cost (empty: the same class:
    device type, device model and precision all stated by the source and equal)."""
    if not machines:
        return ["the run recorded no machine"]
    if not published:
        return ["the source states no machine (device, model, precision)"]
    reasons = []
    for key in ("device_type", "device_model", "precision"):
        wanted = published.get(key)
        if wanted is None:
            reasons.append(f"the source does not state its {key}")
            continue
        seen = sorted({str(m.get(key)) for m in machines})
        if any(str(m.get(key, "")).strip().lower() != str(wanted).strip().lower() for m in machines):
            reasons.append(f"{key} is {', '.join(seen)}, the source used {wanted}")
    return reasons


def compare_cost(summary: Mapping[str, Any], references: Mapping[str, Any]) -> CostComparison | None:
    """The comparison of a run group with the ``cost`` of the reference it names; None without one."""
    key = str(summary.get("reference") or "")
    ref = references.get(key) if key else None
    published = getattr(ref, "cost", None)
    if not published:
        return None
    machines = [r["cost"]["machine"] for r in summary.get("records", [])
                if isinstance(r.get("cost"), Mapping) and isinstance(r["cost"].get("machine"), Mapping)]
    reasons = machine_mismatches(published.get("machine"), machines)
    if reasons:
        return CostComparison(summary["name"], key, dict(published), "; ".join(reasons))
    rows = []
    for figure, measured_key, scale in (("peak_memory_gb", "peak_memory_bytes_mean", BYTES_PER_GB),
                                        ("device_hours", "device_hours_mean", 1.0)):
        measured = summary.get(measured_key)
        if figure in published and measured is not None:
            rows.append((figure, measured / scale, float(published[figure]), measured / scale - published[figure]))
    if not rows:
        return CostComparison(summary["name"], key, dict(published), "the run recorded none of the published figures")
    return CostComparison(summary["name"], key, dict(published), "", tuple(rows))


def _published_cell(c: CostComparison | None) -> str:
    if c is None:
        return "–"
    parts = [f"{c.published['peak_memory_gb']:g} GB" if "peak_memory_gb" in c.published else "",
             f"{c.published['device_hours']:g} h" if "device_hours" in c.published else ""]
    text = ", ".join(p for p in parts if p)
    if not c.rows:
        return f"{text} (not compared)"
    diffs = ", ".join(f"{d:+.2f} {'GB' if f == 'peak_memory_gb' else 'h'}" for f, _, _, d in c.rows)
    return f"{text} (measured − published: {diffs})"


def cost_table_rows(summaries: Sequence[Mapping[str, Any]], references: Mapping[str, Any] | None = None
                    ) -> tuple[list[str], list[list[str]], list[CostComparison]]:
    """Header, cells and comparisons of the cost table (groups with a recorded cost; empty: no table)."""
    if references is None:
        from . import references as refs

        references = refs.load_references()
    shown = [s for s in summaries if s.get("cost_seeds")]
    if not shown:
        return [], [], []
    columns = [(k, t, f) for k, t, f in COLUMNS if k != "trainable_params_zo"
               or any(s.get("trainable_params_zo_mean") for s in shown)]
    comparisons = {s["name"]: compare_cost(s, references) for s in shown}
    header = ["Run", "Method", "Stream", "Seeds", *[t for _, t, _ in columns]]
    several = len({m for s in shown for m in s.get("cost_machines", [])}) > 1
    header += ["Machine"] if several else []
    published = any(c is not None for c in comparisons.values())
    header += ["Published (GB, h)"] if published else []
    rows = []
    for s in shown:
        cells = [str(s["name"]), str(s["method"]), str(s["stream"]), str(s["cost_seeds"])]
        cells += [_cell(s.get(f"{k}_mean"), f) for k, _, f in columns]
        cells += ["; ".join(s.get("cost_machines", [])) or "?"] if several else []
        cells += [_published_cell(comparisons[s["name"]])] if published else []
        rows.append(cells)
    return header, rows, [c for c in comparisons.values() if c is not None]


def format_cost_table(summaries: Sequence[Mapping[str, Any]], references: Mapping[str, Any] | None = None) -> str:
    """Markdown: the cost table (mean over seeds) with the machine in its caption, its definitions and
    the published costs not compared, with why; "" when no run recorded a cost (runs from before)."""
    header, rows, comparisons = cost_table_rows(summaries, references)
    if not rows:
        return ""
    machines = list(dict.fromkeys(m for s in summaries for m in s.get("cost_machines", [])))
    caption = f"**Cost** (mean over seeds; machine: {'; '.join(machines) or 'not recorded'})"
    align = ["---"] * 4 + ["---:"] * (len(header) - 4)
    lines = ["", caption, "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", COST_NOTE]
    for c in comparisons:
        source = f"{c.published.get('table', '')} [{c.published.get('mark', '')}]"
        status = f"not compared: {c.reason}" if c.reason else "compared on the same machine class"
        lines.append(f"- {c.run} → `{c.key}` cost ({source}): {status}.")
    return "\n".join(lines) + "\n"


__all__ = ["COLUMNS", "FLAT_KEYS", "CostComparison", "CostPlugin", "compare_cost", "cost_table_rows",
           "format_cost_table", "group_columns", "machine_label", "machine_mismatches", "run_columns",
           "summarize_cost", "count_trainable", "dataset_bytes", "extra_state_of_strategy", "flat_cost",
           "machine_of", "merge_sessions", "previous_session_costs", "reporting_parts", "resident_bytes", "tower_of"]
