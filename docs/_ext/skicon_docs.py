"""Sphinx extension that generates the pages which must never drift from the code.

At ``config-inited`` (before Sphinx looks for source files) it writes:

* ``api.rst``: the API reference, one autosummary section per public module, listing every
  name in that module's ``__all__``;
* ``_generated/method_table.rst.inc``: the periodic table, from ``skicon.list_methods()``;
* ``_generated/periodic_grid.rst.inc``: the same rows as a grid of supervisory p against
  learned q;
* ``_generated/benchmarks/<name>.rst.inc``: the latest tables of each benchmark in
  ``benchmarks/results/*.json`` (embedding, clustering, contrastive), and
  ``_generated/benchmarks/others.rst.inc`` for any other result file there.

Generated files are only rewritten when their text changes, so incremental builds stay
incremental. It also hides members that classes inherit from scikit-learn or torch (their
docstrings point at those projects' own documentation labels).
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import skicon

DOCS = Path(__file__).resolve().parents[1]
GENERATED = DOCS / "_generated"

# Titles and one-line introductions of the API sections, in reading order. A public
# submodule that is missing here still gets a section (titled by its name) at the end.
API_SECTIONS = {
    "skicon": (
        "Estimators, loss and the periodic table",
        "The scikit-learn estimators, the I-Con loss and the registry of methods.",
    ),
    "skicon.kernels": (
        "Kernels and transforms",
        "Neighbourhood distributions: each kernel is p on data and q on representations; "
        "transforms wrap any kernel.",
    ),
    "skicon.objectives": (
        "Objectives",
        "The I-Con loss; the fast backends of each family of rows live in its private modules.",
    ),
    "skicon.neighbors": (
        "Neighbour graphs",
        "Sparse k-nearest-neighbour graphs, the neighbours of new points and perplexity calibration.",
    ),
    "skicon.mappers": (
        "Mappers",
        "The modules that turn inputs into representations (parametric or a free table).",
    ),
    "skicon.metrics": ("Metrics", "Scores for embeddings and clusterings."),
    "skicon.augment": (
        "Augmentations",
        "Small-image augmentations that make views for contrastive learning.",
    ),
    "skicon.plotting": (
        "Plotting",
        "An embedding coloured by label, with a legend (needs matplotlib, imported on first use).",
    ),
}


def reset_torch(gallery_conf, fname):
    """Start every gallery example from the same global torch seed (sphinx-gallery hook).

    The estimators seed themselves from ``random_state``; this only pins code in an example
    that draws from torch's global generator. Threads follow ``OMP_NUM_THREADS``.
    """
    import torch

    torch.manual_seed(0)


class ExampleOrder:
    """Reading order of the gallery (sphinx-gallery ``within_subsection_order``)."""

    ORDER = (
        "plot_tsne_digits.py",
        "plot_clustering_mnist.py",
        "plot_contrastive_digits.py",
        "plot_grid_search.py",
        "plot_debiasing_ablation.py",
        "plot_propagation_ablation.py",
        "plot_custom_kernels.py",
    )

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        rank = self.ORDER.index(filename) if filename in self.ORDER else len(self.ORDER)
        return rank, filename

    def __repr__(self):
        return f"<{type(self).__name__}>"


def _write_if_changed(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.write_text(text, encoding="utf-8")


def _heading(text, char):
    return [text, char * len(text), ""]


# -- API reference ------------------------------------------------------------------------


def public_modules():
    """``skicon`` and its public submodules that define ``__all__``, in API_SECTIONS order."""
    names = ["skicon"]
    for info in pkgutil.iter_modules(skicon.__path__, prefix="skicon."):
        if not info.name.rsplit(".", 1)[1].startswith("_"):
            names.append(info.name)
    modules = []
    for name in names:
        module = importlib.import_module(name)
        if getattr(module, "__all__", None):
            modules.append(module)
    order = list(API_SECTIONS)
    return sorted(modules, key=lambda m: (order.index(m.__name__) if m.__name__ in order
                                          else len(order), m.__name__))


def public_names(module):
    """Documentable public names of a module: its ``__all__`` without dunders and submodules
    (a submodule gets its own section)."""
    return [
        n for n in module.__all__
        if not (n.startswith("__") and n.endswith("__"))
        and not inspect.ismodule(getattr(module, n))
    ]


def api_rst():
    """Text of the generated API reference page."""
    lines = [
        ".. This file is generated by docs/_ext/skicon_docs.py from the modules' __all__;",
        "   edit API_SECTIONS there, not this file.",
        "",
        ".. _api:",
        "",
    ] + _heading("API reference", "=") + [
        "Every public name of skicon, generated from each module's ``__all__``.",
        "",
    ]
    for module in public_modules():
        title, intro = API_SECTIONS.get(module.__name__, (module.__name__, ""))
        names = public_names(module)
        classes = [n for n in names if inspect.isclass(getattr(module, n))]
        others = [n for n in names if n not in classes]
        lines += _heading(f"{title} (``{module.__name__}``)", "-")
        lines += [f".. automodule:: {module.__name__}", "   :no-members:", "   :no-index:", ""]
        if intro:
            lines += [intro, ""]
        lines += [f".. currentmodule:: {module.__name__}", ""]
        for group, members in (("Classes", classes), ("Functions and objects", others)):
            if not members:
                continue
            lines += [f"**{group}**", "", ".. autosummary::", "   :toctree: generated/",
                      "   :nosignatures:", ""]
            lines += [f"   {name}" for name in members] + [""]
    return "\n".join(lines)


# -- the periodic table ------------------------------------------------------------------


def _rst_cell(value):
    text = " ".join(str(value if value is not None else "").split())
    if text.startswith((":class:", "``")):  # markup written by this module
        return text
    return text.replace("|", "\\|").replace("*", "\\*") or "--"


def _list_table(columns, rows, widths=None):
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [columns] + rows:
        lines.append(f"   * - {_rst_cell(row[0])}")
        lines += [f"     - {_rst_cell(cell)}" for cell in row[1:]]
    return lines + [""]


def _row_field(row, *names):
    for name in names:
        value = getattr(row, name, None)
        if value is not None and not callable(value):
            return value
    return None


def _kernel_family(factory):
    """Short structural name of a row's kernel: class names, wrappers nested."""
    try:
        kernel = factory()
    except Exception:  # a factory that needs arguments: fall back to the text column
        return None
    name = type(kernel).__name__
    inner = getattr(kernel, "kernel", None)
    while inner is not None:
        name = name[: len(name) - name.count(")")] + f"({type(inner).__name__}" + ")" * (
            name.count(")") + 1)
        inner = getattr(inner, "kernel", None)
    return name


