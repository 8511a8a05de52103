"""What makes a run's numbers: its fingerprint, its machine facts, and its provenance.

- **Fingerprint**: a hash of the run's *declared* resolved config (after dataclass defaults, the
  method recipe, ``defaults:`` and ``--set``; values such as ``device: auto`` stay literal) and the
  seed. Every field is in except those in :data:`NOT_FINGERPRINTED`, each with its reason; a field
  added to a config dataclass later is in automatically.
- **Machine facts** (:func:`machine_facts`): what the machine resolves that changes numbers — the
  device type and the precision. They are compared like the fingerprint.
- **Provenance** (:func:`provenance`): recorded, never compared — code version (git commit, dirty
  flag), package versions, host, GPU model, torch threads, times. A different git commit is not a
  change (a bug-fix commit must not orphan hours of results), but resuming under another commit
  logs a warning.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import socket
import subprocess
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


def fingerprinted(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` without the :data:`NOT_FINGERPRINTED` paths (a new copy)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if any(_matches(path, pattern) for pattern in NOT_FINGERPRINTED):
            continue
        out[key] = fingerprinted(value, f"{path}.") if isinstance(value, dict) else value
    return out


def fingerprint(config: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of :func:`fingerprinted` ``config``."""
    text = json.dumps(fingerprinted(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["train.lr 0.01 -> 0.05", ...]`` between two fingerprinted configs (or machine facts)."""
    a, b = flatten(old), flatten(new)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key, missing), b.get(key, missing)
        if before != after:
            show = lambda v: "(absent)" if v is missing else json.dumps(v, default=str)  # noqa: E731
            lines.append(f"{key} {show(before)} -> {show(after)}")
    return lines


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
