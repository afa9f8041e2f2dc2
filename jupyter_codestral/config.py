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

from .backends import KINDS, Backend, BackendSettings, create_backend, kind_name, url_problem
from .backends.mistral import mistral_key, mistral_url
from .context import ContextBudget
from .kernel_summary import KernelNamespace
from .policy import PathPolicy
from .ratelimit import UserRateLimiter
from .request import RequestLimits
from .routing import (
    COOLDOWN_FIRST_MS,
    REMOTE_FIRST_TOKEN_TIMEOUT_MS,
    ROUTE_KINDS,
    Route,
    Router,
    RouteSpec,
    parse_routes,
)
from .service import CompletionService, ServiceLimits, SessionPaths
from .templates import PromptFormat
from .usage import Price, UsageLedger

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


def redacts_secrets(app: CodestralExtension, kind: str | None = None) -> bool:
    """Whether prompts to a backend of ``kind`` (the configured one by default) are redacted: as
    configured, else for every backend whose prompts leave the process."""
    if app.redact_secrets is not None:
        return app.redact_secrets
    return (kind or app.backend) != "embedded"


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


# What each entry of CodestralExtension.backends may say.
SPEC_KEYS = frozenset(
    {
        "backend",
        "url",
        "model",
        "api_key_env",
        "fim_template",
        "prompt_layout",
        "redact_secrets",
        "first_token_timeout_ms",
        "cooldown_ms",
        "price_per_million",
        "prefix_tokens",
        "suffix_tokens",
        "timeout",
    }
)


def route_spec(app: CodestralExtension, name: str, raw: Any) -> RouteSpec:
    """One named backend, from the single-backend settings with its own overrides; ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f'backends[{name!r}] must be an object like {{"backend": "mistral"}}.')
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"backends[{name!r}] has unknown setting {unknown[0]!r}; known: {', '.join(sorted(SPEC_KEYS))}."
        )
    kind_id = kind_name(str(raw.get("backend", "")))
    if kind_id not in KINDS:
        kinds = ", ".join(KINDS)
        raise ValueError(f"backends[{name!r}]: unknown backend {raw.get('backend')!r}; choose one of {kinds}.")
    kind = KINDS[kind_id]
    url = str(raw.get("url") or (mistral_url(os.environ) if kind_id == "mistral" else kind.url)).strip().rstrip("/")
    problem = url_problem(kind_id, url)
    if problem:
        raise ValueError(f"backends[{name!r}]: {problem}")
    key_env = raw.get("api_key_env")
    api_key: str | None
    key_name: str | None
    if key_env:
        api_key, key_name = os.environ.get(str(key_env), "").strip() or None, str(key_env)
    elif kind_id == "mistral":
        api_key, key_name = mistral_key(url, os.environ)
    else:
        api_key, key_name = None, None
    first_token_timeout_ms = raw.get(
        "first_token_timeout_ms", None if kind_id == "embedded" else REMOTE_FIRST_TOKEN_TIMEOUT_MS
    )
    cooldown_ms = raw.get("cooldown_ms", COOLDOWN_FIRST_MS)
    timeout = raw.get("timeout", app.timeout)
    for key, value, unit in (
        ("first_token_timeout_ms", first_token_timeout_ms, "milliseconds"),
        ("cooldown_ms", cooldown_ms, "milliseconds"),
        ("timeout", timeout, "seconds"),
    ):
        if value is not None or key == "timeout":  # null: no first-token timeout, the usual cool-down
            check_positive(value, f"backends[{name!r}].{key}", unit)
    redact = raw.get("redact_secrets", redacts_secrets(app, kind_id))
    settings = replace(
        backend_settings(app),
        backend=kind_id,
        url=url,
        model=str(raw.get("model") or kind.model),
        api_key=api_key,
        key_name=key_name,
        prompt=PromptFormat(
            raw.get("prompt_layout") or kind.layout, raw.get("fim_template"), app.kernel_placement == "file"
        ),
        redact_secrets=bool(redact),
        timeout=float(timeout),
    )
    price = Price.parse(raw.get("price_per_million"), f"backends[{name!r}].price_per_million")
    budget = None
    if "prefix_tokens" in raw or "suffix_tokens" in raw:
        sizes = {key: raw.get(key, getattr(app, key)) for key in ("prefix_tokens", "suffix_tokens")}
        for key, value in sizes.items():
            check_positive(value, f"backends[{name!r}].{key}", "tokens", whole=True)
        budget = replace(context_budget(app), **sizes)
    return RouteSpec(name, settings, first_token_timeout_ms, cooldown_ms or COOLDOWN_FIRST_MS, price, budget)


def check_positive(value: Any, where: str, unit: str, whole: bool = False) -> None:
    """ValueError unless ``value`` is a positive number (a whole one, for ``whole``)."""
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float) or value <= 0:
        raise ValueError(f"{where} must be a positive number of {unit}.")


def default_backends(app: CodestralExtension) -> dict[str, Any]:
    """What serves completions when no backends are named: with only a Codestral (or Mistral) key set,
    Codestral, and the embedded model when Codestral fails (loaded only then); else nothing named."""
    if app.backends or app.routes or app.backend != "mistral" or not app.backend_from_key:
        return app.backends
    return {
        "codestral": {"backend": "mistral", "url": app.url, "model": app.model},
        "embedded": {"backend": "embedded"},
    }


def routed_backend(app: CodestralExtension) -> Router | None:
    """The router over the named backends (None when there are none, or they cannot work: the problem is recorded)."""
    named = default_backends(app)
    if not named:
        if app.routes:
            app.routing_problem("routes", "routes are set but no backends are named (CodestralExtension.backends).")
        return None
    try:
        specs = {name: route_spec(app, name, raw) for name, raw in named.items()}
    except ValueError as error:
        app.routing_problem("backends", str(error))
        return None
    try:
        routes = (
            parse_routes(app.routes, set(specs))
            if app.routes
            else {kind: Route(tuple(specs)) for kind in ROUTE_KINDS if kind != "markdown"}
        )
    except ValueError as error:
        app.routing_problem("routes", str(error))
        return None
    router = Router(specs, routes)
    router.attach({name: create_backend(spec.settings) for name, spec in specs.items()})
    return router


def usage_ledger(app: CodestralExtension, backend: Backend, chars_per_token: float) -> UsageLedger:
    """The usage table, with the prices configured for each backend."""
    if isinstance(backend, Router):
        prices = {name: spec.price for name, spec in backend.specs.items() if spec.price is not None}
    else:
        try:
            price = Price.parse(app.price_per_million or None, "CodestralExtension.price_per_million")
        except ValueError as error:
            app.routing_problem("price_per_million", str(error))
            price = None
        prices = {backend.label: price} if price is not None else {}
    return UsageLedger(prices, chars_per_token, app.usage_file or None)


def build_service(app: CodestralExtension, **overrides: Any) -> CompletionService:
    settings = backend_settings(app)
    router = routed_backend(app)
    backend = router or usable_backend(app, settings)
    budget = context_budget(app)
    usage = usage_ledger(app, backend, budget.chars_per_token)  # before config_error: a bad price is one
    kernels = None
    manager = getattr(app.serverapp, "kernel_manager", None) if app.serverapp is not None else None
    if app.kernel_context and manager is not None:
        kernels = KernelNamespace(manager, timeout=app.kernel_timeout)
    return CompletionService(
        backend,
        budget,
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
        usage=usage,
        **overrides,
    )
