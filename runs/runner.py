"""Run a suite: for each run × seed build model, stream and strategy, train experience by
experience, evaluate the whole test stream after each (one row of the accuracy matrix), and write
the run folder; finish with the suite table.

Run folder ``<output_dir>/<suite>/<run>-seed<k>/`` (see :mod:`runs.folders` for its states):
``fingerprint.json``, ``config.yaml`` (resolved), ``provenance.json`` (one entry per session),
``log.txt`` (this project's log lines, Avalanche's metric dump and the traceback of a failure,
appended across resumes), ``checkpoint.pt`` while in progress, then ``matrix.csv`` +
``metrics.json`` (finished) or ``failed.json`` (failed), and ``wandb/``. Every file is written
atomically (:mod:`runs.io`).

Order of work in :func:`run_suite`: (1) decide every selected run's state from its folder and refuse
changed ones unless asked to re-run them, (2) check the machine facts of every run that will start
(device present, data and weights available), (3) only then run — so a refusal or a missing dataset
stops the suite before anything ran (exit 2). A run that raises is marked failed and the suite goes
on (``fail_fast`` stops it).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import random
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin

from benchmarks import STREAMS, CLIPBenchmark, StreamContext
from strategies.clip import build_clip, image_size
from strategies.clip.precision import check_compatible
from strategies.registry import METHODS
from strategies.training import GradScalerPlugin, LabelSpacePlugin, RecipePlugin, make_criterion, resolve_device

from . import checkpoint
from .config import ConfigError, RunConfig, SuiteConfig, to_plain
from .console import ProgressPlugin
from .fingerprint import fingerprint, fingerprinted, machine_facts, provenance, resolve_precision
from .folders import FolderState, RunFolder, quarantine, read_json
from .guards import FiniteGuard
from .io import atomic_write_text, ensure_dir
from .metrics import seen_accuracy_per_step, summarize
from .report import load_run_records, write_results
from .wandb_logger import WandBLogger

log = logging.getLogger(__name__)
_EXP_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")
_OUR_LOGGERS = ("runs", "strategies", "benchmarks")


class RefusedError(ConfigError):
    """Runs whose folders hold results of another config (exit 2, nothing ran)."""


class MachineError(ConfigError):
    """A run cannot start on this machine: device absent, data or weights unavailable (exit 2)."""


class RunFailed(RuntimeError):
    """The run raised; ``failed.json`` and ``log.txt`` in its folder say why."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir(suite: SuiteConfig, run: RunConfig, seed: int) -> Path:
    return suite.dir / f"{run.name}-seed{seed}"


def run_config(run: RunConfig, seed: int) -> dict[str, Any]:
    """The declared resolved config of one (run, seed) as plain data (what ``config.yaml`` holds)."""
    return to_plain(run) | {"seed": seed}


def build_benchmark(run: RunConfig, preprocess_train: Any, preprocess_eval: Any, size: int) -> CLIPBenchmark:
    assert run.stream is not None
    build = STREAMS[run.stream.name].build
    ctx = StreamContext(
        data_root=run.data_root, train_transform=preprocess_train if run.train.augment else preprocess_eval,
        eval_transform=preprocess_eval, image_size=size, download=run.download,
    )
    return build(run.stream.cfg, ctx)


