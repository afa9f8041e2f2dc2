"""Resolve the effective configuration from traitlets and environment variables.

Environment variables win over traitlets so that a deployment (Binder, a
JupyterHub spawner) can switch backends without writing config files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends.base import BackendSettings
from .backends.mistral import CODESTRAL_URL, MISTRAL_URL
from .context import ContextBudget

BACKENDS = ("mistral", "openai", "ollama", "llamacpp", "local")


@dataclass(frozen=True)
class BackendDefaults:
    url: str
    model: str
    prefix_tokens: int
    suffix_tokens: int
    layout: str = "inline"


DEFAULTS: dict[str, BackendDefaults] = {
    # Codestral reads 32k tokens quickly; the limit is what we upload per keystroke.
    "mistral": BackendDefaults(CODESTRAL_URL, "codestral-latest", 4096, 1024),
    "openai": BackendDefaults("http://127.0.0.1:8000", "Qwen/Qwen2.5-Coder-1.5B", 2048, 512),
    "ollama": BackendDefaults("http://127.0.0.1:11434", "qwen2.5-coder:1.5b", 2048, 512),
    "llamacpp": BackendDefaults("http://127.0.0.1:8080", "default", 2048, 512, "split"),
    # On a laptop CPU every uncached token costs ~4 ms: keep what is re-read small.
    "local": BackendDefaults("embedded", "qwen2.5-coder-0.5b-instruct-q4_k_m", 1024, 384, "split"),
}


class ConfigError(ValueError):
    """The configuration cannot work; the message says what to change."""


def resolve(traits: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[BackendSettings, ContextBudget]:
    """``traits`` holds the extension's trait values by name; ``environ`` is ``os.environ``."""

    def pick(env_name: str, trait: str) -> Any:
        value = environ.get(env_name, "").strip()
        return value if value else traits.get(trait)

    codestral_key = environ.get("CODESTRAL_API_KEY", "").strip()
    mistral_key = environ.get("MISTRAL_API_KEY", "").strip()
    generic_key = environ.get("JUPYTER_CODESTRAL_API_KEY", "").strip() or (traits.get("api_key") or "")

    backend = (pick("JUPYTER_CODESTRAL_BACKEND", "backend") or "").strip().lower()
    if not backend:
        backend = "mistral" if (codestral_key or mistral_key) else "local"
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    defaults = DEFAULTS[backend]

    url = pick("JUPYTER_CODESTRAL_URL", "url")
    api_key: str | None = generic_key or None
    key_name = "JUPYTER_CODESTRAL_API_KEY" if generic_key else None
    if backend == "mistral":
        # A Codestral key belongs to codestral.mistral.ai, a Mistral key to api.mistral.ai.
        if codestral_key and (not url or "api.mistral.ai" not in url or not mistral_key):
            api_key, key_name = codestral_key, "CODESTRAL_API_KEY"
            url = url or CODESTRAL_URL
        elif mistral_key:
            api_key, key_name = mistral_key, "MISTRAL_API_KEY"
            url = url or MISTRAL_URL
    url = (url or defaults.url).rstrip("/")
    if backend != "local" and not url.startswith(("http://", "https://")):
        raise ConfigError(f"The backend URL must start with http:// or https://, got {url!r}.")

    layout = traits.get("prompt_layout") or defaults.layout
    if layout not in ("inline", "split"):
        raise ConfigError(f"prompt_layout must be 'inline' or 'split', got {layout!r}.")

    settings = BackendSettings(
        backend=backend,
        url=url,
        model=pick("JUPYTER_CODESTRAL_MODEL", "model") or defaults.model,
        api_key=api_key,
        key_name=key_name,
        template=traits.get("fim_template") or None,
        layout=layout,
        temperature=float(traits.get("temperature", 0.0)),
        max_tokens=int(traits.get("max_tokens", 128)),
        timeout=float(traits.get("timeout", 10.0)),
        connect_timeout=float(traits.get("connect_timeout", 3.0)),
        retries=int(traits.get("retries", 2)),
        max_connections=max(1, int(traits.get("backend_connections", 100))),
        openai_suffix=bool(traits.get("openai_suffix", False)),
        model_path=pick("JUPYTER_CODESTRAL_MODEL_PATH", "model_path") or None,
        threads=traits.get("threads") or None,
        kv_cache=bool(traits.get("kv_cache", True)),
        kernel_file=traits.get("kernel_placement", "comment") == "file",
    )
    budget = ContextBudget(
        prefix_tokens=int(traits.get("prefix_tokens") or defaults.prefix_tokens),
        suffix_tokens=int(traits.get("suffix_tokens") or defaults.suffix_tokens),
    )
    return settings, budget
