"""Completion backends behind one streaming interface (:class:`Backend`), and what each kind needs."""

from __future__ import annotations

from dataclasses import dataclass

from ..context import ContextBudget
from ..embedded.model_files import BUNDLED
from .base import Backend, BackendSettings, FimRequest
from .mistral import CODESTRAL_URL


@dataclass(frozen=True)
class BackendKind:
    """A kind of backend and its usual settings (the defaults of the extension's settings)."""

    name: str
    url: str
    model: str
    budget: ContextBudget  # how much of the notebook its prompts hold
    layout: str


# "local" is the embedded model's former name, still accepted in configurations.
ALIASES = {"local": "embedded"}

KINDS: dict[str, BackendKind] = {
    kind.name: kind
    for kind in (
        # Codestral reads 32k tokens quickly; the limit is what we upload per keystroke.
        BackendKind("mistral", CODESTRAL_URL, "codestral-latest", ContextBudget(4096, 1024, 256), "inline"),
        BackendKind(
            "openai", "http://127.0.0.1:8000", "Qwen/Qwen2.5-Coder-1.5B", ContextBudget(2048, 512, 256), "inline"
        ),
        BackendKind("ollama", "http://127.0.0.1:11434", "qwen2.5-coder:1.5b", ContextBudget(2048, 512, 256), "inline"),
        # llama.cpp's server keeps its prompt cache: the prompt's start should stay put.
        BackendKind("llamacpp", "http://127.0.0.1:8080", "default", ContextBudget(2048, 512, 512), "stable"),
        # On a laptop CPU every token read costs ~6 ms: the prompt's start stays put
        # (stable layout, a window that moves in large steps) so it is read once; the
        # later cells come in once the worker has read them in the background (adaptive).
        BackendKind("embedded", "embedded", BUNDLED.name, ContextBudget(), "adaptive"),
    )
}


def kind_name(value: str) -> str:
    """A backend kind as written in a configuration, normalised (its former names accepted)."""
    value = value.strip().lower()
    return ALIASES.get(value, value)


def url_problem(kind: str, url: str) -> str | None:
    """Why ``url`` cannot reach a backend of ``kind``, or None."""
    if kind != "embedded" and not url.startswith(("http://", "https://")):
        return f"The backend URL must start with http:// or https://; it is {url!r}."
    return None


def create_backend(settings: BackendSettings) -> Backend:
    """The backend class named by ``settings.backend``."""
    from .embedded import EmbeddedBackend
    from .llamacpp import LlamaCppBackend
    from .mistral import MistralBackend
    from .ollama import OllamaBackend
    from .openai import OpenAIBackend

    classes: dict[str, type[Backend]] = {
        "mistral": MistralBackend,
        "openai": OpenAIBackend,
        "ollama": OllamaBackend,
        "llamacpp": LlamaCppBackend,
        "embedded": EmbeddedBackend,
    }
    if settings.backend not in classes:
        raise ValueError(f"Unknown backend {settings.backend!r}")
    return classes[settings.backend](settings)


__all__ = [
    "ALIASES",
    "KINDS",
    "Backend",
    "BackendKind",
    "BackendSettings",
    "FimRequest",
    "create_backend",
    "kind_name",
    "url_problem",
]
