"""Machine description and table rendering shared by the runner and the docs build.

A benchmark module's ``run(quick=False)`` returns a JSON-serialisable dict. The renderer
understands these keys (all optional):

``title``
    Heading of the section (defaults to the benchmark name).
``description``
    A paragraph of text put under the heading.
``tables``
    A list of tables. Each is a dict with ``title`` (optional), ``columns`` (list of
    column names, optional when rows are dicts) and ``rows`` (a list of lists, or a list
    of dicts keyed by column name). A dict with a ``rows`` key at the top level is a
    single table.
``notes``
    A string or a list of strings printed after the tables.

Anything else is kept in the JSON file; a result with no table at all is shown as a
two-column key/value table of its scalar entries.
"""

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COMBINED_MARKDOWN = "results.md"

_PACKAGES = (
    "skicon",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "pynndescent",
    "openTSNE",
    "umap-learn",
    "pytorch-metric-learning",
)


def _cpu_model():
    """CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit():
    """Short hash of the checked-out commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=RESULTS_DIR.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    """Describe the machine and software a benchmark ran on.

    Returns
    -------
    info : dict
        CPU model, logical cores, torch threads, CUDA availability, Python, platform,
        package versions, git commit and a UTC timestamp.
    """
    import torch

    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "git_commit": _git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


def _format_cell(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000 or value == int(value):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if value is None:
        return "n/a"
    return str(value)


def _normalise_table(table):
    """Return (title, columns, rows-as-lists-of-str) for one table dict."""
    rows = table.get("rows", [])
    columns = list(table.get("columns") or [])
    if rows and isinstance(rows[0], dict):
        if not columns:
            for row in rows:
                columns.extend(key for key in row if key not in columns)
        rows = [[row.get(col) for col in columns] for row in rows]
    cells = [[_format_cell(v) for v in row] for row in rows]
    return table.get("title"), [str(c) for c in columns], cells


def tables_of(result):
    """List the tables of one benchmark result as (title, columns, rows)."""
    if "tables" in result:
        return [_normalise_table(t) for t in result["tables"]]
    if "rows" in result:
        return [_normalise_table(result)]
    scalars = [
        [str(k), _format_cell(v)]
        for k, v in result.items()
        if isinstance(v, (int, float, str, bool)) and k not in ("title", "description")
    ]
    return [(None, ["quantity", "value"], scalars)] if scalars else []


def _notes_of(result):
    notes = result.get("notes") or []
    return [notes] if isinstance(notes, str) else list(notes)


def _machine_lines(machine):
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items() if v)
    lines = [
        f"CPU: {machine.get('cpu')} ({machine.get('logical_cores')} logical cores, "
        f"torch threads: {machine.get('torch_threads')}, CUDA: {machine.get('cuda') or 'none'})",
        f"Python {machine.get('python')} on {machine.get('platform')}",
        f"Packages: {packages}",
        f"Run at {machine.get('date_utc')} UTC, commit {machine.get('git_commit') or 'unknown'}",
    ]
    return lines


# -- Markdown ------------------------------------------------------------------------------


def _markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def to_markdown(records):
    """Render benchmark records (as written to JSON) as one Markdown document.

    Parameters
    ----------
    records : list of dict
        Each with keys ``name``, ``command``, ``machine``, ``wall_time_s`` and ``result``.

    Returns
    -------
    text : str
    """
    out = ["# skicon benchmarks", ""]
    for record in records:
        result = record.get("result") or {}
        out += [f"## {result.get('title', record['name'])}", ""]
        if result.get("description"):
            out += [result["description"], ""]
        if record.get("quick"):
            out += ["*Quick (smoke-sized) run: not figures to quote.*", ""]
        if record.get("error"):
            out += [f"**Failed:** `{record['error']}`", ""]
        for title, columns, rows in tables_of(result):
            if title:
                out += [f"### {title}", ""]
            out += _markdown_table(columns, rows) + [""]
        for note in _notes_of(result):
            out += [f"- {note}"]
        out += ["", "Machine:", ""]
        out += [f"- {line}" for line in _machine_lines(record.get("machine", {}))]
        out += [
            f"- Wall time: {record.get('wall_time_s', float('nan')):.0f} s",
            "",
            "Reproduce with:",
            "",
            "```",
            record.get("command", "python -m benchmarks"),
            "```",
            "",
        ]
    return "\n".join(out)


