"""Speed and memory benchmarks of the shipped path, no pretrained weights needed: MoZO's configurations
and ConDU's plugin (study-type measurements of fidelity live in :mod:`runs.studies`).

Every figure comes from :mod:`runs.harness`: Avalanche's own ``train`` / ``eval`` loops of a real
``SupervisedTemplate`` on a tiny in-memory stream, iterations timed by a plugin.

``bench_mozo`` (CLI: ``python -m runs bench mozo --arch ViT-B-16 --batch-size 64``) builds a CLIP of the
given size with random weights (weights do not change memory or time) and measures, for each
configuration, the peak memory and the time of one training iteration on one random minibatch (images at
the model's input size, labels over 10 classes, prompts "a photo of a {name}.", model in train mode),
each through :func:`runs.harness.run_steps` on ``Naive`` (AdamW over the trainable parameters):

- ``inference``: the template's evaluation loop (model in eval mode, ``torch.no_grad``); the text-feature
  cache is dropped before every minibatch, so both towers run, i.e. the work of one forward pass of every
  training configuration;
- ``full FO``: ``Naive`` alone: every unit first-order (forward, cross-entropy, backward, AdamW step);
- ``Dual ZO`` / ``Vision ZO`` / ``Language ZO``: ``Naive`` plus ``MoZOPlugin`` with that branch and layers
  "all": the iteration is the MoZO strategy's (``MoZO`` is ``SupervisedTemplate`` + this plugin);
- ``MoZO``: the paper's configuration, i.e. the ``MoZOConfig`` defaults (dual branch, hop-even layers,
  scalar sign, conservative candidate, ε_vision < ε_language);
- ``MoZO (from scratch)``: the same with ``reuse_forward=False``: L(θ), the features at θ, the blocks
  below the lowest ZO layer and the units' noise are recomputed in the ZO step instead of taken from the
  FO forward (the step before the cheaper one; same update).

An iteration is timed from the template's ``before_training_iteration`` to its
``after_training_iteration`` (:class:`runs.harness.StepTimer`, first among the plugins; with
``torch.cuda.synchronize()`` at both ends on CUDA): forward, loss, backward, the plugin's ZO step in
``before_update`` and the optimizer step are inside, loading the minibatch is not.

``grad_checkpointing`` (CLI ``--grad-checkpointing``) adds, after every training configuration, the same
configuration with per-block gradient checkpointing of both towers (``train.grad_checkpointing``; row
``<configuration> + grad ckpt``): activations inside a block are recomputed in backward instead of kept.
``compile`` (``--compile``) adds every configuration with both towers compiled (``train.compile``,
torch.compile's default inductor backend; row ``<configuration> + compile``); the warm-up steps absorb the
compilation, and the first step's time is listed under the table (each compiled row compiles cold, with
an inductor cache of its own).

``repeats`` > 1 measures every configuration that many times, round-robin (so slow phases of a shared
machine hit every configuration alike), and reports the run with the median time.

Every configuration gets a fresh model (the plugin changes ``requires_grad``) and one ``run_steps`` call
of 2 warm-up + ``steps`` timed iterations; the time is the mean of the timed ones.

How memory is measured (:class:`runs.harness.MemoryProbe`, baseline at the first iteration's start):

- CUDA: in one process, ``torch.cuda.reset_peak_memory_stats()``, then ``torch.cuda.max_memory_allocated()``
  over the warm-up and timed iterations: the peak of tensor memory, model weights included. "above model"
  is that peak minus the memory allocated at the start (weights and minibatch). These are the meaningful
  figures.
- CPU: peak RSS is only meaningful per process, so each configuration runs in a fresh interpreter
  (``python -m runs.bench --worker CONFIG ...``, which prints one JSON line) and the peak is
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. At the first iteration the kernel's high-water mark is
  reset (``/proc/self/clear_refs``, Linux >= 4.0; if that is refused the peak also covers model
  construction) and the current RSS recorded, the baseline of "above model". The peak is the RSS of the
  *whole process*, with Python, torch, open_clip and avalanche loaded (several hundred MiB), so its
  "× inference" ratios understate the differences between configurations; "above model" is closer to
  the activation + optimizer memory, though memory that the allocator kept from model construction can
  be reused without showing up. Prefer the GPU numbers.

``bench_condu`` (CLI ``python -m runs bench condu``) trains :class:`strategies.condu.ConDU` (its public
constructor, Avalanche's ``train``) on a stream of ``tasks`` experiences and measures, through a
:class:`runs.harness.HookBracket` around its plugin, what the plugin runs at the end of each experience
(δ, unify, triggers, prototypes), then evaluation throughput of the task-aware and aggregated routes
through Avalanche's ``eval``.

``condu_storage`` computes ConDU's storage (shared θ⁰ and unified model U, per task a 1-bit mask per
trainable parameter, a float32 rescaler and float32 prototypes) from the shapes of a random-init model,
with :func:`strategies.condu.fusion.storage_report`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from torch.utils.data import Dataset

import strategies  # noqa: F401  (torchvision shim before open_clip / avalanche)
from benchmarks.synthetic import class_names
from strategies.clip import CLIPClassifier, ModelConfig, UnitsConfig, build_clip, image_size, unit_parameters
from strategies.condu import ConDU, ConDUPlugin
from strategies.condu.fusion import Trigger, storage_report
from strategies.mozo import MoZOConfig, MoZOPlugin
from strategies.training import resolve_device

from . import harness
from .harness import HookBracket

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: tuple[str, ...] = ("inference", "full FO", "Dual ZO", "Vision ZO", "Language ZO", "MoZO",
                            "MoZO (from scratch)")
ZO_CONFIGS: dict[str, MoZOConfig] = {
    "Dual ZO": MoZOConfig(branch="dual", layers="all"),
    "Vision ZO": MoZOConfig(branch="vision", layers="all"),
    "Language ZO": MoZOConfig(branch="language", layers="all"),
    "MoZO": MoZOConfig(),
    "MoZO (from scratch)": MoZOConfig(),  # reuse_forward=False: L(θ), features, prefix and noise recomputed
}
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LR = 1e-3  # MoE-Adapters4CL / MoZO FO recipe (AdamW 1e-3); the ZO step size defaults to it
WARMUP = 2
MIB = 2**20


@dataclass
class Measurement:
    """One configuration's figures (bytes, milliseconds)."""

    config: str
    peak_bytes: int  # CUDA: max_memory_allocated; CPU: peak RSS of the process
    base_bytes: int  # the same quantity right before the first step (model, minibatch, optimizer object)
    ms_per_step: float
    fo_params: int  # parameters updated first-order
    zo_params: int  # parameters updated zeroth-order
    peak_reset: bool = True  # CPU: whether the RSS high-water mark was reset after model construction
    grad_checkpointing: bool = False  # both towers' blocks recomputed in backward (train.grad_checkpointing)
    compiled: bool = False  # towers compiled with torch.compile's defaults (train.compile)
    first_step_ms: float = 0.0  # the first warm-up step: includes compilation when compiled

    @property
    def label(self) -> str:
        return self.config + (" + grad ckpt" if self.grad_checkpointing else "") + (" + compile" if self.compiled
                                                                                    else "")


