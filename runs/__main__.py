"""Command line: ``python -m runs {run,validate,report,data} ...``.

Exit codes: 0 success, 2 invalid suite / missing dataset / unavailable weights (one message, no stack
trace); ``data check`` exits 1 when something is missing or corrupt.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (skips finished runs, resumes interrupted ones)")
    run.add_argument("suite", help="suite YAML file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a run field for every run, e.g. --set train.epochs=2 (repeatable)")
    run.add_argument("--only", action="append", default=None, metavar="NAME", help="run only these run names")
    run.add_argument("--online", action="store_true", help="log to W&B online (default: the suite's mode)")
    validate = sub.add_parser("validate", help="check a suite file without running it")
    validate.add_argument("suite")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    report = sub.add_parser("report", help="rebuild the suite table and plots from its run folders")
    report.add_argument("suite_dir", help="e.g. outputs/smoke")
    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="report what is present, missing or corrupt for a stream")
    check.add_argument("stream", help="stream name, e.g. split_tinyimagenet")
    check.add_argument("--data-root", default="data", help="folder holding the datasets (default: data)")
    bench = sub.add_parser("bench", help="speed/memory benchmarks (they print figures)")
    bench.add_argument("what", choices=["mozo", "condu-storage"], help="which benchmark")
    bench.add_argument("--arch", default="clip-tiny", help="open_clip model name (weights are not needed)")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--units", default=None, choices=["moe", "lora", "adapter", "full"],
                       help="units (default: moe for mozo, full for condu-storage)")
    bench.add_argument("--classes-per-task", type=int, default=100, help="condu-storage: prototypes per task")
    bench.add_argument("--tasks", type=int, default=11, help="condu-storage: number of tasks")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_suite
    from .report import format_table
    from .runner import run_suite

    suite = load_suite(args.suite, args.overrides)
    records = run_suite(suite, online=args.online, only=args.only)
    print(format_table(records))
    print(f"\nresults: {Path(suite.output_dir) / suite.name}/results.md (.csv, plots)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_suite

    suite = load_suite(args.suite, args.overrides)
    n = sum(len(r.seeds) for r in suite.runs)
    print(f"{args.suite}: valid suite '{suite.name}': {len(suite.runs)} runs, {n} with seeds")
    for run in suite.runs:
        print(f"  {run.name}: {run.method.name} on {run.stream.name}, model {run.model.arch}/"
              f"{run.model.pretrained} ({run.model.units.kind} units), seeds {run.seeds}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import format_table, load_run_records, write_results

    records = load_run_records(Path(args.suite_dir))
    paths = write_results(records, Path(args.suite_dir))
    print(format_table(records))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from benchmarks.data_check import check_stream, format_report

    try:
        lines = check_stream(args.stream, args.data_root)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(lines))
    return 0 if all(line.status in ("present", "incomplete") for line in lines) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "condu-storage":
        from .bench import condu_storage

        print(condu_storage(arch=args.arch, units=args.units or "full", classes_per_task=args.classes_per_task,
                            tasks=args.tasks))
        return 0
    from .bench import bench_mozo

    print(bench_mozo(arch=args.arch, batch_size=args.batch_size, steps=args.steps, device=args.device,
                     units=args.units or "moe"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # our packages speak at INFO; third-party libraries (open_clip logs to the root logger) at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("runs", "strategies", "benchmarks"):
        logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("WANDB_SILENT", "true")
    from benchmarks import DatasetMissingError
    from strategies.clip import WeightsUnavailableError

    from .config import ConfigError

    commands = {"run": _cmd_run, "validate": _cmd_validate, "report": _cmd_report, "data": _cmd_data,
                "bench": _cmd_bench}
    try:
        return commands[args.command](args)
    except (ConfigError, DatasetMissingError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
