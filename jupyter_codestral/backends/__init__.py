"""Completion backends behind one streaming interface (:class:`Backend`)."""

from __future__ import annotations

from .base import Backend, BackendSettings, FimRequest


def create_backend(settings: BackendSettings) -> Backend:
    """The backend class named by ``settings.backend``."""
    if settings.backend == "mistral":
        from .mistral import MistralBackend as cls
    elif settings.backend == "openai":
        from .openai import OpenAIBackend as cls
    elif settings.backend == "ollama":
        from .ollama import OllamaBackend as cls
    elif settings.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend as cls
    elif settings.backend == "local":
        from .local import LocalBackend as cls
    else:
        raise ValueError(f"Unknown backend {settings.backend!r}")
    return cls(settings)


__all__ = ["Backend", "BackendSettings", "FimRequest", "create_backend"]