class _FreshText(SupervisedPlugin):
    """Drops the text-feature cache before every evaluation minibatch: the inference row runs both
    towers, as every training forward does."""

    def before_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        strategy.model.invalidate_text_cache()


def build_strategy(config: str, model: CLIPClassifier, *, batch_size: int, device: Any) -> Any:
    """The Avalanche strategy that runs ``config``: ``Naive`` (AdamW at :data:`LR` over the model's
    trainable parameters) plus, for the ZO rows, ``MoZOPlugin`` with that configuration; the
    inference row evaluates it with :class:`_FreshText`."""
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; expected one of {', '.join(CONFIGS)}")
    plugins: list[SupervisedPlugin] = []
    if config == "inference":
        plugins.append(_FreshText())
    elif config in ZO_CONFIGS:
        plugins.append(MoZOPlugin(replace(ZO_CONFIGS[config]), reuse_forward=config != "MoZO (from scratch)"))
    # built before the plugin takes its units out of autograd, as the runner does (training.make_optimizer)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=LR)
    return harness.naive(model, optimizer, batch_size=batch_size, device=device, plugins=plugins)


def _partition(model: CLIPClassifier, config: str) -> tuple[int, int]:
    """(FO, ZO) parameter counts after training: unit parameters with and without ``requires_grad``."""
    if config == "inference":
        return 0, 0
    units = list(unit_parameters(model.units))
    return sum(p.numel() for p in units if p.requires_grad), sum(p.numel() for p in units if not p.requires_grad)


