"""Machine checks: what keeps a run from starting on this machine (device, precision, data, weights).

:func:`preflight` checks every run that will start before anything runs (exit 2 listing every
problem); a job checks its own node again (:mod:`runs.executors.job`), since a cluster node may
differ from the machine that submitted it. ``validate`` prints them as warnings.
"""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache

from benchmarks.data_check import check_stream
from strategies.clip.precision import check_compatible
from strategies.training import resolve_device

from .config import RunConfig, SuiteConfig
from .errors import MachineError
from .fingerprint import resolve_precision
from .planning import STARTABLE, Planned


def check_machine(run: RunConfig) -> list[str]:
    """What keeps ``run`` from starting on this machine (device, data, weights); [] when nothing."""
    problems = []
    name = run.train.device
    if name.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"train.device={name!r} but CUDA is not available on this machine")
    elif name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        problems.append(f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    elif name == "mps" and not torch.backends.mps.is_available():
        problems.append("train.device='mps' but MPS is not available on this machine")
    problems += _check_precision(run) + _check_data(run) + _check_weights(run) + _check_method_data(run)
    return problems


def _check_precision(run: RunConfig) -> list[str]:
    """A bf16/fp16 backbone (model.precision) needs train.precision to resolve to bf16/fp16 here
    (``auto`` is fp32 off CUDA); explicit values were checked with the suite."""
    try:
        device = resolve_device(run.train.device)
    except RuntimeError:
        return []  # an unusable device name is reported above
    resolved = resolve_precision(run.train, device)
    try:
        check_compatible(run.model.precision, resolved)
    except ValueError as error:
        return [f"train.precision={run.train.precision!r} resolves to {resolved} on {device.type}: {error}"]
    return []


def _check_data(run: RunConfig) -> list[str]:
    assert run.stream is not None
    try:
        lines = check_stream(run.stream.name, run.data_root, run.stream.cfg)  # MTIL: its order and selection
    except ValueError:
        return []
    bad = [line for line in lines if line.status in ("missing", "corrupt")]
    if not bad or (run.download and all(line.status == "missing" for line in bad)):
        return []  # present, or missing and the loader may download it
    shown = ", ".join(f"{line.dataset}/{line.item} {line.status}" for line in bad[:4])
    more = f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""
    return [f"stream {run.stream.name}: data under {run.data_root!r} is not usable: {shown}{more}"
            f"{'' if run.download else ' and download is off'}; see `python -m runs data check "
            f"{run.stream.name} --data-root {run.data_root}`"]


def _check_method_data(run: RunConfig) -> list[str]:
    """Data a method reads besides the stream (ZSCL's reference images and captions): its config's
    ``machine_problems(run)``, when it has one."""
    check = getattr(run.method.cfg, "machine_problems", None) if run.method is not None else None
    return list(check(run)) if callable(check) else []


def _check_weights(run: RunConfig) -> list[str]:
    tag, arch = run.model.pretrained, run.model.arch
    if tag == "none" or Path(tag).is_file() or tag.startswith(("local-dir:", "hf-hub:")):
        return []
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        return [f"model.pretrained={tag!r}: not a weights file and not a pretrained tag of {arch} "
                f"(tags: {', '.join(tags) or 'none'})"]
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _weights_cached(arch, tag, run.model.cache_dir):
        return [f"model.pretrained={tag!r} for {arch}: not in the local cache and HF_HUB_OFFLINE=1 forbids "
                f"downloading it; run once online, or point model.pretrained at a local weights file"]
    return []


def _weights_cached(arch: str, tag: str, cache_dir: str | None) -> bool:
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = cfg.get("hf_hub", "")
    if not hub:
        return True  # URL-only weights: cannot tell without trying; the run reports a failed download
    repo_id = hub.rstrip("/")
    return any(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str)
               for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))


def preflight(suite: SuiteConfig, planned: list[Planned]) -> None:
    """Machine facts of every run that will start; :class:`MachineError` listing all problems."""
    problems: list[str] = []
    checked: set[str] = set()
    for item in planned:
        if item.action not in STARTABLE or item.run.name in checked:
            continue
        checked.add(item.run.name)
        problems += [f"{item.run.name}: {p}" for p in check_machine(item.run)]
    if problems:
        raise MachineError("cannot start (nothing ran): " + " | ".join(problems))


__all__ = ["check_machine", "preflight"]
