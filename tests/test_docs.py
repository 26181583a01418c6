"""Checks that keep the documentation, README, CI script and benchmark tables honest.

The Sphinx build itself is not run here (it needs the ``docs`` extra and minutes of CPU); these
tests cover what can drift silently: the README's method table and test command, the
docstrings of public names, the benchmark report renderer and ``show_versions``.
"""

import ast
import importlib
import importlib.util
import inspect
import json
import re
import runpy
from pathlib import Path

import pytest

import skicon

ROOT = Path(__file__).resolve().parents[1]


def _load_docs_extension():
    spec = importlib.util.spec_from_file_location(
        "skicon_docs", ROOT / "docs" / "_ext" / "skicon_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docs_ext():
    return _load_docs_extension()


def _readme():
    return (ROOT / "README.rst").read_text(encoding="utf-8")


def test_readme_method_table_matches_registry(docs_ext):
    text = _readme()
    start = text.index(docs_ext.README_BEGIN) + len(docs_ext.README_BEGIN)
    block = text[start : text.index(docs_ext.README_END)].strip()
    expected = docs_ext.readme_method_table(docs_ext.method_rows())
    assert block == expected, (
        "README.rst's method table is out of date: run `python docs/_ext/skicon_docs.py`"
    )


def test_method_table_lists_every_registry_row(docs_ext):
    rows = docs_ext.method_rows()
    names = [row.name for row in skicon.list_methods()]
    assert [r["method"] for r in rows] == names
    assert len(names) >= 14
    rst = docs_ext.method_table_rst(rows)
    for name in names:
        assert f'"{name}"' in rst


def _readme_commands():
    """Literal blocks of the README's "On a fresh machine" section."""
    text = _readme()
    section = text[text.index("On a fresh machine") : text.index("A short example")]
    return [line.strip() for line in section.splitlines() if line.startswith("    pip install")]


def test_readme_has_exactly_two_fresh_machine_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    for command in commands:
        # CPU torch first, so that the package's torch requirement never pulls a CUDA build
        assert command.startswith("pip install torch==2.13.0 && pip install ")
    assert commands[0].endswith("python examples/quickstart.py")
    assert (ROOT / "examples" / "quickstart.py").is_file()


def test_ci_runs_the_readme_test_command():
    readme_test = _readme_commands()[1].split(" && ")[-1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [line.strip() for line in ci.splitlines()]
    assert readme_test in ci_commands
    assert "--doctest-modules" in readme_test
    assert 'python -m pip install torch==2.13.0' in ci_commands
    assert ci_commands.index('python -m pip install torch==2.13.0') < ci_commands.index(
        'python -m pip install -e ".[test]"'
    )


def _public_objects():
    """(qualified name, object) for every public name that the API reference documents."""
    docs_ext = _load_docs_extension()
    for module in docs_ext.public_modules():
        for name in docs_ext.public_names(module):
            yield f"{module.__name__}.{name}", getattr(module, name)


@pytest.mark.parametrize("qualname, obj", list(_public_objects()), ids=lambda v: v if
                         isinstance(v, str) else "")
def test_public_name_has_numpydoc_docstring(qualname, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{qualname} has no docstring"
    if inspect.isclass(obj) or inspect.isfunction(obj):
        # numpydoc: a summary line, then sections with dashed underlines
        assert doc.splitlines()[0].strip(), f"{qualname}: the docstring must start with a summary"
        has_params = bool(inspect.signature(obj).parameters) if inspect.isfunction(obj) else True
        if has_params and inspect.isfunction(obj):
            assert re.search(r"^Parameters\n-+$", doc, re.M), f"{qualname}: no Parameters section"


@pytest.mark.parametrize("qualname, obj", [(n, o) for n, o in _public_objects() if callable(o)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_public_callable_has_a_runnable_example(qualname, obj):
    # the examples run as doctests in CI (`--doctest-modules skicon`)
    doc = inspect.getdoc(obj) or ""
    assert re.search(r"^Examples\n-+$", doc, re.M) and ">>>" in doc, (
        f"{qualname}: add an Examples section with a short doctest"
    )


def test_show_versions_reports_dependencies(capsys):
    skicon.show_versions()
    out = capsys.readouterr().out
    for name in ("python", "skicon", "torch", "numpy", "scipy", "scikit-learn", "pynndescent",
                 "numba", "threadpoolctl", "joblib", "tqdm", "cuda available"):
        assert re.search(rf"^\s*{re.escape(name)}: \S", out, re.M), f"{name} missing:\n{out}"


def _fake_record(**extra):
    record = {
        "name": "embedding",
        "command": "python -m benchmarks --only embedding",
        "quick": False,
        "wall_time_s": 12.3,
        "machine": {"cpu": "Test CPU", "logical_cores": 2, "torch_threads": 2, "cuda": None,
                    "python": "3.11", "platform": "Linux", "packages": {"skicon": "0.1"},
                    "git_commit": "abc123", "date_utc": "2026-01-01 00:00"},
        "result": {
            "title": "Embeddings of digits",
            "tables": [{"title": "digits", "columns": ["method", "trust", "seconds"],
                        "rows": [["skicon", 0.987654, 3.0], ["sklearn", 0.91, 1234.5]]}],
            "notes": "one run",
        },
    }
    record.update(extra)
    return record


def test_benchmark_report_renders_tables_machine_and_command():
    report = importlib.import_module("benchmarks._report")
    record = _fake_record()
    md = report.to_markdown([record])
    assert "| method | trust | seconds |" in md
    assert "| skicon | 0.988 | 3 |" in md
    assert "| sklearn | 0.910 | 1,234 |" in md or "| sklearn | 0.910 | 1,235 |" in md
    assert "Test CPU" in md and "python -m benchmarks --only embedding" in md
    rst = report.to_rst([record])
    assert ".. list-table::" in rst and "0.988" in rst and "Test CPU" in rst


def test_benchmark_report_handles_row_dicts_and_failures(tmp_path):
    report = importlib.import_module("benchmarks._report")
    record = _fake_record(error="RuntimeError: boom", quick=True,
                          result={"rows": [{"method": "a", "acc": 0.5}, {"method": "b", "nmi": 1}]})
    path = report.write_record(record, tmp_path)
    (loaded,) = report.load_records(tmp_path)
    assert path.name == "embedding_quick.json" and loaded == record  # never over a full run
    md = report.to_markdown([loaded])
    assert "| method | acc | nmi |" in md and "| b | n/a | 1 |" in md
    assert "boom" in md and "Quick" in md
    (tmp_path / "scratch.json").write_text('{"rows": []}')  # not written by the runner
    assert report.load_records(tmp_path) == [loaded]
    full = _fake_record()  # a full run of the same benchmark wins over the quick one
    assert report.write_record(full, tmp_path).name == "embedding.json"
    assert report.load_records(tmp_path) == [full]
    (tmp_path / "embedding_ablation.json").write_text(json.dumps(full))  # kept apart
    assert len(report.load_records(tmp_path)) == 2


def _embedding_file(quick=False, date="2026-01-02 03:04:05 UTC"):
    """A result in the layout benchmarks/bench_embedding.py writes itself."""
    row = {"dataset": "digits", "n": 1797, "d": 64, "wall_s": 12.9, "peak_mib": 107.6,
           "knn_acc": 0.9733, "trustworthiness": 0.9925}
    return {
        "meta": {"quick": quick, "n_jobs": 2, "seed": 0, "perplexity": 30.0, "python": "3.11.7",
                 "machine": "Linux-test", "cpus": 2, "date": date},
        "rows": [dict(row, method="skicon"),
                 dict(row, method="openTSNE", wall_s=4.58, knn_acc=0.975),
                 {"dataset": "digits", "n": 1797, "d": 64, "method": "umap",
                  "error": "ImportError: umap"}],
        "bars": {"digits": {"knn_minus_openTSNE": -0.0017, "trust_minus_openTSNE": 0.0006,
                            "time_vs_openTSNE": 2.817, "passes": False}},
    }


def test_benchmark_report_reads_the_embedding_benchmark_file(tmp_path):
    report = importlib.import_module("benchmarks._report")
    (tmp_path / "embedding.json").write_text(json.dumps(_embedding_file()))
    (tmp_path / "embedding_quick.json").write_text(json.dumps(_embedding_file(quick=True)))
    (record,) = report.load_records(tmp_path)
    assert record["name"] == "embedding" and not record["quick"]
    assert record["command"] == ("python -m benchmarks.bench_embedding --datasets digits "
                                 "--methods skicon openTSNE umap --n-jobs 2")
    md = report.to_markdown([record])
    assert "| digits | 1797 | 64 | skicon | 12.90 | 108 | 0.9733 | 0.9925 |" in md
    assert "| digits | 1797 | 64 | openTSNE | 4.58 | 108 | 0.9750 | 0.9925 |" in md
    assert "error: ImportError: umap" in md
    assert "| digits | -0.0017 | 0.0006 | 2.817 | n/a | no |" in md
    assert "Linux-test" in md and "2026-01-02 03:04 UTC" in md and "not recorded" in md
    # the same result nested in a runner record renders the same tables
    nested = dict(_fake_record(), result=_embedding_file())
    assert report.tables_of(nested["result"]) == report.tables_of(record["result"])
    rst = report.to_rst([record], heading="~", subheading="^")
    assert "0.9733" in rst and "bench_embedding" in rst and "\n^^^" in rst
    combined = report.to_json([record, _fake_record()])
    names = [entry["name"] for entry in combined["benchmarks"]]
    assert names == ["embedding", "embedding"]
    assert combined["benchmarks"][0]["tables"][0]["rows"][0][4] == "12.90"
    json.dumps(combined)  # serialisable as it stands


def test_benchmark_report_orders_benchmarks_and_skips_the_combined_file(tmp_path):
    report = importlib.import_module("benchmarks._report")
    for name in ("contrastive", "zeta", "clustering", "embedding"):
        report.write_record(_fake_record(name=name), tmp_path)
    (tmp_path / report.COMBINED_JSON).write_text(
        json.dumps({"name": "x", "result": {}, "benchmarks": []}))
    names = [r["name"] for r in report.load_records(tmp_path)]
    assert names == ["embedding", "clustering", "contrastive", "zeta"]


def test_benchmark_runner_reports_a_broken_benchmark(tmp_path, monkeypatch):
    main = importlib.import_module("benchmarks.__main__")
    report = importlib.import_module("benchmarks._report")
    calls = []

    def fake_import(name):
        calls.append(name)
        raise ImportError("no such benchmark yet")

    monkeypatch.setattr(main.importlib, "import_module", fake_import)
    monkeypatch.setattr(main, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(main, "write_record", lambda r: report.write_record(r, tmp_path))
    monkeypatch.setattr(main, "load_records", lambda: report.load_records(tmp_path))
    assert main.main(["--quick", "--only", "clustering"]) == 1
    assert calls == ["benchmarks.bench_clustering"]
    (record,) = report.load_records(tmp_path)
    assert record["command"] == "python -m benchmarks --quick --only clustering"
    assert "ImportError" in record["error"]
    assert (tmp_path / report.COMBINED_MARKDOWN).exists()
    combined = json.loads((tmp_path / report.COMBINED_JSON).read_text())
    assert [b["name"] for b in combined["benchmarks"]] == ["clustering"]
    assert "ImportError" in combined["benchmarks"][0]["error"]


def test_benchmark_runner_report_only_runs_nothing(tmp_path, monkeypatch):
    main = importlib.import_module("benchmarks.__main__")
    report = importlib.import_module("benchmarks._report")
    monkeypatch.setattr(main.importlib, "import_module",
                        lambda name: pytest.fail(f"imported {name}"))
    monkeypatch.setattr(main, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(main, "load_records", lambda: report.load_records(tmp_path))
    (tmp_path / "embedding.json").write_text(json.dumps(_embedding_file()))
    assert main.main(["--report-only"]) == 0
    assert "0.9733" in (tmp_path / report.COMBINED_MARKDOWN).read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_is_valid_python_with_a_docstring(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    doc = ast.get_docstring(tree)
    assert doc, f"{path.name} needs a module docstring (the gallery's title and text)"
    if path.name.startswith("plot_"):
        title = doc.splitlines()
        assert len(title) > 1 and set(title[1]) == {"="}, f"{path.name}: rst title expected"


def test_citation_metadata_agrees_across_cff_readme_and_docs():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["version"] == skicon.__version__
    paper = cff["preferred-citation"]
    arxiv = "2504.16929"
    assert {"type": "url", "value": f"https://arxiv.org/abs/{arxiv}"} in paper["identifiers"]
    assert paper["year"] == 2025
    bibtex_authors = " and ".join(
        f"{a['family-names']}, {a['given-names']}" for a in paper["authors"])
    for path in (ROOT / "README.rst", ROOT / "docs" / "citing.rst"):
        text = " ".join(path.read_text(encoding="utf-8").split())
        assert f"title = {{{paper['title']}}}" in text, path.name
        assert f"author = {{{bibtex_authors}}}" in text, path.name
        assert f"eprint = {{{arxiv}}}" in text and "year = {2025}" in text, path.name


# -- every Python snippet of the README and the user guide runs --------------------------------
DOC_PAGES = [ROOT / "README.rst", ROOT / "docs" / "index.rst",
             *sorted((ROOT / "docs" / "user_guide").glob("*.rst"))]
_CODE_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S*)\s*$")


def python_blocks(text):
    """The bodies of the ``.. code-block:: python`` directives of an rst text, dedented, in order
    (with the line each starts on)."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _CODE_DIRECTIVE.match(lines[i])
        i += 1
        if not match or match.group(2) not in ("python", "python3", "py"):
            continue
        indent = len(match.group(1))
        while i < len(lines) and lines[i].strip().startswith(":"):  # directive options
            i += 1
        start, body = i, []
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        code = inspect.cleandoc("\n".join(body))
        if code:
            blocks.append((start + 1, code))
    return blocks


def test_python_blocks_parser_finds_nested_and_optioned_blocks():
    text = ("Intro\n\n.. code-block:: python\n   :caption: x\n\n   a = 1\n\n   b = a + 1\n\n"
            "Text::\n\n    not python\n\n* item\n\n  .. code:: python\n\n     c = 3\n\nEnd\n"
            ".. code-block:: bash\n\n   ls\n")
    assert [code for _, code in python_blocks(text)] == ["a = 1\n\nb = a + 1", "c = 3"]


def test_readme_and_user_guide_have_snippets():
    pages = {path.name for path in DOC_PAGES if python_blocks(path.read_text(encoding="utf-8"))}
    assert {"README.rst", "index.rst", "pipelines.rst", "persistence.rst"} <= pages


@pytest.mark.parametrize("path", [p for p in DOC_PAGES if python_blocks(p.read_text(encoding="utf-8"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_documentation_snippets_run(path, tmp_path, monkeypatch):
    """Each page's snippets run in order in one namespace (a page builds on its earlier blocks),
    in a scratch directory (snippets may save files); figures go to the Agg backend."""
    try:
        import matplotlib
    except ImportError:
        matplotlib = None
    if matplotlib is not None:
        matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for line, code in python_blocks(path.read_text(encoding="utf-8")):
        if matplotlib is None and "plotting" in code:
            pytest.skip("matplotlib is not installed")
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the snippet at {path.relative_to(ROOT)}:{line} fails: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if matplotlib is not None:
        import matplotlib.pyplot as plt
        plt.close("all")


def test_docs_maths_renders_offline():
    """The HTML loads MathJax from its own _static folder (sphinx-mathjax-offline ships the
    files), never from a CDN, so formulas render without a network."""
    conf = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    assert "sphinx.ext.mathjax" in conf["extensions"]
    assert "sphinx-mathjax-offline" in conf["extensions"]
    assert not re.match(r"(https?:)?//", conf["mathjax_path"]), conf["mathjax_path"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    docs_extra = pyproject[pyproject.index("docs = ["):]
    assert '"sphinx-mathjax-offline' in docs_extra[: docs_extra.index("]")]