def measure(config: str, *, arch: str = "clip-tiny", batch_size: int = 8, steps: int = 5, device: str = "cpu",
            units: str = "moe", warmup: int = WARMUP, seed: int = 0, grad_checkpointing: bool = False,
            compile: bool = False) -> Measurement:
    """Build a fresh model and measure ``config`` in this process (see the module docstring): one
    :func:`runs.harness.run_steps` call of ``warmup + steps`` iterations on the same minibatch."""
    device = str(resolve_device(device))
    torch.manual_seed(seed)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), device)
    model.set_grad_checkpointing(grad_checkpointing)
    if compile:
        model.compile_towers()
    model.set_class_prompts([[f"a photo of a {name}."] for name in CLASS_NAMES])
    size = image_size(model)
    x = torch.randn(batch_size, 3, size, size)
    y = torch.randint(0, len(CLASS_NAMES), (batch_size,))
    strategy = build_strategy(config, model, batch_size=batch_size, device=device)
    times = harness.run_steps(strategy, harness.repeated_minibatch(x, y, warmup + steps),
                              train=config != "inference")
    fo, zo = _partition(model, config)
    first_ms = times.ms[0] if warmup > 0 else 0.0
    del strategy, model
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return Measurement(config, int(times.peak_bytes), int(times.base_bytes), times.mean_ms(warmup), fo, zo,
                       times.peak_reset, grad_checkpointing, compile, first_ms)


def _measure_in_subprocess(config: str, **kw: Any) -> Measurement:
    cmd = [sys.executable, "-m", "runs.bench", "--worker", config]
    for key, value in kw.items():
        flag = f"--{key.replace('_', '-')}"
        cmd += ([flag] if value else []) if isinstance(value, bool) else [flag, str(value)]
    with tempfile.TemporaryDirectory(prefix="clipcl-inductor-") as cache:
        # a compiled row compiles cold: its own inductor cache, not kernels an earlier row left on disk
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache} if kw.get("compile") else None
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker for {config!r} failed (exit {proc.returncode}): "
                           f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return Measurement(**json.loads(lines[-1]))


def _count(n: int) -> str:
    if n >= 10**6:
        return f"{n / 10**6:.2f}M"
    return f"{n / 10**3:.1f}k" if n >= 10**3 else str(n)


