"""One run × seed: build model, stream and strategy, train experience by experience, evaluate the
whole test stream after each (one row of the accuracy matrix), and write the run folder.

Run folder ``<output_dir>/<suite>/<run>-seed<k>/`` (see :mod:`runs.folders` for its states):
``fingerprint.json``, ``config.yaml`` (resolved), ``provenance.json`` (one entry per session),
``log.txt`` (this project's log lines, Avalanche's metric dump and the traceback of a failure,
appended across resumes), ``checkpoint.pt`` while in progress, then ``matrix.csv`` +
``metrics.json`` (finished) or ``failed.json`` (failed), and ``wandb/``. Every file is written
atomically (:mod:`runs.io`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import random
import re
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin

from benchmarks import STREAMS, CLIPBenchmark, StreamContext
from benchmarks.data_check import data_summary
from strategies.clip import build_clip, image_size
from strategies.registry import METHODS
from strategies.training import GradScalerPlugin, LabelSpacePlugin, RecipePlugin, make_criterion, resolve_device

from . import checkpoint
from .config import RunConfig, SuiteConfig
from .console import ProgressPlugin
from .costs import CostPlugin, flat_cost, machine_of, previous_session_costs
from .errors import MachineError, RefusedError, RunFailed
from .fingerprint import machine_facts, provenance, resolve_precision
from .folders import RunFolder, quarantine, read_json, refuse_symlink
from .guards import FiniteGuard
from .io import LogFileHandler, atomic_write_text, full_disk, open_append
from .metrics import seen_accuracy_per_step, summarize
from .runkey import RunKey
from .wandb_logger import WandBLogger

log = logging.getLogger(__name__)
_EXP_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")
_OUR_LOGGERS = ("runs", "strategies", "benchmarks")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
                 verbose: bool = False, progress: bool = True, key: RunKey | None = None) -> None:
        self.suite, self.run, self.seed = suite, run, seed
        self.key = key if key is not None else RunKey.of(suite, run, seed)
        self.out = self.key.folder
        self.mode = "online" if online else suite.wandb.mode
        self.verbose = verbose
        self.progress = progress  # progress bars / 10 % lines (executors with several workers turn them off)
        self.run_id = self.key.id
        self.config = self.key.config
        self.fingerprint = self.key.fingerprint
        self.experience: int | None = None
        self.replaces: dict[str, Any] | None = None  # --rerun-changed: the superseded folder and the changes
        self.wandb: WandBLogger | None = None
        self._started = time.time()  # execute() restarts it; a bare build() (benches, tests) keeps this one

    # ---- building ------------------------------------------------------------------------------
    def build(self) -> None:
        assert self.run.method is not None and self.run.stream is not None
        set_seed(self.seed)
        run = self.run
        self.device = resolve_device(run.train.device)
        self.cost = CostPlugin(self.device)  # before the model: the CPU peak is taken above this level
        self.model, pre_train, pre_eval = build_clip(run.model, self.device)
        self._configure_model()
        self.benchmark = build_benchmark(run, pre_train, pre_eval, image_size(self.model))
        self.model.set_class_prompts(self.benchmark.class_prompts)
        assert run.method is not None and run.stream is not None  # parse_run sets both (else a config error)
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
        # line-buffered: a SIGKILL loses no finished line of the metric dump (a resume appends after it)
        self._log_stream = open_append(self.out / "log.txt")  # no symlink followed out of the folder
        loggers = [TextLogger(self._log_stream), self.wandb] + ([InteractiveLogger()] if self.verbose else [])
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True, experience=True),
            loggers=loggers,
        )
        plugins = [
            LabelSpacePlugin(self.benchmark, label_space, run.eval.task_aware),
            RecipePlugin(run.train, self.benchmark.experience_names, self.benchmark.omitted_experiences),
            FiniteGuard(self.run_id),
            *([ProgressPlugin(self.run_id, self.benchmark.n_experiences)] if self.progress else []),
        ]
        self.strategy = spec.build(
            self.model, run.method.cfg, train=run.train, plugins=plugins, evaluator=evaluator,
            device=self.device, criterion=make_criterion(run.train),
            benchmark=self.benchmark, seed=self.seed, task_aware=run.eval.task_aware,
            data_root=run.data_root, download=run.download,  # data a method reads besides the stream
        )
        # after the method's plugins: it sees their hooks done; their checkpoint keys stay
        self.strategy.plugins.append(self.cost)
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
        refuse_symlink(self.out)
        facts = machine_facts(self.run.train, resolve_device(self.run.train.device))
        state = self.key.state(facts)
        if state.status == "changed":
            raise RefusedError(f"{self.run_id}: its folder holds another config: {'; '.join(state.changes)} "
                               f"(re-run with --rerun-changed to move it aside)")
        if state.status in ("finished", "failed"):
            raise RefusedError(f"{self.run_id}: already {state.status} in {self.out}")
        self.meta = folder.meta() or folder.create(self.suite.name, self.run_id, self.fingerprint,
                                                   self.key.fingerprinted, facts)
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))

    def _record_session(self, **fields: Any) -> None:
        path = self.out / "provenance.json"
        sessions = []
        if path.exists():
            try:
                sessions = read_json(path).get("sessions", [])
                if not isinstance(sessions, list) or not all(isinstance(x, dict) for x in sessions):
                    raise ValueError(f"{path}: 'sessions' must be a list of objects")
            except (ValueError, AttributeError, OSError):
                sessions = []
                quarantine(path)
        if fields.get("start"):
            sessions.append(dict(self.provenance))
        elif sessions:
            sessions[-1].update(fields)
        atomic_write_text(path, json.dumps({"sessions": sessions}, indent=2, default=str))

    def _attach_log(self) -> logging.StreamHandler:
        handler = LogFileHandler(self.out / "log.txt")  # a full disk: one line, not one traceback per record
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        return handler

    def _record_data(self) -> None:
        """Provenance ``data``: the resolved data root and whether each dataset read (after any
        download) is complete or a subset (``benchmarks.data_check.data_summary``)."""
        assert self.run.stream is not None
        self.provenance["data"] = data_summary(self.run.stream.name, self.run.data_root, self.run.stream.cfg)
        self._record_session(data=self.provenance["data"])

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
        started = self._started = time.time()
        self._record_session(start=self.provenance["start"])
        handler = self._attach_log()
        try:
            self.build()
            self._record_data()
            record = self._train_and_evaluate(started)
        except KeyboardInterrupt:
            handler.stream.write(f"{_now()} {self.run_id}: interrupted; the last checkpoint is kept\n")
            self._close(exit_code=1, status="interrupted")
            raise
        except Exception as error:
            if (disk_error := full_disk(error)) is not None:  # not the run's fault: the last checkpoint resumes
                self._stop_on_full_disk()
                raise RunFailed(f"{self.run_id}: stopped: {_one_line(disk_error)}; not marked failed: the "
                                f"last checkpoint is kept and the same command resumes once space is freed") from None
            reason = _one_line(error)
            self._mark_failed(reason, error)
            self._close(exit_code=1, status="failed")
            raise RunFailed(f"{self.run_id}: {reason} (log: {self.out / 'log.txt'})") from error
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
            handler.stream.close()  # a StreamHandler leaves its stream open
        self._close(exit_code=0, status="finished")
        return record

    def _close(self, exit_code: int, status: str) -> None:
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
        stream = getattr(self, "_log_stream", None)
        if stream is not None and not stream.closed:
            stream.close()
        fields: dict[str, Any] = {"end": _now(), "status": status}
        cost = getattr(self, "cost", None)
        if cost is not None:  # this session's cost (docs/metrics.md#cost), kept per session
            cost.close()
            fields["cost"] = cost.session_cost(time.time() - self._started)
        self._record_session(**fields)

    def _stop_on_full_disk(self) -> None:
        """Close W&B and the log quietly (they cannot write either) and record the session if space allows."""
        if self.wandb is not None:  # its teardown on the full disk: the cause is told once, by the caller
            with contextlib.suppress(Exception):
                self.wandb.finish(exit_code=1)
            self.wandb = None
        with contextlib.suppress(Exception):
            self._close(exit_code=1, status="interrupted")

    def _mark_failed(self, reason: str, error: BaseException) -> None:
        # the traceback goes to log.txt only; the console gets the one line the executor prints
        # (docs/reliability.md); the error's own text names the iteration (runs.guards)
        text = "".join(traceback.format_exception(error))
        with (self.out / "log.txt").open("a", encoding="utf-8") as handle:
            handle.write(f"{_now()} ERROR {self.run_id} failed at experience {self.experience}:\n{text}\n")
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
            self._record_session(cost=self.cost.session_cost(time.time() - started))
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
        cost = self.cost.finish(self.strategy, self.model, self.cost.session_cost(wall, final=True),
                                previous_session_costs(self.out / "provenance.json"),
                                machine_of(self.device, self.precision))
        record = {
            "status": "finished", "run_id": self.run_id, "name": self.run.name, "method": self.run.method.name,
            "stream": self.run.stream.name, "seed": self.seed, "protocol": bench.protocol,
            "pretrained": self.run.model.pretrained, "arch": self.run.model.arch,
            "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
            # per step: accuracy on the experiences trained so far (sample-weighted for class-incremental)
            "accuracy_per_step": seen_accuracy_per_step(rows, sizes if bench.protocol == "seen" else None),
            "experience_names": bench.experience_names, "test_sizes": sizes,
            "matrix": rows, "zero_shot_row": zero_shot, "wall_time_s": cost["wall_time_s"], "cost": cost,
            "fingerprint": self.fingerprint, "wandb_id": self.wandb.run_id, "reference": self.run.reference,
            "provenance": self.provenance | {"end": _now()},
            **({"rerun_changed": self.replaces} if self.replaces else {}),
        }
        labels = [f"after {n}" for n in bench.experience_names]
        full = ([zero_shot] if zero_shot is not None else []) + rows
        self.wandb.log_accuracy_matrix(full, (["zero-shot"] if zero_shot is not None else []) + labels,
                                       bench.experience_names)
        self.wandb.log_summary({f"final/{k}": v for k, v in record["metrics"].items() if v is not None})
        self.wandb.log_summary({f"cost/{k}": v for k, v in flat_cost(cost).items() if v is not None})
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
    if len(text) > 1 and text[0].startswith("Caught ") and "DataLoader worker" in text[0]:
        text = text[-1:]  # the worker's own error (e.g. the image file that does not decode)
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _write_matrix(handle: Any, rows: list[list[float]], zero_shot: list[float] | None, names: list[str]) -> None:
    writer = csv.writer(handle)
    writer.writerow(["after", *names])
    if zero_shot is not None:
        writer.writerow(["zero-shot", *zero_shot])
    for name, row in zip(names, rows, strict=False):
        writer.writerow([name, *row])


__all__ = ["RunSession", "accuracy_row", "build_benchmark", "running_transfer", "set_seed"]
