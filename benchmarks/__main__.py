"""Command-line runner: ``python -m benchmarks [--quick] [--only NAME ...] [--report-only]``."""

import argparse
import importlib
import json
import sys
import time
import traceback

from . import BENCHMARKS
from ._report import (
    COMBINED_JSON,
    COMBINED_MARKDOWN,
    RESULTS_DIR,
    load_records,
    machine_info,
    python_command,
    to_json,
    to_markdown,
    write_record,
)


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run skicon's benchmarks and write JSON and Markdown tables to "
        "benchmarks/results.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller data and fewer iterations: a smoke test of the benchmark code, "
        "not figures to quote",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable); one of {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: only regenerate the combined results.md and results.json from "
        "the JSON files already in benchmarks/results",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own choice)",
    )
    return parser.parse_args(argv)


def _run_one(name, quick, command):
    """Import and run one benchmark; return its record (with an error if it failed)."""
    print(f"== benchmark {name}{' (quick)' if quick else ''}", flush=True)
    start = time.perf_counter()
    record = {"name": name, "command": command, "quick": quick}
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        result = module.run(quick=quick)
        if not isinstance(result, dict):
            raise TypeError(f"bench_{name}.run() returned {type(result).__name__}, not dict")
        record["result"] = result
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        record["result"] = {}
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["wall_time_s"] = time.perf_counter() - start
    record["machine"] = machine_info()
    return record


def _write_combined():
    """Regenerate the combined Markdown and JSON tables from every result file."""
    records = load_records()
    markdown = RESULTS_DIR / COMBINED_MARKDOWN
    markdown.write_text(to_markdown(records), encoding="utf-8")
    print(f"   wrote {markdown}")
    combined = RESULTS_DIR / COMBINED_JSON
    combined.write_text(json.dumps(to_json(records), indent=2, default=str) + "\n",
                        encoding="utf-8")
    print(f"   wrote {combined}")


def main(argv=None):
    """Run the selected benchmarks and write their tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 when every selected benchmark ran, 1 otherwise.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse_args(argv)
    if args.report_only:
        _write_combined()
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    command = python_command(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        record = _run_one(name, args.quick, command)
        path = write_record(record)
        print(f"   wrote {path} ({record['wall_time_s']:.0f} s)", flush=True)
        if "error" in record:
            failed.append(name)
    _write_combined()
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
