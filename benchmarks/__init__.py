"""skicon benchmarks: quality and speed against the peer packages on real data.

Run every benchmark with ``python -m benchmarks`` (``--quick`` for a smoke-sized run,
``--only NAME`` for one of them). Each benchmark module ``bench_<name>.py`` exposes
``run(quick=False) -> dict``; the runner stores the dict with the machine description and
the reproducing command in ``benchmarks/results/<name>.json`` and regenerates the combined
Markdown file ``benchmarks/results/results.md`` from all JSON files there. The documentation's
benchmarks page is generated from the same JSON files.
"""

BENCHMARKS = ("embedding", "clustering", "contrastive")
