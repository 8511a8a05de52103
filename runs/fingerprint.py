"""What makes a run's numbers: its fingerprint, its machine facts, and its provenance.

- **Fingerprint**: a hash of the run's *declared* resolved config (after dataclass defaults, the
  method recipe, ``defaults:`` and ``--set``; values such as ``device: auto`` stay literal) and the
  seed — of the parts of it the method reads (``MethodSpec.reads``: whole sections or single fields;
  zero-shot reads no training option) plus ``seed``. The suite's other seeds (``seeds``) are not in:
  adding a seed runs only the new one. Every field of a read section is in except those in
  :data:`NOT_FINGERPRINTED`, each with its reason; a field added to a config dataclass later is in
  automatically.
- **Comparison** (:func:`differences`): a folder written under an older fingerprint (another hash)
  is compared field by field over what the current fingerprint covers; a field absent from the old
  folder that now holds its default (a field added since) is no change. The folder then counts as
  the same run: no ``--rerun-changed`` after a change of what a fingerprint covers.
- **Machine facts** (:func:`machine_facts`): what the machine resolves that changes numbers — the
  device type and the precision. They are compared like the fingerprint.
- **Provenance** (:func:`provenance`): recorded, never compared — code version (git commit, dirty
  flag), package versions, host, GPU model, torch threads, times. A different git commit is not a
  change (a bug-fix commit must not orphan hours of results), but resuming under another commit
  logs a warning.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import platform
import socket
import subprocess
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

# dotted path (``*`` matches one level) -> why it cannot change a number
NOT_FINGERPRINTED: dict[str, str] = {
    "name": "the display name is the run folder's name; renaming makes another folder anyway",
    "data_root": "where the datasets are, not what they are (the stream's options say what)",
    "download": "whether missing data may be fetched; the data itself is the same",
    "model.cache_dir": "where open_clip caches weights; the weights are named by model.pretrained",
    "method.log_every": "how often per-step figures are logged",
    "method.cache_directions": "z drawn once per MoZO step or replayed from its seed: the same values, bit for bit",
    "reference": "which published row the run is compared with; training does not read it",
}
# Suite-level fields are not part of a run's config and so are not fingerprinted either:
SUITE_LEVEL_NOT_FINGERPRINTED = ("output_dir", "wandb.mode", "wandb.project", "wandb.entity", "wandb.group",
                                 "wandb.tags")
PACKAGES = ("torch", "avalanche-lib", "open_clip_torch", "wandb", "numpy")


def _matches(path: str, pattern: str) -> bool:
    parts, wanted = path.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(w in ("*", p) for p, w in zip(parts, wanted, strict=True))


def _without_excluded(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if any(_matches(path, pattern) for pattern in NOT_FINGERPRINTED):
            continue
        out[key] = _without_excluded(value, f"{path}.") if isinstance(value, dict) else value
    return out


def select(config: dict[str, Any], reads: Sequence[str]) -> dict[str, Any]:
    """The parts of ``config`` that ``reads`` names (``"train"``: the section, ``"train.lr"``: one field)
    plus ``seed``; a named part the config lacks is left out (a new copy of the nesting)."""
    out: dict[str, Any] = {"seed": config["seed"]} if "seed" in config else {}
    for path in reads:
        node: Any = config
        parts = path.split(".")
        for part in parts:
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is _ABSENT:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = copy.deepcopy(node)
    return out


_ABSENT = object()


def fingerprinted(config: dict[str, Any], reads: Sequence[str] | None = None) -> dict[str, Any]:
    """What the fingerprint covers: ``config``'s ``reads`` parts and ``seed`` (every key when ``reads``
    is None), without the :data:`NOT_FINGERPRINTED` paths (a new copy)."""
    return _without_excluded(config if reads is None else select(config, reads))


def fingerprint(config: dict[str, Any], reads: Sequence[str] | None = None) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of :func:`fingerprinted` ``config``."""
    text = json.dumps(fingerprinted(config, reads), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``["train.lr 0.01 -> 0.05", ...]`` between two fingerprinted configs (or machine facts).

    ``defaults`` (dotted path -> default value, :func:`flatten` form): a key absent from ``old`` whose
    new value is its field's default is no change (a field added since ``old`` was written).
    """
    a, b = flatten(old), flatten(new)
    defaults = defaults or {}
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key, missing), b.get(key, missing)
        if before is missing and key in defaults and _same_json(after, defaults[key]):
            continue
        if not _same_json(before, after):
            show = lambda v: "(absent)" if v is missing else json.dumps(v, default=str)  # noqa: E731
            lines.append(f"{key} {show(before)} -> {show(after)}")
    return lines


def _same_json(a: Any, b: Any) -> bool:
    """Equal as stored in ``fingerprint.json`` (tuples and lists alike, ``1 == 1.0`` as Python has it)."""
    return a == b or json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def differences(stored: dict[str, Any], current: dict[str, Any], reads: Sequence[str] | None = None,
                defaults: Mapping[str, Any] | None = None) -> list[str]:
    """The changes from a folder's stored fingerprinted config to the run's ``current`` one, over what
    the current fingerprint covers: ``stored`` is cut to ``reads`` (and ``seed``) first, so a field
    an older fingerprint covered and this one does not (``seeds``, zero-shot's ``train.lr``) is no
    change, and an absent field holding its default is none either (:func:`changed_fields`)."""
    return changed_fields(fingerprinted(stored, reads), current, defaults)


def resolve_precision(train: Any, device: torch.device) -> str:
    """``train.precision`` as the run will use it (``auto``: bf16 on CUDA, fp32 elsewhere)."""
    precision = getattr(train, "precision", "fp32")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return str(precision)


def machine_facts(train: Any, device: torch.device) -> dict[str, str]:
    """The machine-resolved settings that change numbers (compared like the fingerprint)."""
    return {"device_type": device.type, "precision": resolve_precision(train, device)}


PROJECT_ROOT = Path(__file__).resolve().parents[1]


@cache
def git_info(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout at ``root``; "unknown" outside one."""
    if not (root / "pyproject.toml").exists() or not (root / ".git").exists():  # an installed copy
        return {"commit": "unknown", "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit or "unknown", "dirty": bool(status.strip())}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def provenance(device: torch.device) -> dict[str, Any]:
    """Code version, package versions, host and device of this process (recorded, not compared)."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "project_version": _version("clip-cl"),
        "git": git_info(),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": str(device),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
    }
