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

A second layout is read as it is: the file that ``benchmarks/bench_embedding.py`` writes
itself (``python -m benchmarks.bench_embedding``), a dict with ``meta`` (run settings, Python,
platform, CPU count, date), ``rows`` (one dict per data set and method) and ``bars`` (per
data set, skicon against openTSNE and scikit-learn). :func:`load_records` turns such a file
into a record (machine and reproducing command from ``meta``), and the same result nested in a
runner record (``python -m benchmarks --only embedding``) renders the same way.
"""

import ast
import datetime
import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COMBINED_MARKDOWN = "results.md"
COMBINED_JSON = "results.json"
# the runner's benchmarks, in reading order (docs, combined Markdown); others follow by name
ORDER = ("embedding", "clustering", "contrastive")

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


# -- the layout written by bench_embedding.py ----------------------------------------------

_EMBEDDING_COLUMNS = (
    ("dataset", "data set"),
    ("n", "n"),
    ("d", "d"),
    ("method", "method"),
    ("wall_s", "wall time (s)"),
    ("peak_mib", "peak memory (MiB)"),
    ("knn_acc", "10-NN accuracy"),
    ("trustworthiness", "trustworthiness"),
)
_EMBEDDING_BAR_COLUMNS = (
    ("knn_minus_openTSNE", "10-NN acc. - openTSNE"),
    ("trust_minus_openTSNE", "trustworthiness - openTSNE"),
    ("time_vs_openTSNE", "time / openTSNE"),
    ("time_vs_sklearn", "time / sklearn"),
    ("passes", "bars met"),
)


def is_meta_rows_layout(result):
    """Whether ``result`` is in the ``meta`` / ``rows`` / ``bars`` layout of bench_embedding."""
    return (
        isinstance(result, dict)
        and isinstance(result.get("meta"), dict)
        and isinstance(result.get("rows"), list)
    )


def _format_fixed(value, digits):
    if digits is None or not isinstance(value, float) or value != value:
        return value
    return f"{value:.{digits}f}"


def _describe_from_docstring(name):
    """The description of ``bench_<name>.py`` in its own module docstring (so it cannot drift).

    The title line and the paragraphs after it, up to the sentence that says where results
    are written; None when the file or its docstring is missing.
    """
    path = Path(__file__).resolve().parent / f"bench_{name}.py"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError):
        return None
    if not doc:
        return None
    title, _, body = doc.partition("\n\n")
    body = body.split("\n\n")[0] if body else ""
    body = " ".join(body.split()).split(" Writes ")[0]
    text = " ".join(title.removeprefix("Benchmark:").split()).strip()
    return f"{text} {body}".strip()


def _meta_rows_result(result):
    """Rewrite a ``meta`` / ``rows`` / ``bars`` result into title, description, tables, notes."""
    meta = result["meta"]
    rows = []
    for row in result["rows"]:
        cells = [row.get(key) for key, _ in _EMBEDDING_COLUMNS]
        if "error" in row:
            cells[4] = f"error: {row['error']}"
        else:  # the precision the benchmark itself prints
            cells[4] = _format_fixed(cells[4], 2)
            cells[5] = _format_fixed(cells[5], 0)
            cells[6] = _format_fixed(cells[6], 4)
            cells[7] = _format_fixed(cells[7], 4)
        rows.append(cells)
    tables = [{"title": "Quality, time and memory",
               "columns": [label for _, label in _EMBEDDING_COLUMNS], "rows": rows}]
    bars = result.get("bars") or {}
    if bars:
        tables.append({
            "title": "skicon against openTSNE and scikit-learn (ratios from the same run)",
            "columns": ["data set"] + [label for _, label in _EMBEDDING_BAR_COLUMNS],
            "rows": [[name] + [_format_fixed(entry.get(key), digits) for (key, _), digits
                               in zip(_EMBEDDING_BAR_COLUMNS, (4, 4, 3, 3, None))]
                     for name, entry in bars.items()],
        })
    settings = ", ".join(f"{key}={meta[key]}" for key in ("perplexity", "n_jobs", "seed")
                         if key in meta)
    return {
        "title": result.get("title", "Embeddings (t-SNE)"),
        "description": result.get("description") or _describe_from_docstring("embedding"),
        "tables": tables,
        "notes": ([f"Settings: {settings}."] if settings else []) + (
            ["Bars met: whether skicon reaches the project's targets against openTSNE and "
             "scikit-learn on that data set, as checked by bars() in "
             "benchmarks/bench_embedding.py."] if bars else []) + list(
            [result["notes"]] if isinstance(result.get("notes"), str)
            else result.get("notes") or []),
    }


def meta_rows_record(name, result):
    """A runner-style record for a file that bench_embedding.py wrote itself.

    Parameters
    ----------
    name : str
        Benchmark name (the file name without ``.json`` and without a ``_quick`` suffix).
    result : dict
        The file's content (``meta``, ``rows``, ``bars``).

    Returns
    -------
    record : dict
        With ``name``, ``command``, ``quick``, ``machine`` and ``result``; the machine fields
        the file does not record are left out, and there is no total wall time.
    """
    meta = result["meta"]
    datasets = list(dict.fromkeys(r.get("dataset") for r in result["rows"]))
    methods = list(dict.fromkeys(r.get("method") for r in result["rows"]))
    command = [f"python -m benchmarks.bench_{name}"]
    if meta.get("quick"):
        command.append("--quick")
    if datasets:
        command.append("--datasets " + " ".join(map(str, datasets)))
    if methods:
        command.append("--methods " + " ".join(map(str, methods)))
    if meta.get("n_jobs"):
        command.append(f"--n-jobs {meta['n_jobs']}")
    date = str(meta.get("date", "")).removesuffix(" UTC")
    return {
        "name": name,
        "command": " ".join(command),
        "quick": bool(meta.get("quick", False)),
        "machine": {
            "logical_cores": meta.get("cpus"),
            "torch_threads": meta.get("n_jobs"),
            "python": meta.get("python"),
            "platform": meta.get("machine"),
            "date_utc": date[:16],
        },
        "result": result,
    }


def _canonical_result(result):
    """The result in the ``title`` / ``tables`` / ``notes`` layout the renderers read."""
    return _meta_rows_result(result) if is_meta_rows_layout(result) else result


def tables_of(result):
    """List the tables of one benchmark result as (title, columns, rows)."""
    result = _canonical_result(result)
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
    notes = _canonical_result(result).get("notes") or []
    return [notes] if isinstance(notes, str) else list(notes)


def _machine_lines(machine):
    """Lines describing the machine; fields a record does not hold read "not recorded"."""

    def get(key):
        value = machine.get(key)
        return "not recorded" if value is None else value

    packages = ", ".join(f"{k} {v}" for k, v in (machine.get("packages") or {}).items() if v)
    cuda = machine.get("cuda") or ("none" if "cuda" in machine else "not recorded")
    return [
        f"CPU: {get('cpu')} ({get('logical_cores')} logical cores, "
        f"torch threads: {get('torch_threads')}, CUDA: {cuda})",
        f"Python {get('python')} on {get('platform')}",
        f"Packages: {packages or 'not recorded'}",
        f"Run at {get('date_utc')} UTC, commit {machine.get('git_commit') or 'not recorded'}",
    ]


def _wall_time_line(record):
    seconds = record.get("wall_time_s")
    if seconds is None:
        return "Total wall time: not recorded"
    return f"Total wall time: {seconds:.0f} s"


def _title_of(record):
    return _canonical_result(record.get("result") or {}).get("title", record["name"])


def _description_of(record):
    return _canonical_result(record.get("result") or {}).get("description")


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
        out += [f"## {_title_of(record)}", ""]
        description = _description_of(record)  # read once: it may parse a module docstring
        if description:
            out += [description, ""]
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
            f"- {_wall_time_line(record)}",
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
    """Escape reStructuredText markup; Markdown code spans (`x`) become literals (``x``)."""
    parts = re.split(r"`([^`]+)`", str(text))
    for i, part in enumerate(parts):
        if i % 2:  # inside a code span
            parts[i] = f"``{part}``"
        else:
            parts[i] = part.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")
    return "".join(parts)


def _rst_table(columns, rows):
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [columns] + rows:
        lines.append(f"   * - {_rst_escape(row[0]) if row else ''}")
        lines += [f"     - {_rst_escape(cell)}" for cell in row[1:]]
    return lines + [""]


def _rst_heading(text, char):
    return [text, char * len(text), ""]


def to_rst(records, heading="-", subheading="~"):
    """Render benchmark records as reStructuredText sections (used by the docs build).

    Parameters
    ----------
    records : list of dict
        As for :func:`to_markdown`.
    heading, subheading : str, default="-" and "~"
        Underline characters of each benchmark's section and of its table titles.

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
        out += _rst_heading(_title_of(record), heading)
        description = _description_of(record)
        if description:
            out += [_rst_escape(description), ""]
        if record.get("quick"):
            out += ["*Quick (smoke-sized) run: not figures to quote.*", ""]
        if record.get("error"):
            out += [f"**This benchmark failed:** ``{record['error']}``", ""]
        for title, columns, rows in tables_of(result):
            if title:
                out += _rst_heading(title, subheading)
            if columns and rows:
                out += _rst_table(columns, rows)
        for note in _notes_of(result):
            out += [f"* {_rst_escape(note)}"]
        out += ["", "**Machine**", ""]
        out += [f"* {_rst_escape(line)}" for line in _machine_lines(record.get("machine", {}))]
        out += [
            f"* {_wall_time_line(record)}",
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

    A file that ``bench_embedding.py`` wrote itself (``meta``, ``rows`` and ``bars``, see
    the module docstring) is read as a record too. Other JSON files (no ``name`` and
    ``result`` keys, for example a benchmark script's scratch output or the combined
    ``results.json``) are skipped. Files are keyed by their name without a ``_quick`` suffix
    (``clustering_ablation.json`` stays apart from ``clustering.json``); within a key a full
    run wins over a ``--quick`` one, then the most recent run wins. Records come in the order
    of :data:`ORDER`, then by name.
    """
    best = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name == COMBINED_JSON:
            continue
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        name = path.stem.removesuffix("_quick")
        if is_meta_rows_layout(record):
            record = meta_rows_record(name, record)
        if not (isinstance(record, dict) and "name" in record and "result" in record):
            continue
        rank = (not record.get("quick", False), record.get("machine", {}).get("date_utc", ""))
        if name not in best or rank > best[name][0]:
            best[name] = (rank, record)

    def order(name):
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    return [best[name][1] for name in sorted(best, key=order)]


def to_json(records):
    """The combined tables of every benchmark, as a JSON-serialisable dict.

    Parameters
    ----------
    records : list of dict
        As returned by :func:`load_records`.

    Returns
    -------
    combined : dict
        ``{"benchmarks": [...]}``, one entry per record with its name, title, command,
        whether it was a quick run, total wall time, machine and rendered tables (columns and
        rows of strings, as in the Markdown) and notes. The raw results stay in the
        per-benchmark JSON files.
    """
    out = []
    for record in records:
        result = record.get("result") or {}
        entry = {
            "name": record["name"],
            "title": _title_of(record),
            "command": record.get("command"),
            "quick": bool(record.get("quick", False)),
            "wall_time_s": record.get("wall_time_s"),
            "machine": record.get("machine", {}),
            "tables": [{"title": title, "columns": columns, "rows": rows}
                       for title, columns, rows in tables_of(result)],
            "notes": _notes_of(result),
        }
        if record.get("error"):
            entry["error"] = record["error"]
        out.append(entry)
    return {"benchmarks": out}


def python_command(argv):
    """The shell command that reproduces this run, as the user would type it."""
    return " ".join(["python -m benchmarks"] + list(argv))


def write_record(record, results_dir=RESULTS_DIR):
    """Write one benchmark record to ``<results_dir>/<name>.json`` and return the path.

    A quick run goes to ``<name>_quick.json``, so that a smoke run never overwrites the
    figures of a full one.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if record.get("quick") else ""
    path = results_dir / f"{record['name']}{suffix}.json"
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
    "COMBINED_JSON",
    "COMBINED_MARKDOWN",
    "ORDER",
    "RESULTS_DIR",
    "is_meta_rows_layout",
    "load_records",
    "machine_info",
    "meta_rows_record",
    "python_command",
    "tables_of",
    "to_json",
    "to_markdown",
    "to_rst",
    "write_record",
]
