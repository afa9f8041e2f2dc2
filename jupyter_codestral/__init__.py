"""Fill-in-the-middle inline code completion for Jupyter."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CodestralExtension

    return [{"module": "jupyter_codestral", "app": CodestralExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-codestral"}]