def method_rows():
    """The registry rows as dicts of strings (method, title, p, q, direction, estimator, theorem)."""
    if not hasattr(skicon, "list_methods"):
        from sphinx.util import logging

        logging.getLogger(__name__).warning("skicon.list_methods() is missing: empty method table")
        return []
    rows = []
    for row in skicon.list_methods():
        p_text = _row_field(row, "p_text", "p")
        q_text = _row_field(row, "q_text", "q")
        rows.append({
            "method": _row_field(row, "method", "name"),
            "title": _row_field(row, "title"),
            "p": p_text,
            "q": q_text,
            "p_kernel": _kernel_family(row.p) if callable(getattr(row, "p", None)) else p_text,
            "q_kernel": _kernel_family(row.q) if callable(getattr(row, "q", None)) else q_text,
            "direction": _row_field(row, "direction"),
            "estimator": _row_field(row, "estimator"),
            "theorem": _row_field(row, "theorem"),
        })
    return rows


def method_table_rst(rows):
    """List-table of the registry: one line per method."""
    columns = ["method=", "Method", "Supervisory p(j|i)", "Learned q(j|i)", "KL", "Estimator",
               "Paper"]
    body = []
    for r in rows:
        direction = {"forward": "p||q", "reverse": "q||p"}.get(r["direction"], r["direction"])
        body.append([f'``"{r["method"]}"``', r["title"], r["p"], r["q"], direction,
                     f':class:`~skicon.{r["estimator"]}`' if r["estimator"] else "",
                     r["theorem"]])
    lines = [".. Generated from skicon.list_methods() by docs/_ext/skicon_docs.py.", ""]
    return "\n".join(lines + _list_table(columns, body, widths=[14, 14, 26, 26, 6, 14, 10]))


def periodic_grid_rst(rows):
    """Grid with one row per supervisory p and one column per learned q."""
    ps = list(dict.fromkeys(str(r["p_kernel"] or r["p"]) for r in rows))
    qs = list(dict.fromkeys(str(r["q_kernel"] or r["q"]) for r in rows))
    cells = {}
    for r in rows:
        key = (str(r["p_kernel"] or r["p"]), str(r["q_kernel"] or r["q"]))
        cells.setdefault(key, []).append(r["title"] or r["method"])
    body = [[p] + [", ".join(cells.get((p, q), [])) for q in qs] for p in ps]
    lines = [".. Generated from skicon.list_methods() by docs/_ext/skicon_docs.py.", ""]
    return "\n".join(lines + _list_table(["p (rows) / q (columns)"] + qs, body))


def _grid_table(columns, rows):
    """A reStructuredText grid table (readable as plain text, e.g. in the README)."""
    # no escaping: a "|" inside a word cannot start a substitution, and the README is read raw
    cells = [[" ".join(str(c if c is not None else "").split()) for c in row]
             for row in [columns] + rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(columns))]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = border.replace("-", "=")

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    out = [border, line(cells[0]), head]
    for row in cells[1:]:
        out += [line(row), border]
    return out