# -- reStructuredText (for the docs) -------------------------------------------------------


def _rst_escape(text):
    return str(text).replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")


def _rst_table(columns, rows):
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [columns] + rows:
        lines.append(f"   * - {_rst_escape(row[0]) if row else ''}")
        lines += [f"     - {_rst_escape(cell)}" for cell in row[1:]]
    return lines + [""]


def _rst_heading(text, char):
    return [text, char * len(text), ""]


def to_rst(records):
    """Render benchmark records as reStructuredText sections (used by the docs build).

    Parameters
    ----------
    records : list of dict
        As for :func:`to_markdown`.

    Returns
    -------
    text : str
    """
    if not records:
        return (
            "No benchmark results have been recorded yet. Run ``python -m benchmarks`` to "
            "create them.\n"
        )
    out = []
    for record in records:
        result = record.get("result") or {}
        out += _rst_heading(result.get("title", record["name"]), "-")
        if result.get("description"):
            out += [_rst_escape(result["description"]), ""]
        if record.get("quick"):
            out += ["*Quick (smoke-sized) run: not figures to quote.*", ""]
        if record.get("error"):
            out += [f"**This benchmark failed:** ``{record['error']}``", ""]
        for title, columns, rows in tables_of(result):
            if title:
                out += _rst_heading(title, "~")
            if columns and rows:
                out += _rst_table(columns, rows)
        for note in _notes_of(result):
            out += [f"* {_rst_escape(note)}"]
        out += ["", "**Machine**", ""]
        out += [f"* {_rst_escape(line)}" for line in _machine_lines(record.get("machine", {}))]
        out += [
            f"* Wall time: {record.get('wall_time_s', float('nan')):.0f} s",
            "",
            "Reproduce with:",
            "",
            ".. code-block:: bash",
            "",
            f"   {record.get('command', 'python -m benchmarks')}",
            "",
        ]
    return "\n".join(out)


def load_records(results_dir=RESULTS_DIR):
    """Read the runner's records (``*.json`` in ``results_dir``), one per benchmark name.

    JSON files that the runner did not write (no ``name`` and ``result`` keys, for example a
    benchmark script's own scratch output) are skipped. Files are keyed by their name without
    a ``_quick`` suffix (``clustering_ablation.json`` stays apart from ``clustering.json``);
    within a key a full run wins over a ``--quick`` one, then the most recent run wins.
    """
    best = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not (isinstance(record, dict) and "name" in record and "result" in record):
            continue
        rank = (not record.get("quick", False), record.get("machine", {}).get("date_utc", ""))
        name = path.stem.removesuffix("_quick")
        if name not in best or rank > best[name][0]:
            best[name] = (rank, record)
    return [best[name][1] for name in sorted(best)]


def python_command(argv):
    """The shell command that reproduces this run, as the user would type it."""
    return " ".join(["python -m benchmarks"] + list(argv))


def write_record(record, results_dir=RESULTS_DIR):
    """Write one benchmark record to ``<results_dir>/<name>.json``; return the path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{record['name']}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    return path


def _json_default(obj):
    """Convert numpy scalars and arrays that benchmark code may leave in its result."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


__all__ = [
    "COMBINED_MARKDOWN",
    "RESULTS_DIR",
    "load_records",
    "machine_info",
    "python_command",
    "tables_of",
    "to_markdown",
    "to_rst",
    "write_record",
]
