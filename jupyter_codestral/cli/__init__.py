"""``jupyter codestral``: complete, doctor, bench, redact and usage from the command line.

The verbs use the same configuration as the server extension (traitlets config files, then
environment variables, then the command-line overrides) and the same assembly
(``assembly.assemble``), so what they print is what the server would do.  One module per verb.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CompletionError
from . import bench, complete, doctor, redact, usage
from .common import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jupyter codestral", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{complete,doctor,bench,redact,usage}")
    for verb in (complete, doctor, bench, redact, usage):
        verb.add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], Any] = args.run
    try:
        code = asyncio.run(run(args))
    except CompletionError as error:
        print(f"error: {error.message}", file=sys.stderr)
        code = 2
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