def format_mozo_table(results: Sequence[Measurement], header: str) -> str:
    """Markdown table of ``results``; ratios are relative to the ``inference`` row (or the first row)."""
    ref = next((r for r in results if r.config == "inference"), results[0])
    fo = next((r for r in results if r.config == "full FO"), None)
    lines = [header, "",
             "| configuration | peak memory (MiB) | × inference | above model (MiB) | step time (ms) | × inference "
             "| FO / ZO parameters | × full FO step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        mem_ratio = r.peak_bytes / ref.peak_bytes if ref.peak_bytes else math.nan
        time_ratio = r.ms_per_step / ref.ms_per_step if ref.ms_per_step else math.nan
        fo_ratio = f"{r.ms_per_step / fo.ms_per_step:.2f}" if fo is not None and fo.ms_per_step else "–"
        lines.append(f"| {r.label} | {r.peak_bytes / MIB:.1f} | {mem_ratio:.2f} | "
                     f"{max(r.peak_bytes - r.base_bytes, 0) / MIB:.1f} | {r.ms_per_step:.1f} | {time_ratio:.2f} | "
                     f"{_count(r.fo_params)} / {_count(r.zo_params)} | {fo_ratio} |")
    compiled = [r for r in results if r.compiled]
    if compiled:
        lines += ["", "First step of the compiled rows (compilation included; timed steps exclude it): "
                  + ", ".join(f"{r.label} {r.first_step_ms / 1000:.1f} s" for r in compiled) + "."]
    return "\n".join(lines)


def bench_mozo(*, arch: str = "clip-tiny", batch_size: int = 8, steps: int = 5, device: str = "auto",
               units: str = "moe", configs: Sequence[str] = CONFIGS, isolate: bool | None = None,
               warmup: int = WARMUP, repeats: int = 1, grad_checkpointing: bool = False,
               compile: bool = False) -> str:
    """Peak memory and time per step of MoZO's configurations, as a Markdown table (module docstring).

    ``isolate``: run each configuration in a fresh subprocess; default (None) on CPU only, where peak RSS
    is per process. ``configs``: a subset of :data:`CONFIGS`. ``grad_checkpointing``: every training
    configuration is measured twice, without and with per-block gradient checkpointing of both towers
    (rows ``... + grad ckpt``; inference has no backward and is measured once). ``compile``: every
    configuration is also measured with both towers compiled (rows ``... + compile``; the first
    step, which compiles, is listed under the table).
    """
    device = str(resolve_device(device))
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise ValueError(f"unknown configurations {bad}; expected some of {', '.join(CONFIGS)}")
    cuda = torch.device(device).type == "cuda"
    isolate = (not cuda) if isolate is None else isolate
    kw: dict[str, Any] = {"arch": arch, "batch_size": batch_size, "steps": steps, "device": device,
                          "units": units, "warmup": warmup}
    ckpts = (False, True) if grad_checkpointing else (False,)
    variants = [(c, ckpt, comp) for c in configs for ckpt in (ckpts if c != "inference" else (False,))
                for comp in ((False, True) if compile else (False,))]
    runs: dict[tuple[str, bool, bool], list[Measurement]] = {v: [] for v in variants}
    for _ in range(max(1, repeats)):  # round-robin: a slow phase of a shared machine hits every configuration
        for c, ckpt, comp in variants:
            runs[(c, ckpt, comp)].append((_measure_in_subprocess if isolate else measure)(
                c, **kw, grad_checkpointing=ckpt, compile=comp))
    results = [sorted(runs[v], key=lambda m: m.ms_per_step)[len(runs[v]) // 2] for v in variants]
    if cuda:
        where = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
        how = ("torch.cuda.max_memory_allocated() per configuration (model weights included); "
               "above model = peak − memory allocated before the first step")
    else:
        where = device
        scope = "a fresh process per configuration" if isolate else "one shared process (figures not isolated)"
        how = (f"peak RSS of the whole process (ru_maxrss; Python + torch + open_clip + avalanche included), "
               f"{scope}; above model = peak − RSS before the first step")
        if not all(r.peak_reset for r in results):
            how += "; the RSS high-water mark could not be reset, so peaks include model construction"
    header = (f"MoZO benchmark: arch {arch}, units {units}, batch size {batch_size}, {warmup} warm-up + {steps} "
              f"timed steps{f', median of {repeats} runs' if repeats > 1 else ''}, "
              f"device {where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads. "
              f"Memory: {how}.")
    return format_mozo_table(results, header)


# --------------------------------------------------------------------------- ConDU storage


def _embed_dim(model: CLIPClassifier) -> int:
    dim = getattr(model.clip.visual, "output_dim", None)
    if isinstance(dim, int):
        return dim
    return int(model.clip.text_projection.shape[-1])


def condu_storage_figures(arch: str = "ViT-B-16", units: str = "full", classes_per_task: int = 100,
                          tasks: int = 11) -> dict[str, Any]:
    """ConDU's storage in bytes for a model size: ``storage_report``'s dict plus the model's figures.

    θ⁰ = the trainable tensors (units "full": every tower parameter; "lora": the LoRA factors), U has the
    same shapes; each task stores a bit-packed mask (ceil(numel/8) bytes per tensor), a float32 rescaler
    and ``classes_per_task`` float32 prototypes of the embedding dimension.
    """
    if tasks < 1 or classes_per_task < 1:
        raise ValueError("condu_storage: tasks and classes_per_task must be >= 1")
    torch.manual_seed(0)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), "cpu")
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"units={units!r} leaves no trainable tensor: ConDU needs full or lora")
    # one trigger stands for every task: only its size matters, and it depends on the shapes alone
    trigger = Trigger(mask={n: torch.zeros((p.numel() + 7) // 8, dtype=torch.uint8) for n, p in params.items()},
                      shapes={n: p.shape for n, p in params.items()}, rescaler=1.0)
    embed_dim = _embed_dim(model)
    proto_bytes = classes_per_task * embed_dim * 4
    report = storage_report(params, params, [trigger] * tasks, [proto_bytes] * tasks)
    report.update(
        arch=arch, units=units, classes_per_task=classes_per_task, n_tasks=tasks, embed_dim=embed_dim,
        trainable_tensors=len(params), trainable_params=sum(p.numel() for p in params.values()),
        model_params=sum(p.numel() for p in model.parameters()),
        model_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
    )
    return report


def format_condu_storage(fig: dict[str, Any]) -> str:
    """Markdown table of :func:`condu_storage_figures`."""
    task, n = fig["per_task"][0], fig["n_tasks"]
    trainable, whole = fig["theta0"], fig["model_bytes"]
    rows = [
        ("θ⁰: trainable tensors at the start", fig["theta0"]),
        ("U: unified model", fig["unified"]),
        ("shared (θ⁰ + U)", fig["shared"]),
        ("per task: mask (1 bit per trainable parameter)", task["mask"]),
        ("per task: rescaler λ (float32)", task["rescaler"]),
        (f"per task: prototypes ({fig['classes_per_task']} × {fig['embed_dim']} float32)", task["prototypes"]),
        ("per task: total", task["total"]),
        (f"{n} tasks", fig["tasks"]),
        (f"total ConDU storage ({n} tasks)", fig["total"]),
        (f"for comparison: θ⁰ + {n} fine-tuned copies of the trainable tensors", trainable * (n + 1)),
    ]
    lines = [
        f"ConDU storage: arch {fig['arch']}, units {fig['units']} ({fig['trainable_tensors']} trainable tensors, "
        f"{fig['trainable_params']:,} of {fig['model_params']:,} parameters, float32), "
        f"{fig['classes_per_task']} classes per task, {n} tasks. One model copy = the trainable tensors "
        f"({trainable / MIB:.2f} MiB) or the whole CLIP ({whole / MIB:.2f} MiB).",
        "",
        "| item | bytes | MiB | ÷ trainable tensors | ÷ whole CLIP |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, size in rows:
        lines.append(f"| {name} | {size:,} | {size / MIB:.3f} | {_pct(size / trainable)} | {_pct(size / whole)} |")
    return "\n".join(lines)


def _pct(x: float) -> str:
    v = 100 * x
    if v >= 100:
        return f"{v:,.0f} %"
    if v >= 1e-3:
        return f"{v:.3g} %"
    return "< 0.001 %" if v > 0 else "0 %"


def condu_storage(arch: str = "ViT-B-16", units: str = "full", classes_per_task: int = 100, tasks: int = 11) -> str:
    """ConDU's storage cost for a model size, as a Markdown table (no weights needed)."""
    return format_condu_storage(condu_storage_figures(arch, units, classes_per_task, tasks))


# --------------------------------------------------------------------------- subprocess worker


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runs.bench",
                                     description="measure one MoZO configuration; prints one JSON line")
    parser.add_argument("--worker", required=True, choices=CONFIGS, metavar="CONFIG")
    parser.add_argument("--arch", default="clip-tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--units", default="moe")
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.worker, arch=args.arch, batch_size=args.batch_size, steps=args.steps,
                     device=args.device, units=args.units, warmup=args.warmup,
                     grad_checkpointing=args.grad_checkpointing, compile=args.compile)
    print(json.dumps(asdict(result)), flush=True)
    return 0


# --------------------------------------------------------------------------- ConDU through its plugin

CONDU_CLASSES_PER_TASK = 2  # classes per experience of the bench's stream
CONDU_TRAIN_PER_CLASS = 2  # training images per class: one training iteration of 4 images per experience
CONDU_LR = 1e-5  # ConDU's recipe (strategies.condu.strategy.RECIPE)
CONDU_END_HOOKS = ("after_training_exp", "after_training")  # where the plugin's end-of-experience work may run


@dataclass
class CondUSession:
    """One ConDU session's figures (bytes, milliseconds); "extra" is above the memory held before it."""

    session: int  # t: tasks after this session
    copy_bytes: int  # one model copy: the fp32 trainable tensors of one task model
    end_ms: float  # what the plugin runs at the end of the experience (δ, unify, triggers, prototypes)
    end_extra_bytes: int  # peak during it − memory in use right before it
    peak_reset: bool = True  # CPU: the RSS high-water mark could be reset before each measurement


class _SyntheticImages(Dataset):
    """Random images drawn on access (seeded by index: no memory held), with ``targets``."""

    def __init__(self, targets: list[int], size: int, seed: int) -> None:
        self.targets, self.size, self.seed = targets, size, seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn(3, self.size, self.size, generator=gen), self.targets[index]


def _condu_streams(tasks: int, size: int, eval_images: int) -> tuple[Any, Any]:
    """The same ``tasks`` experiences of :data:`CONDU_CLASSES_PER_TASK` classes twice: without task labels
    (ConDU's ``inference: auto`` aggregates) and with them (task-aware); ``eval_images`` test images per
    experience."""

    n = tasks * CONDU_CLASSES_PER_TASK
    per_class = -(-eval_images // CONDU_CLASSES_PER_TASK)
    train = _SyntheticImages([c for c in range(n) for _ in range(CONDU_TRAIN_PER_CLASS)], size, seed=1)
    test = _SyntheticImages([c for c in range(n) for _ in range(per_class)], size, seed=2)
    return tuple(nc_benchmark(train, test, n_experiences=tasks, task_labels=labels, shuffle=False)
                 for labels in (False, True))


def _condu_run(*, arch: str, units: str, tasks: int, device: str, top_k: int = 4, batch_size: int = 32,
               eval_images: int = 32) -> tuple[Any, list[CondUSession], tuple[Any, Any]]:
    """Train :class:`~strategies.condu.ConDU` (public constructor, Avalanche's ``train``) on ``tasks``
    experiences, one training iteration each, with a :class:`~runs.harness.HookBracket` around its
    plugin: the strategy, each session's figures, and the (aggregated, task-aware) streams."""

    if tasks < 1:
        raise ValueError(f"bench condu: tasks must be >= 1, got {tasks}")
    device = str(resolve_device(device))
    torch.manual_seed(0)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), device)
    copy = sum(p.numel() * 4 for p in model.trainable_parameters())
    if not copy:
        raise ValueError(f"units={units!r} leaves no trainable tensor: ConDU needs full or lora")
    names = class_names(tasks * CONDU_CLASSES_PER_TASK)
    model.set_class_prompts([[f"a photo of a {name}."] for name in names])
    agnostic, aware = _condu_streams(tasks, image_size(model), eval_images)
    strategy = ConDU(model=model, optimizer=torch.optim.AdamW(model.trainable_parameters(), lr=CONDU_LR),
                     top_k=top_k, cache_models=max(top_k, 1), train_mb_size=CONDU_CLASSES_PER_TASK *
                     CONDU_TRAIN_PER_CLASS, eval_mb_size=batch_size, train_epochs=1, device=device,
                     evaluator=harness.silent_evaluator(), eval_every=-1)
    plugin = next(p for p in strategy.plugins if isinstance(p, ConDUPlugin))
    bracket = HookBracket(device, CONDU_END_HOOKS).around(strategy, plugin)
    sessions = []
    for t, experience in enumerate(agnostic.train_stream, start=1):
        done = len(bracket.costs)
        strategy.train(experience, eval_streams=[])
        costs = bracket.costs[done:]
        sessions.append(CondUSession(t, copy, sum(c.ms for c in costs), max((c.extra_bytes for c in costs), default=0),
                                     all(c.peak_reset for c in costs)))
    return strategy, sessions, (agnostic, aware)


