"""Speed and memory benchmarks that need no pretrained weights: MoZO's configurations and ConDU's storage.

``bench_mozo`` (CLI: ``python -m runs bench mozo --arch ViT-B-16 --batch-size 64``) builds a CLIP of the
given size with random weights (weights do not change memory or time) and measures, for each
configuration, the peak memory and the time of one training step on one random minibatch (images at the
model's input size, labels over 10 classes, prompts "a photo of a {name}.", model in train mode):

- ``inference``: ``model(x)`` under ``torch.no_grad()``; the text-feature cache is dropped before every
  step, so both towers run, i.e. the work of one forward pass of every training configuration;
- ``full FO``: every unit first-order: forward, cross-entropy, backward, AdamW step over the unit parameters;
- ``Dual ZO`` / ``Vision ZO`` / ``Language ZO``: ``MoZOPlugin`` with that branch and layers "all"; the step is
  what the MoZO strategy runs per iteration: forward and loss (no autograd graph when no unit is
  first-order), backward if the loss needs it, the plugin's ``before_update`` (the ZO step), then the AdamW
  step of the first-order units if there are any;
- ``MoZO``: the paper's configuration, i.e. the ``MoZOConfig`` defaults (dual branch, hop-even layers,
  scalar sign, conservative candidate, ε_vision < ε_language);
- ``MoZO (from scratch)``: the same with ``reuse_forward=False``: L(θ), the features at θ, the blocks
  below the lowest ZO layer and the units' noise are recomputed in the ZO step instead of taken from the
  FO forward (the step before the cheaper one; same update).

``grad_checkpointing`` (CLI ``--grad-checkpointing``) adds, after every training configuration, the same
configuration with per-block gradient checkpointing of both towers (``train.grad_checkpointing``; row
``<configuration> + grad ckpt``): activations inside a block are recomputed in backward instead of kept.
``compile`` (``--compile``) adds every configuration with both towers compiled (``train.compile``,
torch.compile's default inductor backend; row ``<configuration> + compile``); the warm-up steps absorb the
compilation, and the first step's time is listed under the table (each compiled row compiles cold, with
an inductor cache of its own).

``repeats`` > 1 measures every configuration that many times, round-robin (so slow phases of a shared
machine hit every configuration alike), and reports the run with the median time.

Every configuration gets a fresh model (the plugin changes ``requires_grad``), 2 warm-up steps, then
``steps`` timed steps (``time.perf_counter``, with ``torch.cuda.synchronize()`` on CUDA).

How memory is measured:

- CUDA: in one process, ``torch.cuda.reset_peak_memory_stats()`` after the model is built, then
  ``torch.cuda.max_memory_allocated()`` over the warm-up and timed steps: the peak of tensor memory, model
  weights included. "above model" is that peak minus the memory allocated right before the first step
  (weights and minibatch). These are the meaningful figures.
- CPU: peak RSS is only meaningful per process, so each configuration runs in a fresh interpreter
  (``python -m runs.bench --worker CONFIG ...``, which prints one JSON line) and the peak is
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Before the first step the worker resets the kernel's
  high-water mark (``/proc/self/clear_refs``, Linux >= 4.0; if that is refused the peak also covers model
  construction) and records the current RSS, the baseline of "above model". The peak is the RSS of the
  *whole process*, with Python, torch, open_clip and avalanche loaded (several hundred MiB), so its
  "× inference" ratios understate the differences between configurations; "above model" is closer to
  the activation + optimizer memory, though memory that the allocator kept from model construction can
  be reused without showing up. Prefer the GPU numbers.

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
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import strategies  # noqa: F401  (torchvision shim before open_clip / avalanche)
from strategies.clip import CLIPClassifier, ModelConfig, UnitsConfig, build_clip, image_size
from strategies.condu.fusion import Trigger, storage_report
from strategies.mozo.plugin import MoZOConfig, MoZOPlugin
from strategies.training import resolve_device

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


class _Clock:
    train_iterations = 0


class _Evaluator:
    def publish_metric_value(self, value: Any) -> None:  # the plugin's figures are not needed here
        pass


class _Strategy:
    """The strategy attributes ``MoZOPlugin.before_update`` reads."""

    def __init__(self, model: CLIPClassifier, x: torch.Tensor, y: torch.Tensor, optimizer: Any) -> None:
        self.model, self.mb_x, self.mb_y, self.optimizer = model, x, y, optimizer
        self._criterion = nn.CrossEntropyLoss()
        self.clock = _Clock()
        self.evaluator = _Evaluator()
        self.loss = torch.tensor(0.0)
        self.mb_output: torch.Tensor | None = None


def _make_step(config: str, model: CLIPClassifier, x: torch.Tensor, y: torch.Tensor) -> tuple[Callable[[], None],
                                                                                                   int, int]:
    """The step function of ``config`` and its (FO, ZO) parameter counts."""
    if config == "inference":
        def infer() -> None:
            model.invalidate_text_cache()  # run the text tower too, as every training forward does
            with torch.no_grad():
                model(x)

        return infer, 0, 0
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; expected one of {', '.join(CONFIGS)}")
    plugin = (MoZOPlugin(replace(ZO_CONFIGS[config]), reuse_forward=config != "MoZO (from scratch)")
              if config in ZO_CONFIGS else None)
    if plugin is not None:
        plugin.attach(model)  # ZO units out of autograd before the FO optimizer is built
    fo = model.trainable_parameters()  # after the plugin took its units out of autograd
    zo = sum(p.numel() for g in plugin.groups for p in g.params) if plugin is not None else 0
    # with no FO unit the plugin still reads the lr schedule from the optimizer: a placeholder one
    optimizer = torch.optim.AdamW(fo, lr=LR) if fo else torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    strategy = _Strategy(model, x, y, optimizer)

    def train() -> None:  # the MoZO strategy's iteration (Avalanche's template order)
        optimizer.zero_grad(set_to_none=True)
        if plugin is not None:
            plugin.before_training_iteration(strategy)
        strategy.mb_output = model(x)
        if plugin is not None:
            plugin.after_forward(strategy)
        strategy.loss = strategy._criterion(strategy.mb_output, y)
        if plugin is not None:
            plugin.before_backward(strategy)
        if strategy.loss.requires_grad:
            strategy.loss.backward()
        strategy.clock.train_iterations += 1
        if plugin is not None:
            plugin.before_update(strategy)
        if fo:
            optimizer.step()

    return train, sum(p.numel() for p in fo), zo


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (and so ru_maxrss) to the current RSS; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(config: str, *, arch: str = "clip-tiny", batch_size: int = 8, steps: int = 5, device: str = "cpu",
            units: str = "moe", warmup: int = WARMUP, seed: int = 0, grad_checkpointing: bool = False,
            compile: bool = False) -> Measurement:
    """Build a fresh model and measure ``config`` in this process (see the module docstring)."""
    device = str(resolve_device(device))
    cuda = torch.device(device).type == "cuda"
    torch.manual_seed(seed)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), device)
    model.set_grad_checkpointing(grad_checkpointing)
    if compile:
        model.compile_towers()
    model.train()
    model.set_class_prompts([[f"a photo of a {name}."] for name in CLASS_NAMES])
    size = image_size(model)
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, len(CLASS_NAMES), (batch_size,), device=device)
    step, fo, zo = _make_step(config, model, x, y)
    gc.collect()
    reset = True
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak_rss()
        base = _rss_bytes()
    first_ms = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        first_ms = (time.perf_counter() - start) * 1000 if i == 0 else first_ms
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1000 / max(steps, 1)
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
    del step, model, x, y
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return Measurement(config, int(peak), int(base), ms, fo, zo, reset, grad_checkpointing, compile, first_ms)


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
    kw = {"arch": arch, "batch_size": batch_size, "steps": steps, "device": device, "units": units,
          "warmup": warmup}
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


if __name__ == "__main__":
    sys.exit(_worker_main())


# --------------------------------------------------------------------------- ConDU fusion sessions


@dataclass
class CondUSession:
    """One ConDU session's figures (bytes, milliseconds); "extra" is above the memory held before it."""

    session: int  # t: tasks after this session's unify
    copy_bytes: int  # one model copy: the fp32 trainable tensors of one task model
    unify_ms: float
    unify_extra_bytes: int  # peak during unify_into − memory before it (model, θ⁰, U, triggers)
    decouple_ms: float
    decouple_extra_bytes: int  # peak during decouple_into of one task − memory before it
    peak_reset: bool = True  # CPU: the RSS high-water mark could be reset before each measurement