README_BEGIN = ".. begin-method-table"
README_END = ".. end-method-table"


def readme_method_table(rows):
    """The method table as it appears in README.rst, between the two markers."""
    columns = ["method=", "Method", "Supervisory p(j|i)", "Learned q(j|i)", "KL", "Estimator",
               "Paper"]
    body = [[r["method"], r["title"], r["p"], r["q"],
             {"forward": "KL(p||q)", "reverse": "KL(q||p)"}.get(r["direction"], r["direction"]),
             r["estimator"], r["theorem"]] for r in rows]
    return "\n".join(_grid_table(columns, body))


def update_readme(path=DOCS.parent / "README.rst"):
    """Rewrite the method table of README.rst from ``skicon.list_methods()``.

    Returns
    -------
    changed : bool
        Whether the file changed.
    """
    text = path.read_text(encoding="utf-8")
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END)
    new = text[:start] + "\n\n" + readme_method_table(method_rows()) + "\n\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


# -- benchmarks ---------------------------------------------------------------------------


def benchmark_includes():
    """The latest benchmark tables, from benchmarks/results/*.json, one text per benchmark.

    Returns
    -------
    texts : dict of str to str
        Keyed by the include file's stem: each name of ``benchmarks._report.ORDER`` (a short
        note when that benchmark has no result yet) and ``others`` for the rest.
    """
    from benchmarks._report import ORDER, load_records, to_rst

    records = load_records()
    texts = {}
    for name in ORDER:
        mine = [r for r in records if r["name"] == name]
        texts[name] = to_rst(mine) if mine else "\n".join(_heading(name.capitalize(), "-") + [
            f"No ``{name}`` result has been recorded yet: run "
            f"``python -m benchmarks --only {name}``.", ""])
    others = [r for r in records if r["name"] not in ORDER]
    texts["others"] = to_rst(others) if others else ""
    return texts


# -- Sphinx hooks -------------------------------------------------------------------------


def generate(app, config):
    """Write every generated page (``config-inited`` handler)."""
    _write_if_changed(DOCS / "api.rst", api_rst())
    rows = method_rows()
    _write_if_changed(GENERATED / "method_table.rst.inc", method_table_rst(rows))
    _write_if_changed(GENERATED / "periodic_grid.rst.inc", periodic_grid_rst(rows))
    for stem, text in benchmark_includes().items():
        _write_if_changed(GENERATED / "benchmarks" / f"{stem}.rst.inc", text)


_FOREIGN_PREFIXES = ("sklearn.", "torch.")


def skip_foreign_members(app, what, name, obj, skip, options):
    """Hide class members defined by scikit-learn or torch rather than by skicon."""
    if what != "class":
        return None
    target = obj.fget if isinstance(obj, property) else obj
    module = getattr(target, "__module__", None) or ""
    if module.startswith(_FOREIGN_PREFIXES):
        return True
    return None


def drop_type_docstrings(app, what, name, obj, options, lines):
    """Constants without a ``#:`` comment would show their type's docstring (tuple, float...)."""
    if what in ("data", "attribute") and type(obj).__doc__ and \
            "\n".join(lines).strip() == inspect.cleandoc(type(obj).__doc__).strip():
        lines[:] = []


# ``n_clusters_`` in plain text is a reStructuredText reference; fitted-attribute names are
# written that way in numpydoc type descriptions ("ndarray of shape (n_clusters_, ...)").
_TRAILING_UNDERSCORE = re.compile(r"(?<![\w\\`*])([A-Za-z]\w*?[A-Za-z0-9])_(?![\w`])")
_PROTECTED = re.compile(r"(``.*?``|:\w+:`[^`]*`|`[^`]*`_{0,2}|\*\*.*?\*\*|https?://\S+)")


def escape_attribute_names(app, what, name, obj, options, lines):
    """Escape ``name_`` outside literals so that it is not read as a hyperlink reference."""
    for k, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith((">>>", "...", "..")) or "_" not in line:
            continue
        parts = _PROTECTED.split(line)
        for i in range(0, len(parts), 2):  # even parts are outside protected spans
            parts[i] = _TRAILING_UNDERSCORE.sub(r"\1\\_", parts[i])
        lines[k] = "".join(parts)


def setup(app):
    """Register the generators with Sphinx."""
    app.connect("autodoc-process-docstring", escape_attribute_names, priority=900)
    app.connect("config-inited", generate)
    app.connect("autodoc-process-docstring", drop_type_docstrings)
    app.connect("autodoc-skip-member", skip_foreign_members)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    # `python docs/_ext/skicon_docs.py` refreshes the README's method table.
    print("README.rst updated" if update_readme() else "README.rst already up to date")
