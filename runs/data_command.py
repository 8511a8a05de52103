"""``python -m runs data {check,download} STREAM|SUITE.yaml [--data-root DIR] [--order O] [--datasets A,B]``.

A stream name checks / fetches that stream's datasets under ``--data-root`` (default ``data``); MTIL
follows ``--order`` and ``--datasets`` like the suite options ``stream.order`` / ``stream.datasets``.
A suite YAML does so for each of its runs' streams, with their options and ``data_root`` (unless
``--data-root`` is given). A relative data root is relative to the working directory, like
``output_dir``; both commands print the resolved folder. Exit codes: 0 every dataset usable
(complete or subset), 1 some missing or corrupt, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.data_check import check_stream, format_report, stream_datasets, thorough
from benchmarks.download import download_stream, format_downloads, usable

from .config import SuiteConfig, load_suite

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_ROOT = "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``data check`` and ``data download`` share."""
    parser.add_argument("stream", help="stream name (e.g. mtil, split_tinyimagenet) or a suite YAML")
    parser.add_argument("--data-root", default=None,
                        help=f"folder holding the datasets, relative to the working directory (default: "
                             f"{DEFAULT_ROOT}; for a suite, each run's data_root)")
    parser.add_argument("--order", default=None, help="mtil: I, II or comma-separated dataset names (default: I)")
    parser.add_argument("--datasets", default=None,
                        help="mtil: only these datasets of the order, comma-separated (e.g. EuroSAT,Caltech101)")


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def _stream_target(args: argparse.Namespace) -> tuple[str, Any, str]:
    """(stream, options, data root) of a stream name and the --order / --datasets flags."""
    cfg = None
    if args.order is not None or args.datasets is not None:
        if args.stream != "mtil":
            raise ValueError(f"--order / --datasets apply to the mtil stream only, not {args.stream!r}")
        from benchmarks.mtil import MTILConfig, check_mtil

        order = _names(args.order) or ["I"]
        cfg = MTILConfig(order=order[0] if order in (["I"], ["II"]) else order, datasets=_names(args.datasets))
        check_mtil(cfg)
    stream_datasets(args.stream, cfg)  # an unknown stream name: ValueError
    return args.stream, cfg, args.data_root or DEFAULT_ROOT


def _suite_of(args: argparse.Namespace) -> SuiteConfig | None:
    """The suite the argument names (a ``.yaml`` / ``.yml`` file), loaded once; None for a stream name."""
    return load_suite(args.stream) if args.stream.endswith((".yaml", ".yml")) else None


def targets(args: argparse.Namespace, suite: SuiteConfig | None) -> list[tuple[str, Any, str]]:
    """Distinct (stream, options, data root) to check: one for a stream name, one per distinct run of a suite."""
    if suite is None:
        return [_stream_target(args)]
    if args.order is not None or args.datasets is not None:
        raise ValueError("--order / --datasets apply to a stream name; a suite's runs give their own")
    found: dict[tuple[tuple[str, ...], str], tuple[str, Any, str]] = {}
    for run in suite.runs:
        assert run.stream is not None
        root = args.data_root or run.data_root
        key = (tuple(stream_datasets(run.stream.name, run.stream.cfg)), root)
        found.setdefault(key, (run.stream.name, run.stream.cfg, root))
    return list(found.values())


def method_data(suite: SuiteConfig | None) -> list[tuple[str, list[str]]]:
    """``(run name, problems)`` for every run of a suite whose method reads data of its own (e.g. ZSCL's
    reference images and captions): the method config's ``machine_problems(run)``, the check ``run`` makes
    before any work (``runs.machine``). Empty for a stream name (``suite`` None)."""
    if suite is None:
        return []
    found = []
    for run in suite.runs:
        problems = getattr(run.method.cfg if run.method else None, "machine_problems", None)
        if callable(problems):
            found.append((run.name, list(problems(run))))
    return found


def _title(stream: str, cfg: Any) -> str:
    names = [n.removeprefix("mtil/") for n in stream_datasets(stream, cfg)]
    return f"== stream {stream}: {', '.join(names)}"


def _targets_or_report(args: argparse.Namespace) -> tuple[SuiteConfig | None, list[tuple[str, Any, str]]] | None:
    """The suite (None for a stream name) and its :func:`targets`, or ``None`` after printing the bad input
    on one line."""
    try:
        suite = _suite_of(args)
        return suite, targets(args, suite)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def check(args: argparse.Namespace) -> int:
    loaded = _targets_or_report(args)
    if loaded is None:
        return EXIT_BAD_INPUT
    suite, found = loaded
    ok = True
    for stream, cfg, root in found:
        with thorough():  # every image's end read, a sample decoded, each bad file named
            lines = check_stream(stream, root, cfg)
        if len(found) > 1 or cfg is not None:
            print(_title(stream, cfg))
        print(format_report(lines, root))
        ok = ok and all(line.status in ("present", "incomplete") for line in lines)
    for run_name, problems in method_data(suite):
        print(f"== run {run_name}: the method's own data (method.reference)")
        print("\n".join(f"  missing  {problem}" for problem in problems) if problems else "  present")
        ok = ok and not problems
    return EXIT_OK if ok else EXIT_FAILED


def download(args: argparse.Namespace) -> int:
    loaded = _targets_or_report(args)
    if loaded is None:
        return EXIT_BAD_INPUT
    found = loaded[1]
    ok = True
    for stream, cfg, root in found:
        print(_title(stream, cfg))
        results = download_stream(stream, root, cfg)
        print(format_downloads(results, root))
        ok = ok and usable(results)
    return EXIT_OK if ok else EXIT_FAILED