def accuracy_row(results: dict[str, Any], n_experiences: int) -> list[float]:
    """Per-experience top-1 accuracy from the metrics ``strategy.eval`` returns."""
    row = [float("nan")] * n_experiences
    for key, value in results.items():
        match = _EXP_KEY.match(key)
        if match:
            row[int(match.group(1))] = float(value)
    return row


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunSession:
    """One run × seed: builds everything, trains with checkpoints, writes the run folder."""

    def __init__(self, suite: SuiteConfig, run: RunConfig, seed: int, online: bool = False,
                 verbose: bool = False, progress: bool = True) -> None:
        self.suite, self.run, self.seed = suite, run, seed
        self.out = run_dir(suite, run, seed)
        self.mode = "online" if online else suite.wandb.mode
        self.verbose = verbose
        self.progress = progress  # progress bars / 10 % lines (executors with several workers turn them off)
        self.run_id = f"{run.name}-seed{seed}"
        self.config = run_config(run, seed)
        self.fingerprint = fingerprint(self.config)
        self.experience, self.iteration = None, None
        self.wandb: WandBLogger | None = None

    # ---- building ------------------------------------------------------------------------------
    def build(self) -> None:
        assert self.run.method is not None and self.run.stream is not None
        set_seed(self.seed)
        run = self.run
        self.device = resolve_device(run.train.device)
        self.model, pre_train, pre_eval = build_clip(run.model, self.device)
        self._configure_model()
        self.benchmark = build_benchmark(run, pre_train, pre_eval, image_size(self.model))
        self.model.set_class_prompts(self.benchmark.class_prompts)
        spec = METHODS[run.method.name]
        label_space = spec.label_space if run.train.label_space == "auto" else run.train.label_space
        meta = getattr(self, "meta", None) or {}
        self.wandb = WandBLogger(
            project=self.suite.wandb.project, entity=self.suite.wandb.entity,
            group=self.suite.wandb.group or self.suite.name, name=self.run_id,
            tags=list(dict.fromkeys([*self.suite.wandb.tags, run.method.name, run.stream.name])),
            config=self.config | {"suite": self.suite.name, "fingerprint": self.fingerprint,
                                  "provenance": getattr(self, "provenance", {})},
            mode=self.mode, dir=self.out, run_id=meta.get("wandb_id"), resume=bool(meta.get("wandb_id")),
        )
        self.wandb.run.define_metric("results/experience")
        self.wandb.run.define_metric("results/*", step_metric="results/experience")
        self._log_stream = (self.out / "log.txt").open("a", encoding="utf-8")
        loggers = [TextLogger(self._log_stream), self.wandb] + ([InteractiveLogger()] if self.verbose else [])
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True, experience=True),
            loggers=loggers,
        )
        plugins = [
            LabelSpacePlugin(self.benchmark, label_space, run.eval.task_aware),
            RecipePlugin(run.train, self.benchmark.experience_names),
            FiniteGuard(self.run_id),
            *([ProgressPlugin(self.run_id, self.benchmark.n_experiences)] if self.progress else []),
        ]
        self.strategy = spec.build(
            self.model, run.method.cfg, train=run.train, plugins=plugins, evaluator=evaluator,
            device=self.device, criterion=make_criterion(run.train),
            benchmark=self.benchmark, seed=self.seed, task_aware=run.eval.task_aware,
        )
        if self.precision == "fp16" and spec.trains:
            # last: it scales the complete loss, after the method plugin the constructor appended
            self.strategy.plugins.append(GradScalerPlugin(self.device))
        checkpoint.check_checkpointable(self.strategy.plugins)
        self.ctx = checkpoint.Context(self.strategy, self.benchmark.scenario.train_stream)
        self.trains = spec.trains

    def _configure_model(self) -> None:
        """train.precision (resolved for this device, the machine fact), grad checkpointing, compile."""
        train = self.run.train
        self.precision = resolve_precision(train, self.device)
        try:
            self.model.set_precision(self.precision)
        except ValueError as error:
            raise MachineError(f"{self.run_id}: {error} (train.precision={train.precision!r} resolves to "
                               f"{self.precision} on {self.device.type})") from None
        if train.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if train.compile:
            self.model.compile_towers()

    def loader_options(self) -> dict[str, Any]:
        """DataLoader options of every train / eval call: ``train.num_workers`` workers, kept alive
        across the epochs of an experience; Avalanche pins memory on CUDA by itself."""
        workers = self.run.train.num_workers
        return {"num_workers": workers, "persistent_workers": workers > 0}

    def evaluate(self) -> list[float]:
        results = self.strategy.eval(self.benchmark.scenario.test_stream, **self.loader_options())
        row = accuracy_row(results, self.benchmark.n_experiences)
        if any(np.isnan(v) for v in row):
            raise RuntimeError(f"{self.run_id}: evaluation returned no accuracy for some test experiences")
        return row

    # ---- the folder ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder (with a fresh W&B id) or check that it belongs to this config."""
        folder = RunFolder(self.out)
        facts = machine_facts(self.run.train, resolve_device(self.run.train.device))
        state = folder.state(self.fingerprint, fingerprinted(self.config), facts)
        if state.status == "changed":
            raise RefusedError(f"{self.run_id}: its folder holds another config: {'; '.join(state.changes)} "
                               f"(re-run with --rerun-changed to move it aside)")
        if state.status in ("finished", "failed"):
            raise RefusedError(f"{self.run_id}: already {state.status} in {self.out}")
        self.meta = folder.meta() or folder.create(self.suite.name, self.run_id, self.fingerprint,
                                                   fingerprinted(self.config), facts)
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))

    def _record_session(self, **fields: Any) -> None:
        path = self.out / "provenance.json"
        sessions = []
        if path.exists():
            try:
                sessions = read_json(path).get("sessions", [])
            except (ValueError, AttributeError):
                quarantine(path)
        if fields.get("start"):
            sessions.append(dict(self.provenance))
        elif sessions:
            sessions[-1].update(fields)
        atomic_write_text(path, json.dumps({"sessions": sessions}, indent=2, default=str))

    def _attach_log(self) -> logging.Handler:
        handler = logging.FileHandler(self.out / "log.txt", mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        return handler

    # ---- running ---------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Train and evaluate every experience (resuming from a checkpoint); return the record.

        An exception marks the run failed (``failed.json``), closes the W&B run as failed, keeps the
        last checkpoint and raises :class:`RunFailed`. Ctrl-C / SIGTERM (``KeyboardInterrupt``) close
        the W&B run as failed and keep the checkpoint, without a failure mark: the next invocation
        resumes after the last finished experience.
        """
        self.prepare()
        self.provenance = provenance(resolve_device(self.run.train.device)) | {"start": _now()}
        started = time.time()
        self._record_session(start=self.provenance["start"])
        handler = self._attach_log()
        try:
            self.build()
            record = self._train_and_evaluate(started)
        except KeyboardInterrupt:
            handler.stream.write(f"{_now()} {self.run_id}: interrupted; the last checkpoint is kept\n")
            self._close(exit_code=1, status="interrupted")
            raise
        except Exception as error:
            reason = _one_line(error)
            self._mark_failed(reason, error)
            self._close(exit_code=1, status="failed")
            raise RunFailed(f"{self.run_id}: {reason} (log: {self.out / 'log.txt'})") from error
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        self._close(exit_code=0, status="finished")
        return record

    def _close(self, exit_code: int, status: str) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
        stream = getattr(self, "_log_stream", None)
        if stream is not None and not stream.closed:
            stream.close()
        self._record_session(end=_now(), status=status)

    def _mark_failed(self, reason: str, error: BaseException) -> None:
        text = "".join(traceback.format_exception(error))
        log.error("%s failed at experience %s, iteration %s:\n%s", self.run_id, self.experience, self.iteration, text)
        clock = getattr(getattr(self, "strategy", None), "clock", None)
        atomic_write_text(self.out / "failed.json", json.dumps({
            "status": "failed", "run_id": self.run_id, "name": self.run.name,
            "method": self.run.method.name if self.run.method else None,
            "stream": self.run.stream.name if self.run.stream else None, "seed": self.seed,
            "reason": reason, "error": type(error).__name__, "experience": self.experience,
            "iteration": None if clock is None else clock.train_exp_iterations,
            "log": str(self.out / "log.txt"), "fingerprint": self.fingerprint, "time": _now(),
            "pretrained": self.run.model.pretrained, "arch": self.run.model.arch,
        }, indent=2))

    def _resume_state(self, path: Path) -> dict[str, Any] | None:
        try:
            state = checkpoint.load(path)
        except checkpoint.CheckpointError as error:
            log.warning("%s; restarting %s from scratch", error, self.run_id)
            quarantine(path)
            return None
        current = self.provenance["git"]["commit"]
        if state is not None and state.get("commit") not in (None, current):
            log.warning("%s: resuming a checkpoint written by code %s with code %s", self.run_id,
                        state.get("commit"), current)
        return state

    def _train_and_evaluate(self, started: float) -> dict[str, Any]:
        ckpt_path = self.out / "checkpoint.pt"
        state = self._resume_state(ckpt_path)
        zero_shot, rows, start = None, [], 0
        if state is not None:
            self.model.load_state_dict(state["model"], strict=False)
            checkpoint.load_plugin_states(self.strategy.plugins, state["plugins"], self.ctx)
            checkpoint.set_rng_state(state["rng"])
            zero_shot, rows, start = state["zero_shot"], state["rows"], state["next_step"]
            log.info("%s: resuming at experience %d from %s", self.run_id, start, ckpt_path)
        elif self.run.eval.zero_shot_row:
            zero_shot = self.evaluate()
        train_stream = self.benchmark.scenario.train_stream
        n = self.benchmark.n_experiences
        for step in range(start, n):
            self.experience = step
            tic = time.time()
            self.strategy.train(train_stream[step], eval_streams=[], **self.loader_options())
            rows.append(self.evaluate())
            self._log_step(step, rows, time.time() - tic)
            self._save_checkpoint(ckpt_path, zero_shot, rows, step + 1)
        record = self._finish(zero_shot, rows, time.time() - started)
        ckpt_path.unlink(missing_ok=True)
        return record

    def _log_step(self, step: int, rows: list[list[float]], seconds: float) -> None:
        t = len(rows)
        sizes = [len(e.dataset) for e in self.benchmark.scenario.test_stream][:t]
        block = [row[:t] for row in rows]  # (t, t): the experiences trained so far
        seen = seen_accuracy_per_step(block, sizes if self.benchmark.protocol == "seen" else None)[-1]
        log.info("%s  exp %d/%d  acc_seen %.1f  (%.0f s)", self.run_id, step + 1, self.benchmark.n_experiences,
                 100 * seen, seconds)
        figures = {"results/experience": step + 1, "results/acc_seen": seen}
        if self.benchmark.protocol == "task" and self.benchmark.n_experiences > 1:
            figures["results/transfer"] = running_transfer(rows)
        if self.wandb is not None:
            self.wandb.run.log(figures)

    def _save_checkpoint(self, path: Path, zero_shot: list[float] | None, rows: list, next_step: int) -> None:
        checkpoint.save(path, {
            "model": checkpoint.model_state(self.model),
            "plugins": checkpoint.plugin_states(self.strategy.plugins, self.ctx), "rng": checkpoint.rng_state(),
            "zero_shot": zero_shot, "rows": rows, "next_step": next_step,
            "fingerprint": self.fingerprint, "commit": self.provenance["git"]["commit"],
        })

    def _finish(self, zero_shot: list[float] | None, rows: list[list[float]], wall: float) -> dict[str, Any]:
        assert self.run.method is not None and self.run.stream is not None and self.wandb is not None
        bench = self.benchmark
        sizes = [len(e.dataset) for e in bench.scenario.test_stream]
        matrix = np.asarray(rows)
        zs = None if zero_shot is None else np.asarray(zero_shot)
        metrics = summarize(matrix, sizes, bench.protocol, zero_shot_row=zs)
        buffer = io.StringIO()
        _write_matrix(buffer, rows, zero_shot, bench.experience_names)
        atomic_write_text(self.out / "matrix.csv", buffer.getvalue())
        record = {
            "status": "finished", "run_id": self.run_id, "name": self.run.name, "method": self.run.method.name,
            "stream": self.run.stream.name, "seed": self.seed, "protocol": bench.protocol,
            "pretrained": self.run.model.pretrained, "arch": self.run.model.arch,
            "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
            # per step: accuracy on the experiences trained so far (sample-weighted for class-incremental)
            "accuracy_per_step": seen_accuracy_per_step(rows, sizes if bench.protocol == "seen" else None),
            "experience_names": bench.experience_names, "test_sizes": sizes,
            "matrix": rows, "zero_shot_row": zero_shot, "wall_time_s": wall,
            "fingerprint": self.fingerprint, "wandb_id": self.wandb.run_id, "reference": self.run.reference,
            "provenance": self.provenance | {"end": _now()},
        }
        labels = [f"after {n}" for n in bench.experience_names]
        full = ([zero_shot] if zero_shot is not None else []) + rows
        self.wandb.log_accuracy_matrix(full, (["zero-shot"] if zero_shot is not None else []) + labels,
                                       bench.experience_names)
        self.wandb.log_summary({f"final/{k}": v for k, v in record["metrics"].items() if v is not None})
        atomic_write_text(self.out / "metrics.json", json.dumps(record, indent=2))
        return record


def running_transfer(rows: list[list[float]]) -> float:
    """MTIL Transfer from the rows so far: (1/(T-1)) sum_{k>=1} mean_{j<min(k, t)} A[j,k].

    With all T rows it is ``runs.metrics.transfer``; after t rows each column k only averages the
    rows already there (the zero-shot accuracy of dataset k before it is trained, so far).
    """
    a = np.asarray(rows)  # (t, T)
    t, n = a.shape
    return float(np.mean([a[: min(k, t), k].mean() for k in range(1, n)]))


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _write_matrix(handle: Any, rows: list[list[float]], zero_shot: list[float] | None, names: list[str]) -> None:
    writer = csv.writer(handle)
    writer.writerow(["after", *names])
    if zero_shot is not None:
        writer.writerow(["zero-shot", *zero_shot])
    for name, row in zip(names, rows, strict=False):
        writer.writerow([name, *row])


# ---- the suite --------------------------------------------------------------------------------------
@dataclass
class Planned:
    run: RunConfig
    seed: int
    state: FolderState
    action: str  # run | resume | skip-finished | skip-failed | rerun-failed | rerun-changed | refuse


@dataclass
class SuiteOutcome:
    """What a suite invocation did; ``exit_code`` follows the README's exit-code table."""

    records: list[dict[str, Any]] = field(default_factory=list)  # the suite table's records
    finished: list[str] = field(default_factory=list)  # run ids finished by this invocation
    skipped: list[str] = field(default_factory=list)  # finished earlier
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason with log path)
    busy: list[str] = field(default_factory=list)  # locked by a live worker of another invocation: skipped

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def plan(suite: SuiteConfig, only: list[str] | None = None, *, rerun_changed: bool = False,
         rerun_failed: bool = False, compare_machine: bool = True) -> list[Planned]:
    """Every selected (run, seed) with its folder state and what to do; refuses changed runs."""
    planned, refusals = [], []
    for run in (r for r in suite.runs if not only or r.name in only):
        for seed in run.seeds:
            config = run_config(run, seed)
            fp = fingerprint(config)
            facts = machine_facts(run.train, resolve_device(run.train.device)) if compare_machine else None
            state = RunFolder(run_dir(suite, run, seed)).state(fp, fingerprinted(config), facts)
            action = {"new": "run", "resumable": "resume", "finished": "skip-finished",
                      "failed": "rerun-failed" if rerun_failed else "skip-failed",
                      "changed": "rerun-changed" if rerun_changed else "refuse"}[state.status]
            if action == "refuse":
                refusals.append(f"{run.name}-seed{seed}: " + "; ".join(state.changes))
            planned.append(Planned(run, seed, state, action))
    if refusals:
        raise RefusedError(
            "these runs' folders hold results of another config (nothing ran): " + " | ".join(refusals)
            + ". Re-run them with --rerun-changed (the old folders move to .superseded/), give the changed "
              "run its own name, or use another --output-dir")
    return planned


