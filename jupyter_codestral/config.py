"""From the extension's settings to the objects that serve completions.

The settings and their defaults are the traitlets of ``CodestralExtension``
(``app.py``); this module only assembles them, for the server and for the
command line alike, which read the same configuration files.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tornado import web

from .backends import KINDS, Backend, BackendSettings, create_backend
from .backends.mistral import mistral_key
from .context import ContextBudget
from .kernel_summary import KernelNamespace
from .policy import PathPolicy
from .ratelimit import UserRateLimiter
from .request import RequestLimits
from .service import CompletionService, ServiceLimits, SessionPaths
from .templates import PromptFormat

if TYPE_CHECKING:
    from .app import CodestralExtension


def backend_settings(app: CodestralExtension) -> BackendSettings:
    if app.backend == "mistral":
        api_key, key_name = mistral_key(app.url, os.environ)
    else:
        api_key = app.api_key
        key_name = app._from_env.get("api_key", "CodestralExtension.api_key") if api_key else None
    return BackendSettings(
        backend=app.backend,
        url=app.url,
        model=app.model,
        api_key=api_key or None,
        key_name=key_name,
        prompt=PromptFormat(app.prompt_layout, app.fim_template, app.kernel_placement == "file"),
        temperature=app.temperature,
        max_tokens=app.max_tokens,
        timeout=app.timeout,
        connect_timeout=app.connect_timeout,
        retries=app.retries,
        max_connections=max(1, app.backend_connections),
        openai_suffix=app.openai_suffix,
        model_path=app.model_path or None,
        model_sha256=app.model_sha256 or None,
        threads=app.threads or None,
        kv_cache=app.kv_cache,
        kv_cache_mb=app.kv_cache_mb,
        redact_secrets=redacts_secrets(app),
    )


def context_budget(app: CodestralExtension) -> ContextBudget:
    return ContextBudget(
        prefix_tokens=app.prefix_tokens, suffix_tokens=app.suffix_tokens, trim_step_tokens=app.trim_step_tokens
    )


def config_error(app: CodestralExtension) -> str | None:
    """What is wrong with the configuration, as one readable message (None: nothing)."""
    problems = list(dict.fromkeys(app.config_problems.values()))
    return " ".join(problems) if problems else None


def usable_backend(app: CodestralExtension, settings: BackendSettings) -> Backend:
    """The configured backend; with a configuration that cannot work, one that stays idle (the
    service answers every request with the configuration's problem instead)."""
    try:
        return create_backend(settings)
    except ValueError:
        return create_backend(replace(settings, backend="mistral", url=KINDS["mistral"].url))


def path_policy(app: CodestralExtension) -> PathPolicy:
    allowed = app.allowed_paths
    return PathPolicy(tuple(app.disabled_paths), None if allowed is None else tuple(allowed))


def redacts_secrets(app: CodestralExtension) -> bool:
    """Whether prompts are redacted: as configured, else for every backend whose prompts leave the process."""
    return app.redact_secrets if app.redact_secrets is not None else app.backend != "embedded"


def session_path_lookup(app: CodestralExtension) -> SessionPaths | None:
    """How the service learns which document a kernel belongs to (for the course policy)."""
    sessions = getattr(app.serverapp, "session_manager", None) if app.serverapp is not None else None
    if sessions is None:
        return None

    async def paths(kernel_id: str) -> list[str]:
        try:
            session = await sessions.get_session(kernel_id=kernel_id)
        except web.HTTPError:  # 404: a kernel with no session (started through the kernels API)
            return []
        return [session["path"]] if session.get("path") else []

    return paths


def build_service(app: CodestralExtension, **overrides: Any) -> CompletionService:
    settings = backend_settings(app)
    kernels = None
    manager = getattr(app.serverapp, "kernel_manager", None) if app.serverapp is not None else None
    if app.kernel_context and manager is not None:
        kernels = KernelNamespace(manager, timeout=app.kernel_timeout)
    return CompletionService(
        usable_backend(app, settings),
        context_budget(app),
        ServiceLimits(
            max_body_bytes=app.max_body_bytes,
            request=RequestLimits(max_cells=app.max_cells, max_total_chars=app.max_body_bytes),
            max_tokens=app.max_tokens,
        ),
        UserRateLimiter(app.user_rate_limit, app.user_rate_burst),
        kernels=kernels,
        policy=path_policy(app),
        session_paths=session_path_lookup(app),
        config_error=config_error(app),
        log_prompts=app.log_prompts,
        log=app.log,
        **overrides,
    )