def measure_condu_sessions(tasks: int, *, arch: str = "clip-tiny", units: str = "full",
                           device: str = "cpu") -> list[CondUSession]:
    """Time and extra peak memory of the ConDU plugin's end of experience, sessions 1..``tasks``, in this
    process (the real strategy trained on the bench's stream; :func:`_condu_run`)."""
    return _condu_run(arch=arch, units=units, tasks=tasks, device=device)[1]


def _condu_session_in_subprocess(session: int, **kw: Any) -> CondUSession:
    """Session ``session``'s figures from a fresh interpreter (sessions 1..``session`` trained there)."""
    code = ("import json, sys; from dataclasses import asdict; from runs.bench import measure_condu_sessions; "
            "kw = json.loads(sys.argv[2]); "
            "print(json.dumps(asdict(measure_condu_sessions(int(sys.argv[1]), **kw)[-1])))")
    cmd = [sys.executable, "-c", code, str(session), json.dumps(kw)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"ConDU session worker {session} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return CondUSession(**json.loads(lines[-1]))


def condu_eval_throughput(strategy: Any, streams: tuple[Any, Any], *, batch_size: int) -> dict[str, tuple[float,
                                                                                                        float]]:
    """(images per second, first minibatch ms) of the trained ConDU strategy's evaluation of experience 0,
    task-aware (the task-labelled stream) and aggregated (top-K + pretrained), through Avalanche's
    ``eval`` (:func:`runs.harness.run_steps`). The first minibatch (text features, task models) is the
    warm-up; the rest is timed."""
    agnostic, aware = streams
    out = {}
    for name, stream in (("task-aware", aware), ("aggregated", agnostic)):
        experience = stream.test_stream[0]
        times = harness.run_steps(strategy, experience, train=False)
        images = len(experience.dataset) - min(batch_size, len(experience.dataset))
        timed = sum(times.timed(1))
        out[name] = (images / (timed / 1000) if timed else math.nan, times.ms[0])
    return out


def bench_condu(*, arch: str = "clip-tiny", units: str = "full", tasks: int = 11, device: str = "auto",
                top_k: int = 4, batch_size: int = 32, batches: int = 3, classes_per_task: int = 100,
                isolate: bool | None = None) -> str:
    """What the ConDU plugin runs, through :class:`~strategies.condu.ConDU` on Avalanche's loops: per
    session its end of experience (time, extra peak memory), then evaluation throughput (task-aware and
    aggregated), then the storage table.

    Memory: CUDA — ``max_memory_allocated`` − allocated before, in this process; CPU — ``ru_maxrss``
    − RSS before, one fresh process per session (``isolate``, default on CPU; sessions 1..t trained
    there) with the high-water mark reset right before the measured hook.
    """
    device = str(resolve_device(device))
    cuda = torch.device(device).type == "cuda"
    isolate = (not cuda) if isolate is None else isolate
    strategy, sessions, streams = _condu_run(arch=arch, units=units, tasks=tasks, device=device, top_k=top_k,
                                             batch_size=batch_size, eval_images=(1 + batches) * batch_size)
    if isolate:
        sessions = [_condu_session_in_subprocess(t, arch=arch, units=units, device=device)
                    for t in range(1, tasks + 1)]
    copy = sessions[0].copy_bytes
    how = ("torch.cuda.max_memory_allocated() − memory allocated before, in one process" if cuda else
           "ru_maxrss − RSS before, " + ("a fresh process per session" if isolate else "one process (not isolated)")
           + ("" if all(s.peak_reset for s in sessions) else "; RSS high-water mark NOT reset: peaks overstated"))
    where = f"{device} ({torch.cuda.get_device_name(torch.device(device))})" if cuda else device
    train_images = CONDU_CLASSES_PER_TASK * CONDU_TRAIN_PER_CLASS
    lines = [f"ConDU through its plugin (ConDU strategy, Avalanche train/eval): arch {arch}, units {units}, "
             f"{tasks} tasks of {CONDU_CLASSES_PER_TASK} classes, device {where}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads. Each experience: one training iteration of {train_images} "
             f"images, then the plugin's end of experience (δ, unify, triggers, prototypes of the {train_images} "
             f"images). One model copy = the fp32 trainable tensors ({copy / MIB:.2f} MiB). Extra memory: {how}.",
             "",
             "| session t | end of experience (ms) | extra peak (MiB) | ÷ model copy |",
             "|---:|---:|---:|---:|"]
    for s in sessions:
        lines.append(f"| {s.session} | {s.end_ms:.1f} | {s.end_extra_bytes / MIB:.2f} | "
                     f"{s.end_extra_bytes / copy:.2f} |")
    lines.append(f"\nend of experience total over {tasks} sessions: {sum(s.end_ms for s in sessions) / 1000:.2f} s")
    speed = condu_eval_throughput(strategy, streams, batch_size=batch_size)
    lines += ["", f"Evaluation of experience 0 through the template, batch {batch_size}, {batches} timed "
              f"minibatches after one warm-up, K = {top_k} of {tasks} tasks (ideal ratio 1/(K+1) = "
              f"{1 / (top_k + 1):.2f}); the first minibatch loads the task models and text features:", "",
              "| prediction | images/s | ÷ task-aware | first minibatch (ms) |", "|---|---:|---:|---:|"]
    for name, (value, first) in speed.items():
        lines.append(f"| {name} | {value:.1f} | {value / speed['task-aware'][0]:.2f} | {first:.1f} |")
    lines += ["", condu_storage(arch, units, classes_per_task, tasks)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_worker_main())