def refuse_locked(suite: SuiteConfig, planned: list[Planned]) -> None:
    """--rerun-changed / --rerun-failed never move a folder a live worker holds (:mod:`runs.lock`)."""
    from .lock import live_holder

    held = [f"{p.run.name}-seed{p.seed} ({info.describe()})" for p in planned
            if p.action in ("rerun-failed", "rerun-changed")
            and (info := live_holder(suite.dir, f"{p.run.name}-seed{p.seed}")) is not None]
    if held:
        raise RefusedError(f"--rerun-changed / --rerun-failed: these runs are locked by a running worker "
                           f"(nothing ran): {', '.join(held)}; wait for it to end or stop it first")


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
    problems += _check_precision(run) + _check_data(run) + _check_weights(run)
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
    from benchmarks.data_check import check_stream

    assert run.stream is not None
    try:
        lines = check_stream(run.stream.name, run.data_root)
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


def _check_weights(run: RunConfig) -> list[str]:
    import os

    import open_clip

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
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = cfg.get("hf_hub", "")
    if not hub:
        return True  # URL-only weights: cannot tell without trying; the run reports a failed download
    from huggingface_hub import try_to_load_from_cache

    repo_id = hub.rstrip("/")
    return any(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str)
               for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))


def preflight(suite: SuiteConfig, planned: list[Planned]) -> None:
    """Machine facts of every run that will start; :class:`MachineError` listing all problems."""
    problems: list[str] = []
    checked: set[str] = set()
    for item in planned:
        if item.action not in ("run", "resume", "rerun-failed", "rerun-changed") or item.run.name in checked:
            continue
        checked.add(item.run.name)
        problems += [f"{item.run.name}: {p}" for p in check_machine(item.run)]
    if problems:
        raise MachineError("cannot start (nothing ran): " + " | ".join(problems))


