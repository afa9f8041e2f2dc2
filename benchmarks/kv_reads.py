"""What the embedded model reads when the cursor enters a new cell, without running the model.

For every code cell of every notebook in a folder (the benchmark notebooks by default), two moments:

- ``new last cell``: the notebook written cell by cell; the cursor enters a new empty cell after the cell
  above, whose prompts the model read while it was written (as the frontend asks: a prefetch on entering a
  cell, the last request at its end, a prefetch of the next code cell while a markdown cell is written);
- ``one cell down``: the whole notebook; the cursor moves from the end of a cell to the start of the next;
- ``new cell+kernel``: as ``new last cell``, each cell run in a (simulated) kernel once written: its
  variables' notes follow it (new text, not counted), and those of the cells a step of the window drops
  lead the prompt.  With and without reading ahead the start the window's next step gives it, when near;
- ``pasted+kernel``: as the authoring replay writes with a kernel: every third code cell written (its first
  line typed), the rest of it and the cells up to the next pasted and run at once; the text pasted since the
  last request is new and not counted.

For each, the tokens the worker must read for the new prompt: the prompt minus what it can keep of what it
read (the worker's own prompt cache, on an engine that tokenizes with the model's vocabulary and tracks its
KV, ``tests/kv_simulation.py``).  Two ways of keeping, in one run:

- ``prefix``: only the start a prompt shares with one read before (llama.cpp's usual prompt cache);
- ``chunks`` (the default, ``kv_reuse``): also every run of it read elsewhere, its KV moved into place.

Goal (issue: the first suggestion in a new cell, on every notebook): at most 64 tokens in 95% of moments,
never more than 256.

    python benchmarks/kv_reads.py [--folder NOTEBOOKS]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _common import BENCH_NOTEBOOKS, ROOT

sys.path.insert(0, str(ROOT / "tests"))

from kv_simulation import entering_after_pasted_cells, entering_new_cells, moving_down, summary  # noqa: E402

from jupyter_codestral.embedded.model_files import BUNDLED, cache_dir, ensure_model  # noqa: E402
from jupyter_codestral.embedded.prompt_cache import Reuse  # noqa: E402

# (scenario, keeping, the moments): each without and with moving kept runs; the kernel's, with and without
# the read-ahead of the window's next step.
RUNS: list[tuple[str, str, Callable[[Path, Path], list[int]]]] = [
    ("new last cell", "prefix", partial(entering_new_cells, reuse=Reuse.PREFIX)),
    ("new last cell", "chunks", entering_new_cells),
    ("one cell down", "prefix", partial(moving_down, reuse=Reuse.PREFIX)),
    ("one cell down", "chunks", moving_down),
    ("new cell+kernel", "chunks, no read-ahead", partial(entering_new_cells, kernel=True, ahead=False)),
    ("new cell+kernel", "chunks", partial(entering_new_cells, kernel=True)),
    ("pasted+kernel", "chunks, no read-ahead", partial(entering_after_pasted_cells, ahead=False)),
    ("pasted+kernel", "chunks", entering_after_pasted_cells),
]
# The goal is for a new cell after the cell above (with or without a kernel) and one cell down.
GOAL_SCENARIOS = ("new last cell", "one cell down", "new cell+kernel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=BENCH_NOTEBOOKS)
    args = parser.parse_args()
    model = ensure_model(BUNDLED, cache_dir())
    notebooks = len(list(args.folder.glob("*.ipynb")))
    print(f"{notebooks} notebooks in {args.folder}; tokens the worker reads for the new prompt (the rest is kept)")
    print(f"{'scenario':<17}{'keeping':<23}{'moments':>8}{'<=64':>7}{'p50':>6}{'p95':>7}{'max':>6}{'read in all':>13}")
    verdicts = []
    for scenario, keeping, run in RUNS:
        f = summary(run(model, args.folder))
        print(f"{scenario:<17}{keeping:<23}{f['moments']:>8}{f['within_64']:>7.1%}{f['median']:>6.0f}"
              f"{f['p95']:>7.0f}{f['max']:>6}{f['total']:>13,}")
        if keeping == "chunks" and scenario in GOAL_SCENARIOS:
            met = f["within_64"] >= 0.95 and f["max"] <= 256
            verdicts.append(f"goal ({scenario}): <=64 tokens in 95% of moments and never more than 256: "
                            f"{f['within_64']:.1%}, max {f['max']}: {'meets' if met else 'misses'}")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