class _MemoryProbe:
    """Peak-above-baseline of one code section: CUDA allocator stats, or this process's RSS (Linux)."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.reset_ok = True

    def start(self) -> int:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        self.reset_ok = _reset_peak_rss() and self.reset_ok
        return _rss_bytes()

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _peak_rss_bytes()


def _synthetic_condu_state(params: dict[str, torch.Tensor], tasks: int,
                           gen: torch.Generator) -> tuple[dict[str, torch.Tensor], list[Trigger]]:
    """A unified delta and ``tasks`` triggers of random content (cost does not depend on the values)."""
    unified = {n: torch.empty_like(p).normal_(0.0, 1e-3, generator=gen) for n, p in params.items()}
    mask_gen = torch.Generator().manual_seed(0)  # masks live on the CPU (fusion's mask_device)
    triggers = []
    for i in range(tasks):
        masks = {n: torch.randint(0, 256, ((p.numel() + 7) // 8,), dtype=torch.uint8, generator=mask_gen)
                 for n, p in params.items()}
        triggers.append(Trigger(mask=masks, shapes={n: p.shape for n, p in params.items()}, rescaler=1.0 + 0.1 * i))
    return unified, triggers


def _warm_up_fusion(session: int, device: str) -> None:
    """One session on a toy state first: the first use of each kernel pages in its code (CPU RSS)."""
    from strategies.condu.fusion import decouple_into, unify_into

    toy = {"w": torch.randn(3 * 4096 + 5, device=device)}
    toy0 = {"w": torch.zeros_like(toy["w"])}
    unified, triggers = (None, []) if session == 1 else _synthetic_condu_state(toy, session - 1,
                                                                               torch.Generator(device=device))
    unified, triggers = unify_into(unified, triggers, toy, toy0, chunk_bytes=1)
    decouple_into(toy, toy0, unified, triggers[0], chunk_bytes=1)


def measure_condu_session(session: int, *, arch: str = "clip-tiny", units: str = "full", device: str = "cpu",
                          chunk_bytes: int | None = None) -> CondUSession:
    """Time and extra peak memory of ConDU session ``session`` (unify_into) and of one decouple_into.

    The state before the session — θ⁰, U and ``session − 1`` triggers, random content — is built
    in place (no temporaries); θ = θ⁰ + noise stands for the trained task model. A session on a toy
    state runs first, so that code paged in by the kernels' first use is not counted.
    """
    from strategies.condu.fusion import decouple_into, unify_into

    if session < 1:
        raise ValueError(f"session must be >= 1, got {session}")
    device = str(resolve_device(device))
    torch.manual_seed(0)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), device)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"units={units!r} leaves no trainable tensor: ConDU needs full or lora")
    theta0 = {n: p.clone() for n, p in params.items()}
    gen = torch.Generator(device=device).manual_seed(0)
    unified, triggers = (None, []) if session == 1 else _synthetic_condu_state(params, session - 1, gen)
    for n, p in params.items():  # θ = θ⁰ + noise, in place
        p.normal_(0.0, 1e-3, generator=gen).add_(theta0[n])
    _warm_up_fusion(session, device)
    probe = _MemoryProbe(device)
    base = probe.start()
    start = time.perf_counter()
    unified, triggers = unify_into(unified, triggers, params, theta0, chunk_bytes=chunk_bytes)
    if probe.cuda:
        torch.cuda.synchronize()
    unify_ms, unify_extra = (time.perf_counter() - start) * 1000, probe.peak() - base
    base = probe.start()
    start = time.perf_counter()
    decouple_into(params, theta0, unified, triggers[0], chunk_bytes=chunk_bytes)
    if probe.cuda:
        torch.cuda.synchronize()
    decouple_ms, decouple_extra = (time.perf_counter() - start) * 1000, probe.peak() - base
    copy_bytes = sum(p.numel() * 4 for p in params.values())
    return CondUSession(session, copy_bytes, unify_ms, max(unify_extra, 0), decouple_ms, max(decouple_extra, 0),
                        probe.reset_ok)


def _condu_session_in_subprocess(session: int, **kw: Any) -> CondUSession:
    code = ("import json, sys; from dataclasses import asdict; from runs.bench import measure_condu_session; "
            "kw = json.loads(sys.argv[2]); print(json.dumps(asdict(measure_condu_session(int(sys.argv[1]), **kw))))")
    cmd = [sys.executable, "-c", code, str(session), json.dumps(kw)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"ConDU session worker {session} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return CondUSession(**json.loads(lines[-1]))


def condu_eval_throughput(*, arch: str = "clip-tiny", units: str = "full", tasks: int = 11, top_k: int = 4,
                          batch_size: int = 32, batches: int = 3, device: str = "cpu") -> dict[str, float]:
    """Images per second of ConDU's task-aware and aggregated (top-K + pretrained) predictions.

    ``tasks`` random task models (random U, masks, prototypes), 10 classes; one warm-up pass (text
    features of every model cached), then ``batches`` timed batches of random images per route.
    """
    from strategies.condu.plugin import ConDUConfig, ConDUPlugin

    device = str(resolve_device(device))
    torch.manual_seed(0)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), device)
    model.eval()
    model.set_class_prompts([[f"a photo of a {name}."] for name in CLASS_NAMES])
    plugin = ConDUPlugin(model, ConDUConfig(top_k=top_k, inference="aggregated", cache_models=max(top_k, 1)))
    gen = torch.Generator(device=device).manual_seed(0)
    plugin.unified, plugin.triggers = _synthetic_condu_state(plugin.theta0, tasks, gen)
    dim = _embed_dim(model)
    plugin.prototypes = [torch.nn.functional.normalize(torch.randn(len(CLASS_NAMES), dim), dim=-1)
                         for _ in range(tasks)]
    size = image_size(model)
    images = torch.randn(batch_size, 3, size, size, device=device)
    routes = {"task-aware": lambda: plugin.logits(model, 0, images),
              "aggregated": lambda: plugin.predict(model, images, experience=-1)}
    out = {}
    for name, route in routes.items():
        route()  # warm-up: text features, model cache
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            route()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        out[name] = batches * batch_size / (time.perf_counter() - start)
    return out


def bench_condu(*, arch: str = "clip-tiny", units: str = "full", tasks: int = 11, device: str = "auto",
                top_k: int = 4, batch_size: int = 32, classes_per_task: int = 100,
                chunk_bytes: int | None = None, isolate: bool | None = None) -> str:
    """ConDU fusion per session (unify / decouple time and extra peak memory), eval throughput, storage.

    Memory: CUDA — ``max_memory_allocated`` − allocated before, in this process; CPU — ``ru_maxrss``
    − RSS before, one fresh process per session (``isolate``, default on CPU) with the high-water
    mark reset right before each measurement (``/proc/self/clear_refs``).
    """
    device = str(resolve_device(device))
    cuda = torch.device(device).type == "cuda"
    isolate = (not cuda) if isolate is None else isolate
    kw = {"arch": arch, "units": units, "device": device, "chunk_bytes": chunk_bytes}
    sessions = [(_condu_session_in_subprocess if isolate else measure_condu_session)(t, **kw)
                for t in range(1, tasks + 1)]
    copy = sessions[0].copy_bytes
    how = ("torch.cuda.max_memory_allocated() − memory allocated before, in one process" if cuda else
           "ru_maxrss − RSS before, " + ("a fresh process per session" if isolate else "one process (not isolated)")
           + ("" if all(s.peak_reset for s in sessions) else "; RSS high-water mark NOT reset: peaks overstated"))
    where = f"{device} ({torch.cuda.get_device_name(torch.device(device))})" if cuda else device
    lines = [f"ConDU fusion: arch {arch}, units {units}, {tasks} tasks, device {where}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads. One model copy = the fp32 trainable tensors "
             f"({copy / MIB:.2f} MiB). Extra memory: {how}.", "",
             "| session t | unify (ms) | unify extra peak (MiB) | ÷ model copy | decouple one task (ms) "
             "| decouple extra peak (MiB) | ÷ model copy |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sessions:
        lines.append(f"| {s.session} | {s.unify_ms:.1f} | {s.unify_extra_bytes / MIB:.2f} | "
                     f"{s.unify_extra_bytes / copy:.2f} | {s.decouple_ms:.1f} | {s.decouple_extra_bytes / MIB:.2f} | "
                     f"{s.decouple_extra_bytes / copy:.2f} |")
    lines.append(f"\nunify total over {tasks} sessions: {sum(s.unify_ms for s in sessions) / 1000:.2f} s")
    speed = condu_eval_throughput(arch=arch, units=units, tasks=tasks, top_k=top_k, batch_size=batch_size,
                                  device=device)
    lines += ["", f"Evaluation throughput, batch {batch_size}, K = {top_k} of {tasks} tasks "
              f"(ideal ratio 1/(K+1) = {1 / (top_k + 1):.2f}):", "",
              "| prediction | images/s | ÷ task-aware |", "|---|---:|---:|"]
    for name, value in speed.items():
        lines.append(f"| {name} | {value:.1f} | {value / speed['task-aware']:.2f} |")
    lines += ["", condu_storage(arch, units, classes_per_task, tasks)]
    return "\n".join(lines)