def run_suite(suite: SuiteConfig, *, online: bool = False, only: list[str] | None = None,
              rerun_changed: bool = False, rerun_failed: bool = False, fail_fast: bool = False,
              verbose: bool = False) -> SuiteOutcome:
    """Run every selected (run, seed) not finished yet, then write the suite table.

    Refusals and machine problems raise before any work (:class:`RefusedError`,
    :class:`MachineError`); a failing run is marked and the others go on unless ``fail_fast``.
    """
    from .executors import collect
    from .executors.job import Job, run_job
    from .status import write_plan

    planned = plan(suite, only, rerun_changed=rerun_changed, rerun_failed=rerun_failed)
    refuse_locked(suite, planned)
    preflight(suite, planned)
    ensure_dir(suite.dir)
    write_plan(suite, only)  # for `python -m runs status <folder>`
    outcome = SuiteOutcome()
    for item in planned:
        run_id = f"{item.run.name}-seed{item.seed}"
        out = run_dir(suite, item.run, item.seed)
        if item.action == "skip-finished":
            log.info("%s: finished earlier with the same config, skipped", run_id)
            outcome.skipped.append(run_id)
            continue
        if item.action == "skip-failed":
            reason = (item.state.record or {}).get("reason", "?")
            outcome.failed.append((run_id, f"failed earlier: {reason} (log: {out / 'log.txt'}; "
                                           f"--rerun-failed restarts it)"))
            continue
        log.info("=== %s: %s on %s ===", run_id, item.run.method.name if item.run.method else "?",
                 item.run.stream.name if item.run.stream else "?")
        # under the run's lock; supersedes for --rerun-*; a run locked by a live worker is skipped
        result = run_job(Job(suite, item.run, item.seed, item.action, online=online, verbose=verbose, cwd="",
                             machine_checked=True))
        collect(outcome, [result])
        if result.status in ("failed", "refused"):
            log.error("%s", result.reason)
            if fail_fast:
                break
    outcome.records = suite_records(suite)
    if outcome.records:
        order = [r.name for r in suite.runs]
        write_results(outcome.records, suite.dir, suite=suite.name, run_order=order)
        mode = "online" if online else suite.wandb.mode
        if mode != "disabled" and (outcome.finished or outcome.failed):
            from .share import log_suite_run

            log_suite_run(suite.dir, outcome.records, dataclasses.asdict(suite.wandb), mode, suite=suite.name,
                          run_order=order)
    return outcome


def suite_records(suite: SuiteConfig) -> list[dict[str, Any]]:
    """The live records of the suite's (run, seed)s whose fingerprint matches the suite: each once."""
    wanted = {(f"{r.name}-seed{s}", fingerprint(run_config(r, s))) for r in suite.runs for s in r.seeds}
    order = {f"{r.name}-seed{s}": i for i, (r, s) in enumerate((r, s) for r in suite.runs for s in r.seeds)}
    records = [r for r in load_run_records(suite.dir) if (r.get("run_id"), r.get("fingerprint")) in wanted]
    return sorted(records, key=lambda r: order[r["run_id"]])


__all__ = ["MachineError", "RefusedError", "RunFailed", "RunSession", "SuiteOutcome", "plan", "run_suite"]
