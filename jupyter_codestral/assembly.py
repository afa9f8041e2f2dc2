"""From the extension's settings to the service that serves completions, for the server and the command line.

:func:`assemble` reads the settings (:class:`~jupyter_codestral.options.CodestralOptions`) and the
environment it is given (keys are read from it where a backend needs one), and returns the service
with every problem it found, as values: the server stores them, ``jupyter codestral doctor`` prints
them, and the service answers every request with them while they last.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tornado import web

from .backends import KINDS, Backend, BackendSettings, create_backend, kind_name, url_problem
from .backends.mistral import mistral_key, mistral_url
from .context import ContextBudget
from .kernel_namespace import KernelNamespace
from .options import CodestralOptions
from .policy import PathPolicy, kinds_named
from .ratelimit import UserRateLimiter
from .request import RequestLimits
from .router import (
    COOLDOWN_FIRST_MS,
    REMOTE_FIRST_TOKEN_TIMEOUT_MS,
    Completer,
    Direct,
    Router,
    RouteSpec,
)
from .routes import DEFAULT_KINDS, EDIT_KINDS, Route, parse_routes
from .service import CompletionService, ServiceLimits, SessionPaths
from .templates import PromptFormat
from .usage import Price, UsageLedger
from .validation import is_positive


@dataclass(frozen=True)
class Problem:
    """Something in the configuration that cannot work: the setting, and what to do."""

    setting: str
    message: str


@dataclass(frozen=True)
class Assembly:
    """The service, and what is wrong with the configuration it was built from."""

    service: CompletionService
    problems: tuple[Problem, ...]

    @property
    def config_error(self) -> str | None:
        return self.service.config_error


def backend_settings(options: CodestralOptions, environ: Mapping[str, str] | None = None) -> BackendSettings:
    """The single backend's settings (and the base of each named backend's)."""
    environ = os.environ if environ is None else environ
    if options.backend == "mistral":
        api_key, key_name = mistral_key(options.url, environ)
    else:
        api_key = options.api_key
        key_name = options.origins.get("api_key", "CodestralExtension.api_key") if api_key else None
    return BackendSettings(
        backend=options.backend,
        url=options.url,
        model=options.model,
        api_key=api_key or None,
        key_name=key_name,
        prompt=PromptFormat(options.prompt_layout, options.fim_template, options.kernel_placement == "file"),
        temperature=options.temperature,
        max_tokens=options.max_tokens,
        timeout=options.timeout,
        connect_timeout=options.connect_timeout,
        retries=options.retries,
        max_connections=max(1, options.backend_connections),
        openai_suffix=options.openai_suffix,
        model_path=options.model_path or None,
        model_sha256=options.model_sha256 or None,
        threads=options.threads or None,
        cpu_kernels=options.cpu_kernels,
        kv_reuse=options.kv_reuse if options.kv_cache else "off",
        kv_cache_mb=options.kv_cache_mb,
        kv_disk_mb=options.kv_disk_mb,
        kv_disk_dir=options.kv_disk_dir or None,
        course_policy=path_policy(options),
        redact_secrets=redacts_secrets(options),
        confidence=options.min_confidence is not None,
    )


def context_budget(options: CodestralOptions) -> ContextBudget:
    return ContextBudget(
        prefix_tokens=options.prefix_tokens,
        suffix_tokens=options.suffix_tokens,
        trim_step_tokens=options.trim_step_tokens,
        near_tokens=options.near_tokens,
        near_later_tokens=options.near_later_tokens,
    )


def redacts_secrets(options: CodestralOptions, kind: str | None = None) -> bool:
    """Whether prompts to a backend of ``kind`` (the configured one by default) are redacted: as
    configured, else for every backend whose prompts leave the process."""
    if options.redact_secrets is not None:
        return options.redact_secrets
    return (kind or options.backend) != "embedded"


def path_policy(options: CodestralOptions) -> PathPolicy:
    allowed = options.allowed_paths
    kinds_off = tuple((pattern, kinds_named(kinds)) for pattern, kinds in options.disabled_kinds.items())
    return PathPolicy(tuple(options.disabled_paths), None if allowed is None else tuple(allowed), kinds_off)


def session_path_lookup(sessions: Any) -> SessionPaths | None:
    """How the service learns which document a kernel belongs to (for the course policy)."""
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


def check_positive(value: Any, where: str, unit: str, whole: bool = False) -> None:
    """ValueError unless ``value`` is a positive number (a whole one, for ``whole``)."""
    if not is_positive(value, whole):
        raise ValueError(f"{where} must be a positive number of {unit}.")


def route_spec(options: CodestralOptions, name: str, raw: Any, environ: Mapping[str, str] | None = None) -> RouteSpec:
    """One named backend, from the single-backend settings with its own overrides; ValueError says what is wrong."""
    environ = os.environ if environ is None else environ
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
    url = str(raw.get("url") or (mistral_url(environ) if kind_id == "mistral" else kind.url)).strip().rstrip("/")
    problem = url_problem(kind_id, url)
    if problem:
        raise ValueError(f"backends[{name!r}]: {problem}")
    key_env = raw.get("api_key_env")
    api_key: str | None
    key_name: str | None
    if key_env:
        api_key, key_name = environ.get(str(key_env), "").strip() or None, str(key_env)
    elif kind_id == "mistral":
        api_key, key_name = mistral_key(url, environ)
    else:
        api_key, key_name = None, None
    first_token_timeout_ms = raw.get(
        "first_token_timeout_ms", None if kind_id == "embedded" else REMOTE_FIRST_TOKEN_TIMEOUT_MS
    )
    cooldown_ms = raw.get("cooldown_ms", COOLDOWN_FIRST_MS)
    timeout = raw.get("timeout", options.timeout)
    for key, value, unit in (
        ("first_token_timeout_ms", first_token_timeout_ms, "milliseconds"),
        ("cooldown_ms", cooldown_ms, "milliseconds"),
        ("timeout", timeout, "seconds"),
    ):
        if value is not None or key == "timeout":  # null: no first-token timeout, the usual cool-down
            check_positive(value, f"backends[{name!r}].{key}", unit)
    redact = raw.get("redact_secrets", redacts_secrets(options, kind_id))
    settings = replace(
        backend_settings(options, environ),
        backend=kind_id,
        url=url,
        model=str(raw.get("model") or kind.model),
        api_key=api_key,
        key_name=key_name,
        prompt=PromptFormat(
            raw.get("prompt_layout") or kind.layout, raw.get("fim_template"), options.kernel_placement == "file"
        ),
        redact_secrets=bool(redact),
        timeout=float(timeout),
    )
    price = Price.parse(raw.get("price_per_million"), f"backends[{name!r}].price_per_million")
    budget = None
    if "prefix_tokens" in raw or "suffix_tokens" in raw:
        sizes = {key: raw.get(key, getattr(options, key)) for key in ("prefix_tokens", "suffix_tokens")}
        for key, value in sizes.items():
            check_positive(value, f"backends[{name!r}].{key}", "tokens", whole=True)
        budget = replace(context_budget(options), **sizes)
    return RouteSpec(name, settings, first_token_timeout_ms, cooldown_ms or COOLDOWN_FIRST_MS, price, budget)


def named_backends(options: CodestralOptions) -> dict[str, Any]:
    """The named backends: as configured; with only a Codestral (or Mistral) key set and nothing else,
    Codestral, and the embedded model when Codestral fails (loaded only then)."""
    if options.backends or options.routes or options.backend != "mistral" or not options.backend_from_key:
        return dict(options.backends)
    return {
        "codestral": {"backend": "mistral", "url": options.url, "model": options.model},
        "embedded": {"backend": "embedded"},
    }


def named_specs(options: CodestralOptions, environ: Mapping[str, str]) -> tuple[dict[str, RouteSpec], dict[str, str]]:
    """Each named backend on its own: the specs that can work, and what is wrong with each of the others
    (one mistake hides no other: the doctor still asks every backend it can build)."""
    specs: dict[str, RouteSpec] = {}
    wrong: dict[str, str] = {}
    for name, raw in named_backends(options).items():
        try:
            specs[name] = route_spec(options, name, raw, environ)
        except ValueError as error:
            wrong[name] = str(error)
    return specs, wrong


class _Builder:
    """One assembly: the settings, the environment, and the problems found on the way."""

    def __init__(self, options: CodestralOptions, environ: Mapping[str, str]) -> None:
        self.options = options
        self.environ = environ
        self.problems = [Problem(setting, message) for setting, message in options.problems().items()]

    def problem(self, setting: str, message: str) -> None:
        self.problems.append(Problem(setting, self.options.explain(setting, message)))

    def router(self) -> Router | None:
        """The router over the named backends (None when there are none, or they cannot work)."""
        options = self.options
        named = named_backends(options)
        if not named:
            if options.routes:
                self.problem("routes", "routes are set but no backends are named (CodestralExtension.backends).")
            return None
        specs, wrong = named_specs(options, self.environ)
        for message in wrong.values():
            self.problem("backends", message)
        if wrong:
            return None
        try:
            routes = (
                parse_routes(options.routes, set(specs))
                if options.routes
                else {kind: Route(tuple(specs)) for kind in (*DEFAULT_KINDS, *EDIT_KINDS)}
            )
        except ValueError as error:
            self.problem("routes", str(error))
            return None
        return Router(specs, routes, {name: create_backend(spec.settings) for name, spec in specs.items()})

    def single(self, settings: BackendSettings) -> Backend:
        """The configured backend; with a configuration that cannot work, one that stays idle (the
        service answers every request with the configuration's problem instead)."""
        try:
            return create_backend(settings)
        except ValueError:
            return create_backend(replace(settings, backend="mistral", url=KINDS["mistral"].url))

    def ledger(self, completer: Completer, chars_per_token: float) -> UsageLedger:
        """The usage table, with the prices configured for each backend."""
        options = self.options
        if isinstance(completer, Router):
            prices = {name: spec.price for name, spec in completer.specs.items() if spec.price is not None}
        else:
            try:
                price = Price.parse(options.price_per_million or None, "CodestralExtension.price_per_million")
            except ValueError as error:
                self.problem("price_per_million", str(error))
                price = None
            label = completer.summary()["backend"]
            prices = {label: price} if price is not None else {}
        return UsageLedger(prices, chars_per_token, options.usage_file or None)


def assemble(
    options: CodestralOptions,
    *,
    environ: Mapping[str, str] | None = None,
    kernel_manager: Any = None,
    session_manager: Any = None,
    log: logging.Logger | None = None,
) -> Assembly:
    """The completion service the settings describe, and every problem with them.

    ``kernel_manager``: the server's, for the kernel summary (none on the command line);
    ``session_manager``: for the course policy's check of the document a kernel runs for."""
    build = _Builder(options, os.environ if environ is None else environ)
    router = build.router()
    completer: Completer = router or Direct(build.single(backend_settings(options, build.environ)))
    budget = context_budget(options)
    usage = build.ledger(completer, budget.chars_per_token)
    kernels = None
    if options.kernel_context and kernel_manager is not None:
        kernels = KernelNamespace(kernel_manager, timeout=options.kernel_timeout)
    messages = list(dict.fromkeys(problem.message for problem in build.problems))
    service = CompletionService(
        completer,
        budget,
        ServiceLimits(
            max_body_bytes=options.max_body_bytes,
            request=RequestLimits(max_cells=options.max_cells, max_total_chars=options.max_body_bytes),
            max_tokens=options.max_tokens,
            min_confidence=options.min_confidence,
        ),
        UserRateLimiter(options.user_rate_limit, options.user_rate_burst),
        kernels=kernels,
        policy=path_policy(options),
        session_paths=session_path_lookup(session_manager),
        config_error=" ".join(messages) if messages else None,
        log_prompts=options.log_prompts,
        log=log,
        usage=usage,
    )
    return Assembly(service, tuple(build.problems))
