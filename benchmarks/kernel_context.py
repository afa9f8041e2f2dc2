"""Completions that need runtime facts, with and without the kernel summary.

Datasets shipped inside the ``vega_datasets`` package are loaded in a real
kernel (``cars = data.cars()``); the notebook text never shows their columns.
Tasks: complete a column name in a subscript (``cars["Mi``), an attribute
access (``cars.Hor``) and a keyword argument (``cars.sort_values(by="Acc``).
Each task is asked twice through ``POST codestral/complete`` on the embedded
model: once with the notebook's ``kernel_id`` (the summary goes into the
prompt) and once without.  The ordinary masked-line cases of the typing
benchmark are also run both ways, with the datasets loaded in the kernel,
to check the summary costs nothing where it does not help.

    pip install vega_datasets pandas
    python benchmarks/kernel_context.py [--ordinary 12]
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass
from typing import Any

import httpx
from _common import BENCH_NOTEBOOKS, execute, jupyter_server, wait_model_ready
from tqdm import tqdm
from typing_replay import timed_completion

from jupyter_codestral.evaluation import pick_cases, score

DATASETS = ["airports", "anscombe", "barley", "burtin", "cars", "crimea", "driving", "iowa_electricity", "iris",
            "la_riots", "ohlc", "seattle_temps", "seattle_weather", "sf_temps", "stocks", "us_employment", "wheat"]


@dataclass
class Task:
    kind: str
    cells: list[dict[str, str]]
    target: str  # the rest of the column name

    def request(self, kernel_id: str | None) -> dict[str, Any]:
        body = {"cells": self.cells, "cell_index": len(self.cells) - 1, "cursor": len(self.cells[-1]["source"]),
                "path": "runtime-facts.ipynb", "stream": True, "single_line": True, "max_tokens": 24}
        return body | ({"kernel_id": kernel_id} if kernel_id else {})


def make_tasks(columns: dict[str, list[str]]) -> list[Task]:
    tasks = []
    for name, cols in columns.items():
        var = name
        names = [c for c in cols if len(c) >= 4][:2]
        for col in names:
            typed = col[: max(1, len(col) // 3)]
            head = [{"cell_type": "code", "source": "from vega_datasets import data"},
                    {"cell_type": "code", "source": f"{var} = data.{name}()\n{var}.head()"}]
            tasks.append(Task("subscript", head + [{"cell_type": "code", "source": f'{var}["{typed}'}], col[len(typed):]))
            tasks.append(Task("keyword", head + [{"cell_type": "code", "source": f'{var}.sort_values(by="{typed}'}],
                              col[len(typed):]))
            if col.isidentifier():
                tasks.append(Task("attribute", head + [{"cell_type": "code", "source": f"{var}.{typed}"}],
                                  col[len(typed):]))
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ordinary", type=int, default=12, help="ordinary masked-line cases")
    parser.add_argument("--placement", choices=("comment", "file"), default="comment",
                        help="where the summary goes in the prompt (CodestralExtension.kernel_placement)")
    args = parser.parse_args()

    with jupyter_server("--CodestralExtension.backend=local",
                        f"--CodestralExtension.kernel_placement={args.placement}") as (base, headers, _):
        root = base.rsplit("/codestral", 1)[0]
        with httpx.Client(headers=headers, timeout=180) as client:
            wait_model_ready(client, base)
            kernel_id = client.post(f"{root}/api/kernels", json={"name": "python3"}).json()["id"]
            ws_url = root.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels"
            loaded = execute(ws_url, headers, "from vega_datasets import data\nimport json\n"
                             + "\n".join(f"{n} = data.{n}()" for n in DATASETS)
                             + "\njson.dumps({" + ", ".join(f"'{n}': list(map(str, {n}.columns))" for n in DATASETS) + "})")
            # The cell's value is a JSON string, shown as its Python repr.
            columns = json.loads(ast.literal_eval(loaded["text/plain"]))
            tasks = make_tasks(columns)
            url = f"{base}/complete"
            hits: dict[tuple[str, bool], list[bool]] = {}
            for task in tqdm(tasks, desc="runtime tasks", unit="task"):
                for with_kernel in (False, True):
                    _, completion = timed_completion(client, url, task.request(kernel_id if with_kernel else None))
                    first = completion.split("\n")[0]
                    hits.setdefault((task.kind, with_kernel), []).append(first.startswith(task.target))
            ordinary: dict[bool, list[tuple[bool, float]]] = {False: [], True: []}
            for case in tqdm(pick_cases(BENCH_NOTEBOOKS, args.ordinary), desc="ordinary cases", unit="case"):
                for with_kernel in (False, True):
                    body = case.request() | ({"kernel_id": kernel_id} if with_kernel else {})
                    _, completion = timed_completion(client, url, body)
                    ordinary[with_kernel].append(score(completion, case.target))

    print(f"\n{len(tasks)} runtime-fact tasks over {len(columns)} vega_datasets tables; embedded model, "
          f"through the HTTP endpoint; summary placement: {args.placement}")
    print(f"{'task':<12}{'n':>4}{'exact, no summary':>19}{'exact, with summary':>21}{'gain (points)':>15}")
    kinds = sorted({k for k, _ in hits})
    for kind in [*kinds, "all"]:
        without = [h for (k, w), v in hits.items() if not w and kind in (k, "all") for h in v]
        with_ = [h for (k, w), v in hits.items() if w and kind in (k, "all") for h in v]
        a, b = sum(without) / len(without), sum(with_) / len(with_)
        print(f"{kind:<12}{len(without):>4}{a:>19.2f}{b:>21.2f}{(b - a) * 100:>15.0f}")
    for with_kernel in (False, True):
        scores = ordinary[with_kernel]
        print(f"ordinary masked lines ({len(scores)}), {'with' if with_kernel else 'no'} summary: exact "
              f"{sum(s[0] for s in scores) / len(scores):.2f}, edit similarity {sum(s[1] for s in scores) / len(scores):.3f}")


if __name__ == "__main__":
    main()
