"""Run a suite: for each run × seed build model, stream and strategy, train experience by
experience, evaluate the whole test stream after each (one row of the accuracy matrix), and write
the run folder; finish with the suite table.

Run folder ``<output_dir>/<suite>/<run>-seed<k>/``: ``config.yaml`` (resolved), ``matrix.csv``,
``metrics.json`` (its presence marks the run finished: a re-run skips it), ``checkpoint.pt`` while
the run is in progress (an interrupted run resumes at the next experience), ``wandb/``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from benchmarks import STREAMS, CLIPBenchmark, StreamContext
from strategies.clip import build_clip, image_size
from strategies.registry import METHODS
from strategies.training import LabelSpacePlugin, RecipePlugin, make_criterion, resolve_device

from . import checkpoint
from .config import RunConfig, SuiteConfig, to_plain
from .metrics import seen_accuracy_per_step, summarize
from .report import load_run_records, write_results
from .wandb_logger import WandBLogger

log = logging.getLogger(__name__)
_EXP_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir(suite: SuiteConfig, run: RunConfig, seed: int) -> Path:
    return Path(suite.output_dir) / suite.name / f"{run.name}-seed{seed}"


def build_benchmark(run: RunConfig, preprocess_train: Any, preprocess_eval: Any, size: int) -> CLIPBenchmark:
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


class RunSession:
    """One run × seed: builds everything, trains with checkpoints, writes the run folder."""

    def __init__(self, suite: SuiteConfig, run: RunConfig, seed: int, online: bool = False) -> None:
        self.suite, self.run, self.seed = suite, run, seed
        self.out = run_dir(suite, run, seed)
        self.mode = "online" if online else suite.wandb.mode
        self.run_id = f"{run.name}-seed{seed}"

    def build(self) -> None:
        set_seed(self.seed)
        run = self.run
        self.device = resolve_device(run.train.device)
        self.model, pre_train, pre_eval = build_clip(run.model, self.device)
        self.benchmark = build_benchmark(run, pre_train, pre_eval, image_size(self.model))
        self.model.set_class_prompts(self.benchmark.class_prompts)
        spec = METHODS[run.method.name]
        label_space = spec.label_space if run.train.label_space == "auto" else run.train.label_space
        self.wandb = WandBLogger(
            project=self.suite.wandb.project, group=self.suite.wandb.group or self.suite.name,
            name=self.run_id, tags=[*self.suite.wandb.tags, run.method.name, run.stream.name],
            config=to_plain(run) | {"seed": self.seed, "suite": self.suite.name}, mode=self.mode,
            dir=self.out, run_id=_wandb_id(self.suite.name, self.run_id), resume=True,
        )
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True, experience=True),
            loggers=[InteractiveLogger(), self.wandb],
        )
        plugins = [
            LabelSpacePlugin(self.benchmark, label_space, run.eval.task_aware),
            RecipePlugin(run.train, self.benchmark.experience_names),
        ]
        self.strategy = spec.build(
            self.model, run.method.cfg, train=run.train, plugins=plugins, evaluator=evaluator,
            device=self.device, criterion=make_criterion(run.train),
            benchmark=self.benchmark, seed=self.seed, task_aware=run.eval.task_aware,
        )
        self.trains = spec.trains

    def evaluate(self) -> list[float]:
        results = self.strategy.eval(self.benchmark.scenario.test_stream)
        return accuracy_row(results, self.benchmark.n_experiences)

    def execute(self) -> dict[str, Any]:
        """Train and evaluate every experience (resuming from a checkpoint); return the record.

        An exception (Ctrl-C included) closes the W&B run as failed and leaves the last checkpoint,
        so the next invocation resumes after the last finished experience.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(to_plain(self.run) | {"seed": self.seed}))
        started = time.time()
        self.build()
        try:
            record = self._train_and_evaluate(started)
        except BaseException:
            self.wandb.finish(exit_code=1)
            raise
        return record

    def _train_and_evaluate(self, started: float) -> dict[str, Any]:
        ckpt_path = self.out / "checkpoint.pt"
        state = checkpoint.load(ckpt_path)
        zero_shot, rows, start = None, [], 0
        if state is not None:
            self.model.load_state_dict(state["model"], strict=False)
            checkpoint.load_plugin_states(self.strategy.plugins, state["plugins"])
            checkpoint.set_rng_state(state["rng"])
            zero_shot, rows, start = state["zero_shot"], state["rows"], state["next_step"]
            log.info("%s: resuming at experience %d from %s", self.run_id, start, ckpt_path)
        elif self.run.eval.zero_shot_row:
            zero_shot = self.evaluate()
        train_stream = self.benchmark.scenario.train_stream
        for step in range(start, self.benchmark.n_experiences):
            self.strategy.train(train_stream[step], eval_streams=[])
            rows.append(self.evaluate())
            self._save_checkpoint(ckpt_path, zero_shot, rows, step + 1)
        record = self._finish(zero_shot, rows, time.time() - started)
        ckpt_path.unlink(missing_ok=True)
        return record

    def _save_checkpoint(self, path: Path, zero_shot: list[float] | None, rows: list, next_step: int) -> None:
        plugins = checkpoint.plugin_states(self.strategy.plugins)
        if plugins is None:
            log.warning("%s: a plugin has no checkpointable state; an interrupted run restarts", self.run_id)
            return
        checkpoint.save(path, {
            "model": checkpoint.model_state(self.model), "plugins": plugins, "rng": checkpoint.rng_state(),
            "zero_shot": zero_shot, "rows": rows, "next_step": next_step,
        })

    def _finish(self, zero_shot: list[float] | None, rows: list[list[float]], wall: float) -> dict[str, Any]:
        bench = self.benchmark
        sizes = [len(e.dataset) for e in bench.scenario.test_stream]
        matrix = np.asarray(rows)
        zs = None if zero_shot is None else np.asarray(zero_shot)
        metrics = summarize(matrix, sizes, bench.protocol, zero_shot_row=zs)
        _write_matrix(self.out / "matrix.csv", rows, zero_shot, bench.experience_names)
        record = {
            "run_id": self.run_id, "name": self.run.name, "method": self.run.method.name,
            "stream": self.run.stream.name, "seed": self.seed, "protocol": bench.protocol,
            "pretrained": self.run.model.pretrained, "arch": self.run.model.arch,
            "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
            # per step: accuracy on the experiences trained so far (sample-weighted for class-incremental)
            "accuracy_per_step": seen_accuracy_per_step(rows, sizes if bench.protocol == "seen" else None),
            "experience_names": bench.experience_names, "test_sizes": sizes,
            "matrix": rows, "zero_shot_row": zero_shot, "wall_time_s": wall,
        }
        labels = [f"after {n}" for n in bench.experience_names]
        full = ([zero_shot] if zero_shot is not None else []) + rows
        self.wandb.log_accuracy_matrix(full, (["zero-shot"] if zero_shot is not None else []) + labels,
                                       bench.experience_names)
        self.wandb.log_summary({f"final/{k}": v for k, v in record["metrics"].items() if v is not None})
        (self.out / "metrics.json").write_text(json.dumps(record, indent=2))
        self.wandb.finish()
        return record


def _wandb_id(suite: str, run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{suite}-{run_id}")[:120]


def _write_matrix(path: Path, rows: list[list[float]], zero_shot: list[float] | None, names: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["after", *names])
        if zero_shot is not None:
            writer.writerow(["zero-shot", *zero_shot])
        for name, row in zip(names, rows, strict=False):
            writer.writerow([name, *row])


def run_suite(suite: SuiteConfig, *, online: bool = False, only: list[str] | None = None) -> list[dict]:
    """Run every (run, seed) not yet finished, then write and return the suite table's records."""
    selected = [r for r in suite.runs if not only or r.name in only]
    for run in selected:
        for seed in run.seeds:
            out = run_dir(suite, run, seed)
            if (out / "metrics.json").exists():
                log.info("%s-seed%d: finished earlier, skipped (delete %s to re-run)", run.name, seed, out)
                continue
            log.info("=== %s-seed%d: %s on %s ===", run.name, seed, run.method.name, run.stream.name)
            RunSession(suite, run, seed, online=online).execute()
    suite_dir = Path(suite.output_dir) / suite.name
    names = {r.name for r in suite.runs}
    records = [r for r in load_run_records(suite_dir) if r["name"] in names]
    write_results(records, suite_dir)
    return records
