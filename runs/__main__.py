"""Command line: python -m runs {run,validate,status,report,share,list,data,bench,study} ...

Exit codes (every command):
  0    everything asked for finished
  1    something ran and at least one run failed, or work began and a later
       environment step failed (e.g. publishing needs a login); data check: data missing
  2    bad input or refused before any work: nothing ran, nothing was written
       (invalid suite or --set, unknown --only name, changed config without
       --rerun-changed, device / data / weights unavailable)
  130  interrupted (Ctrl-C or SIGTERM); the last checkpoint is kept and the next
       run resumes it
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("runs")
# Each command imports its modules when it runs: `--help`, `list`, `status`, `validate` and `data` skip the driver
# (W&B, the run session: +2.9 s measured with -X importtime on the 2-core machine).


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="also print Avalanche's metric dump")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a suite (skips finished runs, resumes interrupted ones)")
    run.add_argument("suite", help="suite YAML file")
    _suite_options(run)
    run.add_argument("--online", action="store_true", help="log to W&B online (default: the suite's mode)")
    run.add_argument("--rerun-changed", action="store_true",
                     help="move folders of runs whose config changed to <suite>/.superseded/ and run them again")
    run.add_argument("--rerun-failed", action="store_true", help="restart failed runs from scratch")
    run.add_argument("--fail-fast", action="store_true", help="stop the suite at the first failed run")
    _executor_options(run)
    validate = sub.add_parser("validate", help="check a suite file without running it")
    validate.add_argument("suite")
    _suite_options(validate)
    report = sub.add_parser("report", help="rebuild the suite table and plots from its run folders")
    report.add_argument("suite_dir", help="a suite's output folder (e.g. outputs/smoke) or its YAML file")
    report.add_argument("--cost", action="store_true",
                        help="print only the cost table (trainable parameters, storage, memory, time; docs/metrics.md)")
    share = sub.add_parser("share", help="publish the suite as a W&B Report (writes report.json; --dry-run: offline)")
    share.add_argument("suite", help="a suite's output folder (e.g. outputs/smoke) or its YAML file")
    share.add_argument("--entity", default=None, help="W&B entity (default: the suite's, else the login's)")
    share.add_argument("--project", default=None, help="W&B project (default: the suite's, else clip-cl)")
    share.add_argument("--dry-run", action="store_true", help="build the Report offline and write its outline only")
    listing = sub.add_parser("list", help="methods, streams and unit kinds with their options and defaults")
    listing.add_argument("what", nargs="?", choices=("options", "references"), default="options",
                         help="options (default): methods, streams, units and run options; references: the "
                              "published rows a run can name in `reference:`, with their sources")
    listing.add_argument("--markdown", action="store_true",
                         help="print the option reference page instead (docs/reference/options.md)")
    status = sub.add_parser("status", help="finished / running / failed / pending / changed per run of a suite")
    status.add_argument("suite", help="the suite YAML (knows pending runs) or its output folder")
    _suite_options(status)
    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="per dataset of a stream: complete, subset, missing or corrupt")
    download = data_sub.add_parser("download", help="fetch a stream's datasets where torchvision can; print "
                                                    "source and layout of the others")
    from .data_command import add_arguments

    add_arguments(check)
    add_arguments(download)
    bench = sub.add_parser("bench", help="speed/memory benchmarks of the shipped path (they print figures)")
    bench.add_argument("what", choices=["mozo", "condu", "condu-storage", *DEPRECATED_BENCHES],
                       help="which benchmark (mozo-align, zo-precision: deprecated names of `study ...`)")
    _measure_options(bench)
    bench.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    bench.add_argument("--classes-per-task", type=int, default=100, help="condu-storage: prototypes per task")
    bench.add_argument("--tasks", type=int, default=11, help="condu / condu-storage: number of tasks")
    bench.add_argument("--repeats", type=int, default=1, help="mozo: runs per configuration (median reported)")
    bench.add_argument("--grad-checkpointing", action="store_true",
                       help="mozo: also measure every training configuration with gradient checkpointing")
    bench.add_argument("--compile", action="store_true",
                       help="mozo: also measure every configuration with both towers torch.compile'd")
    _study_options(bench)
    study = sub.add_parser("study", help="fidelity studies: MoZO update alignment, ZO probes under low precision")
    study.add_argument("what", choices=["align", "zo-precision"], help="which study (runs/studies/)")
    _measure_options(study)
    _study_options(study)
    return parser


DEPRECATED_BENCHES = {"mozo-align": "align", "zo-precision": "zo-precision"}  # old bench name -> study


def _measure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="clip-tiny", help="open_clip model name (weights are not needed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--units", default=None, choices=["moe", "lora", "adapter", "full"],
                        help="units (default: full for condu / condu-storage, else moe)")


def _study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directions", type=int, default=50, help="align / zo-precision: directions (per seed)")
    parser.add_argument("--seeds", type=int, default=5, help="align: seeds (model, minibatch)")
    parser.add_argument("--ratios", default="1,0.5,0.1", help="align: eps_vision/eps_language values")
    parser.add_argument("--settings", default=None,
                        help="zo-precision: comma-separated probe settings (default: all)")


def _suite_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[RUN:]KEY=VALUE",
                        help="override a field: train.epochs=2 (every selected run that has it), "
                             "lwf:method.alpha=2 (one run), suite.wandb.project=p (suite level); repeatable")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="only these runs (repeatable); --set applies to them only")
    parser.add_argument("--output-dir", default=None, help="the suite's output folder root (default: its output_dir)")


def _executor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scaling out (docs/scaling.md)")
    group.add_argument("--executor", default="serial", metavar="serial|local|ray|slurm",
                       help="where the runs execute (default: serial, in this process)")
    group.add_argument("--workers", type=int, default=None, help="local: runs at once (default: GPUs, else 1)")
    group.add_argument("--share-gpus", action="store_true", help="local: allow more workers than GPUs")
    group.add_argument("--address", default=None, help="ray: cluster address (auto, host:port); none: local Ray")
    group.add_argument("--retries", type=int, default=1,
                       help="times a job whose process died is started again; it resumes (default 1)")
    group.add_argument("--no-wait", action="store_true", help="ray/slurm: submit and return")
    group.add_argument("--gpus-per-run", type=float, default=None, help="ray/slurm: GPUs per run")
    group.add_argument("--cpus-per-run", type=int, default=None, help="ray/slurm: CPUs per run (torch threads)")
    for flag, what in (("partition", "partition"), ("time", "wall time per task, [D-]HH:MM:SS"),
                       ("mem", "memory per task, e.g. 32G"), ("account", "account")):
        group.add_argument(f"--{flag}", default=None, help=f"slurm: {what} (default: the suite's launcher:)")


def _options(args: argparse.Namespace) -> Any:
    from .executors import ExecutorOptions, check_options

    options = ExecutorOptions(
        executor=args.executor, workers=args.workers, share_gpus=args.share_gpus, address=args.address,
        retries=args.retries, wait=not args.no_wait, gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        slurm={"partition": args.partition, "time": args.time, "mem": args.mem, "account": args.account})
    check_options(options)
    return options


def _load(args: argparse.Namespace) -> Any:
    from .config import load_suite

    return load_suite(args.suite, args.overrides, only=args.only, output_dir=args.output_dir)


def _cmd_run(args: argparse.Namespace) -> int:
    from .driver import run_suite  # late, as every command's imports: `--help`, `status DIR` stay quick
    from .report import format_table

    options = _options(args)
    suite = _load(args)
    if args.online:
        from .wandb_logger import login_problem, reach_problem

        problem = login_problem() or reach_problem()  # a key but no network: once, not ~90 s per run
        if problem:
            from .config import ConfigError

            raise ConfigError(problem)  # exit 2, one line, before any work
    outcome = run_suite(suite, options, online=args.online, only=args.only, rerun_changed=args.rerun_changed,
                        rerun_failed=args.rerun_failed, fail_fast=args.fail_fast, verbose=args.verbose)
    if outcome.submitted:
        print(f"submitted; follow with: python -m runs status {args.suite}; "
              f"the table: python -m runs report {suite.dir}")
        return EXIT_OK
    for run_id in outcome.busy:
        print(f"skipped: {run_id}: another worker holds its lock (python -m runs status {args.suite})")
    if outcome.records:
        print(format_table(outcome.records, run_order=[r.name for r in suite.runs]))
        print(f"results: {suite.dir}/results.md (.csv, plots)")
    for run_id, reason in outcome.failed:
        print(f"failed: {reason}" if reason.startswith(run_id) else f"failed: {run_id}: {reason}", file=sys.stderr)
    return outcome.exit_code


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import main as status_main

    return status_main(args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .machine import check_machine

    suite = _load(args)
    n = sum(len(r.seeds) for r in suite.runs)
    print(f"{args.suite}: valid suite '{suite.name}': {len(suite.runs)} runs, {n} with seeds")
    for run in suite.runs:
        assert run.method is not None and run.stream is not None
        print(f"  {run.name}: {run.method.name} on {run.stream.name}, model {run.model.arch}/"
              f"{run.model.pretrained} ({run.model.units.kind} units), seeds {run.seeds}")
        for problem in check_machine(run):  # a login node may lack them: a warning, not an error
            print(f"  warning: {run.name}: on this machine: {problem}", file=sys.stderr)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from .costs import format_cost_table
    from .driver import report_suite
    from .report import format_table, resolve_suite_dir, summarize_runs

    suite_dir = resolve_suite_dir(args.suite_dir)
    damaged: list[str] = []  # named in a warning each, left out of the table: exit 1
    records, paths, order = report_suite(suite_dir, damaged)  # also the suite W&B run a --no-wait run left pending
    if not records:
        print(f"error: {suite_dir}: no finished or failed run folders", file=sys.stderr)
        return EXIT_BAD_INPUT
    cost = format_cost_table(summarize_runs(records, run_order=order))
    if args.cost:
        print(cost.strip() or "no run of this suite recorded its cost (runs written before costs were measured)")
        return EXIT_OK
    print(format_table(records, run_order=order) + cost)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return EXIT_FAILED if damaged else EXIT_OK


def _cmd_share(args: argparse.Namespace) -> int:
    from .share import main as share_main

    return share_main(args)


def _cmd_list(args: argparse.Namespace) -> int:
    from .listing import format_listing, format_markdown

    if args.what == "references":
        from .references import format_references

        print(format_references())
    elif args.markdown:
        print(format_markdown(), end="")  # the page as committed: `python -m runs list --markdown > PAGE`
    else:
        print(format_listing())
    return EXIT_OK


def _cmd_data(args: argparse.Namespace) -> int:
    from .data_command import check, download

    return check(args) if args.data_command == "check" else download(args)


def _cmd_study(args: argparse.Namespace) -> int:
    if args.what == "align":
        from .studies.align import main as align

        print(align(args))
        return EXIT_OK
    from .studies.zo_precision import zo_precision_table

    print(zo_precision_table(arch=args.arch, units=args.units or "moe", batch_size=args.batch_size,
                             n_directions=args.directions, device=args.device,
                             **({"settings": args.settings.split(",")} if args.settings else {})))
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what in DEPRECATED_BENCHES:
        study = DEPRECATED_BENCHES[args.what]
        print(f"note: `bench {args.what}` is deprecated: it is a fidelity study, `python -m runs study {study}`",
              file=sys.stderr)
        return _cmd_study(argparse.Namespace(**{**vars(args), "what": study}))
    if args.what == "condu":
        from .bench import bench_condu

        print(bench_condu(arch=args.arch, units=args.units or "full", tasks=args.tasks, device=args.device,
                          batch_size=args.batch_size, classes_per_task=args.classes_per_task))
        return EXIT_OK
    if args.what == "condu-storage":
        from .bench import condu_storage

        print(condu_storage(arch=args.arch, units=args.units or "full", classes_per_task=args.classes_per_task,
                            tasks=args.tasks))
        return EXIT_OK
    from .bench import bench_mozo

    print(bench_mozo(arch=args.arch, batch_size=args.batch_size, steps=args.steps, device=args.device,
                     units=args.units or "moe", repeats=args.repeats, grad_checkpointing=args.grad_checkpointing,
                     compile=args.compile))
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "report": _cmd_report, "data": _cmd_data,
            "bench": _cmd_bench, "study": _cmd_study, "share": _cmd_share, "list": _cmd_list, "status": _cmd_status}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _install_signals() -> None:
    """SIGTERM stops a run like Ctrl-C — except inside a submitit job, whose own handlers requeue it."""
    if "SUBMITIT_EXECUTOR" in os.environ:
        return
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread)
        pass


class _Console(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (so a replaced stream, e.g. under pytest, is never stale)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(verbose: bool) -> None:
    # our packages speak at INFO; third-party libraries (open_clip logs to the root logger) at WARNING
    root = logging.getLogger()
    if not any(isinstance(h, _Console) for h in root.handlers):
        from .console import QuietWarnings

        handler = _Console()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(QuietWarnings())  # Python warnings go to the run's log.txt only
        root.addHandler(handler)
    logging.captureWarnings(True)
    root.setLevel(logging.WARNING)
    for name in ("runs", "strategies", "benchmarks"):
        logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("WANDB_SILENT", "true")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    _configure_logging(args.verbose)
    _install_signals()
    from benchmarks import DatasetMissingError
    from strategies.clip import WeightsUnavailableError

    from .config import ConfigError
    from .io import OutputError
    from .report import RunFolderError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DatasetMissingError, WeightsUnavailableError, OutputError, RunFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
