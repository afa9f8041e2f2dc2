"""The extension's settings: traitlets of ``CodestralExtension``, set in ``jupyter_server_config.py``,
on the command line, or (where those say nothing) by environment variables through ``@default``.

A value that cannot work is never fatal: it is recorded in ``config_problems`` with the setting or
variable it came from, and the status and every completion say what to fix.  Each backend kind's
usual values (URL, model, budgets, layout) are in ``backends.KINDS``.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, default, validate
from traitlets.config import Config, Configurable
from traitlets.config.loader import DeferredConfig, DeferredConfigString, LazyConfigValue

from .backends import KINDS, BackendKind, kind_name, url_problem
from .backends.mistral import mistral_url
from .embedded import DEFAULT_KV_CACHE_MB, DEFAULT_KV_DISK_MB
from .embedded.cpu import Kernels
from .policy import EDITS, POLICY_KINDS
from .request import RequestLimits
from .router import REMOTE_FIRST_TOKEN_TIMEOUT_MS
from .templates import LAYOUTS, TEMPLATES


def _literal(text: str, kind: type) -> Any:
    """``text`` as a Python or JSON literal of ``kind`` (a list or a dict), or None."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            return None
    return value if isinstance(value, kind) else None


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


_KINDS_OFF = "a JSON object of glob patterns to lists of kinds"


def _is_kinds_off(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_patterns(kinds) for kinds in value.values())


def _is_patterns(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class CodestralOptions(Configurable):
    """The settings of ``CodestralExtension`` (its section in the configuration)."""

    backend = Unicode(
        help="Completion backend: mistral, openai, ollama, llamacpp, or embedded (the bundled model, offline; "
        "'local' is its former name). Default: $JUPYTER_CODESTRAL_BACKEND, else 'mistral' when CODESTRAL_API_KEY "
        "or MISTRAL_API_KEY is set, else 'embedded'.",
    ).tag(config=True)
    url = Unicode(
        help="Backend base URL, e.g. http://127.0.0.1:8080 (for 'mistral' the host; '/v1/fim/completions' is "
        "added). Default: $JUPYTER_CODESTRAL_URL, else the backend's usual address.",
    ).tag(config=True)
    model = Unicode(help="Model name. Default: $JUPYTER_CODESTRAL_MODEL, else the backend's usual model.").tag(
        config=True
    )
    api_key = Unicode(
        None,
        allow_none=True,
        help="Key for an OpenAI-compatible server. Default: $JUPYTER_CODESTRAL_API_KEY. Mistral keys come from "
        "CODESTRAL_API_KEY (codestral.mistral.ai) or MISTRAL_API_KEY (api.mistral.ai).",
    ).tag(config=True)
    fim_template = Unicode(
        None,
        allow_none=True,
        help=f"FIM template for raw-prompt backends: {', '.join(TEMPLATES)}. Default: chosen from the model name.",
    ).tag(config=True)
    prompt_layout = Unicode(
        help="Where later cells go: 'inline' in the FIM suffix; 'split' as a separate file before the FIM part "
        "(needs repo-level FIM tokens); 'stable' nowhere, so the prompt's start survives typing, cell moves and "
        "executions (for a model whose prompt cache we keep); 'adaptive' (the embedded model) the stable prompt at "
        "once and the split one once read in the background. Default: the backend's.",
    ).tag(config=True)
    prefix_tokens = Int(help="Token budget for the text before the cursor. Default: the backend's.").tag(config=True)
    suffix_tokens = Int(help="Token budget for the text after the cursor. Default: the backend's.").tag(config=True)
    trim_step_tokens = Int(
        help="The earlier cells' window moves in steps of this many tokens, so its start stays put while the "
        "notebook grows. Default: the backend's."
    ).tag(config=True)
    near_tokens = Int(
        help="Where a cell is entered with nothing near it read before, the embedded model answers at once from a "
        "nearer prompt: the nearest earlier cells within this many tokens (0: no nearer prompt; the whole prompt is "
        "read first). Default: the backend's."
    ).tag(config=True)
    near_later_tokens = Int(
        help="The nearer prompt also holds the nearest later cells within this many tokens, before the notebook "
        "(0: none). Default: the backend's."
    ).tag(config=True)
    max_tokens = Int(
        128,
        help="Most tokens a completion may have: the length of a completion when the request does not say, and the "
        "most any request may ask for (the browser's own setting cannot go beyond it).",
    ).tag(config=True)
    min_confidence = Float(
        None,
        allow_none=True,
        help="Hide suggestions the model is unsure of: those whose first line's mean token log-probability is "
        "below this (e.g. -1.0). Backends that report log-probabilities: the embedded model, and OpenAI-compatible "
        "servers asked for logprobs. The first line is then shown once whole. None: every suggestion is shown.",
    ).tag(config=True)
    temperature = Float(0.0, help="Sampling temperature.").tag(config=True)
    timeout = Float(10.0, help="Seconds to wait for the backend's first byte, or between chunks.").tag(config=True)
    connect_timeout = Float(3.0, help="Seconds to wait for a connection to the backend.").tag(config=True)
    retries = Int(2, help="Extra attempts after a 5xx from the backend, before any text arrived.").tag(config=True)
    backend_connections = Int(
        100, help="Most connections open to an HTTP backend at once (a shared inference server's fair share)."
    ).tag(config=True)
    openai_suffix = Bool(
        False, help="The OpenAI-compatible server accepts 'suffix' (else a raw FIM prompt is sent)."
    ).tag(config=True)
    model_path = Unicode(
        None,
        allow_none=True,
        help="embedded model: a GGUF file to use instead of the bundled model. Default: $JUPYTER_CODESTRAL_MODEL_PATH.",
    ).tag(config=True)
    model_sha256 = Unicode(
        None, allow_none=True, help="embedded model: the sha256 that model_path must have (checked before loading)."
    ).tag(config=True)
    threads = Int(0, help="embedded model: CPU threads (0: all cores).").tag(config=True)
    cpu_kernels = Unicode(
        Kernels.REPACK.value,
        help="embedded model: llama.cpp's CPU kernels: 'repack' (its repacked kernels, never AMX, whose kernels "
        "crash on some Intel CPUs), 'amx' (AMX too, where the CPU has it), 'plain' (no repacking). A worker that "
        "crashes at start-up is restarted without extra kernels, then on one thread. "
        "Default: $JUPYTER_CODESTRAL_CPU_KERNELS, else 'repack'.",
    ).tag(config=True)
    kv_cache = Bool(
        True, help="embedded model: reuse the model's prompt cache between requests (off only to measure its worth)."
    ).tag(config=True)
    kv_reuse = Unicode(
        "chunks",
        help="embedded model: what a prompt keeps of the tokens read before: 'chunks' (its start, and every run of "
        "it read elsewhere, moved into place) or 'prefix' (only the start it shares; to measure what moving costs).",
    ).tag(config=True)
    kv_cache_mb = Int(
        DEFAULT_KV_CACHE_MB,
        help="embedded model: memory for copies of prompts the model has read (about 12 KB a token), so "
        "returning to a cell or a notebook does not read it again.",
    ).tag(config=True)
    kv_disk_mb = Int(
        DEFAULT_KV_DISK_MB,
        help="embedded model: disk for the prompts the model has read, in the cache folder (least recently used "
        "go first), so that reopening a notebook after a restart does not read it again (0: nothing on disk). "
        "Nothing is kept for documents under the course policy's disabled_paths.",
    ).tag(config=True)
    kv_disk_dir = Unicode(
        "",
        help="embedded model: the folder for the prompts kept on disk. Empty: kv/ in the cache folder "
        "(~/.cache/jupyter-codestral, or $JUPYTER_CODESTRAL_CACHE_DIR).",
    ).tag(config=True)
    max_body_bytes = Int(16 * 1024 * 1024, help="Largest accepted request body; larger ones get 413.").tag(config=True)
    max_cells = Int(RequestLimits.max_cells, help="Most cells accepted in one request.").tag(config=True)
    user_rate_limit = Float(
        0.0, help="Completion requests per minute allowed to each user (0: no limit). For shared servers."
    ).tag(config=True)
    user_rate_burst = Int(30, help="Requests a user may send at once before user_rate_limit applies.").tag(config=True)
    kernel_context = Bool(
        True,
        help="Add what the notebook's kernel holds (names, types, DataFrame columns, signatures) to the prompt. "
        "It is read silently from an idle IPython kernel after executions.",
    ).tag(config=True)
    kernel_placement = Unicode(
        "comment",
        help="Where the variables no visible cell explains go: 'comment' lines leading the notebook, or (raw-prompt "
        "backends with repository tokens) a 'file' of its own before it.",
    ).tag(config=True)
    kernel_timeout = Float(1.0, help="Seconds to wait for the kernel's summary before going without.").tag(config=True)
    backends = Dict(
        help="Several backends at once, by name: {'codestral': {'backend': 'mistral'}, 'embedded': {'backend': "
        "'embedded'}, 'strong': {'backend': 'openai', 'url': 'http://gpu-box:8000', 'model': '...'}}. Each may also "
        "set url, model, api_key_env (the variable holding its key), fim_template, prompt_layout, redact_secrets, "
        "price_per_million ({'input': 0.3, 'output': 0.9}), prefix_tokens and suffix_tokens (a context budget of "
        "its own), timeout (seconds without a byte), first_token_timeout_ms (how long it may take to its "
        "first text before the next backend of the route takes over; "
        f"{REMOTE_FIRST_TOKEN_TIMEOUT_MS:.0f} for remote backends) and cooldown_ms "
        "(how long a failed backend is skipped at first; it doubles with each failure). Empty: the single "
        "backend of the settings above (with only a Codestral key set: "
        "Codestral, and the embedded model when Codestral fails). "
        "Default: $JUPYTER_CODESTRAL_BACKENDS (a JSON object).",
    ).tag(config=True)
    routes = Dict(
        help="Which backends serve each kind of completion, in order of preference (the next takes over when one "
        "fails): {'line': ['embedded'], 'block': ['codestral', 'embedded'], 'comment': [...], 'markdown': [...]}. "
        "A route may also hedge: {'block': {'backends': ['strong', 'embedded'], 'hedge_ms': 400}} starts the next "
        "backend too when the first has sent no text after 400 ms; the first to send text answers. "
        "Default: $JUPYTER_CODESTRAL_ROUTES (a JSON object), else every backend, in the order given, for line, "
        "block and comment completions (markdown only when configured).",
    ).tag(config=True)
    price_per_million = Dict(
        help="What the single backend costs per million tokens, {'input': 0.3, 'output': 0.9}, for the usage table "
        "(named backends set their own price_per_million). Empty: no cost shown.",
    ).tag(config=True)
    usage_file = Unicode(
        "",
        help="A JSON file where the usage table (requests and tokens per backend and day) is kept across restarts. "
        "Empty (the default): usage is counted for the server's life only and written nowhere. "
        "Default: $JUPYTER_CODESTRAL_USAGE_FILE.",
    ).tag(config=True)
    disabled_paths = List(
        Unicode(),
        help="Course policy: glob patterns, relative to the server's root, of notebooks and files where "
        "completions are refused (403), whatever the browser sends; e.g. ['exams/**', '**/*-exam.ipynb']. "
        "Default: $JUPYTER_CODESTRAL_DISABLED_PATHS (a JSON list).",
    ).tag(config=True)
    allowed_paths = List(
        Unicode(),
        None,
        allow_none=True,
        help="Course policy: when set, completions only in documents matching these glob patterns (None: "
        "everywhere not disabled). Default: $JUPYTER_CODESTRAL_ALLOWED_PATHS (a JSON list).",
    ).tag(config=True)
    disabled_kinds = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="Course policy per kind: glob patterns (as disabled_paths) mapped to the kinds refused there: "
        "'completion' (inline suggestions), 'rewrite', 'fix', 'document', or 'edits' for the three edit kinds; "
        "e.g. {'exercises/**': ['fix'], 'exams/**': ['completion']}. Default: $JUPYTER_CODESTRAL_DISABLED_KINDS "
        "(a JSON object).",
    ).tag(config=True)
    redact_secrets = Bool(
        None,
        allow_none=True,
        help="Replace credentials (cloud keys, service tokens, private keys, passwords) in prompts by a placeholder "
        "before they are sent. Default: on for every backend but the embedded model, whose prompts never leave "
        "the machine.",
    ).tag(config=True)
    log_prompts = Bool(
        False, help="Log completions at INFO level (for debugging only; they contain the user's code)."
    ).tag(config=True)

    # -- where values came from, and what is wrong with them ------------------------
    def __init__(self, **kwargs: Any) -> None:
        # What is wrong with the values, each naming the setting or variable to fix (never fatal).
        self.config_problems: dict[str, str] = {}
        self.backend_from_key = False  # nothing named a backend, a key did: Codestral with a fallback
        self.origins: dict[str, str] = {}  # trait -> the environment variable its value came from
        super().__init__(**kwargs)

    def _env(self, trait: str, variable: str) -> str | None:
        value = os.environ.get(variable, "").strip()
        if not value:
            return None
        self.origins[trait] = variable
        return value

    def where(self, trait: str) -> str:
        """The setting, and the variable its value came from, to name in a message."""
        variable = self.origins.get(trait)
        setting = f"CodestralExtension.{trait}"
        return f"{variable} (or {setting})" if variable else setting

    def problems(self) -> dict[str, str]:
        """What is wrong with the values, each naming what to fix (every value is read first: a default
        from the environment is checked when it is read)."""
        for name in self.trait_names(config=True):
            getattr(self, name)
        return dict(self.config_problems)

    def explain(self, trait: str, problem: str) -> str:
        """``problem`` with the setting (and the variable its value came from) to fix."""
        return f"{problem} Fix {self.where(trait)}."

    def _verdict(self, trait: str, problem: str | None) -> None:
        """Record (or clear) what is wrong with ``trait``'s value, naming where it came from."""
        if problem is None:
            self.config_problems.pop(trait, None)
        else:
            self.config_problems[trait] = self.explain(trait, problem)

    def _load_config(self, cfg: Config, section_names: list[str] | None = None, traits: Any = None) -> None:
        """Load the configuration, setting aside values of the wrong type instead of failing."""
        mine = self._find_my_config(cfg)
        own = self.traits(config=True)
        bad: list[str] = []
        literals: dict[str, Any] = {}
        for name, value in mine.items():
            trait = own.get(name)
            if trait is None or isinstance(value, LazyConfigValue):
                continue
            if isinstance(trait, List | Dict) and isinstance(value, DeferredConfigString):
                # A list or dict on the command line, as a literal ("--X.paths=['exams/**']",
                # "--X.backends={...}"): traitlets reads only repeated flags for an extension's.
                parsed = _literal(value, list if isinstance(trait, List) else dict)
                if parsed is not None:
                    literals[name] = value = parsed
            check = getattr(trait, "validate", None)  # the trait's type check (not our cross-checks)
            try:
                if check is not None:
                    check(self, value.get_value(trait) if isinstance(value, DeferredConfig) else deepcopy(value))
            except (TraitError, ValueError) as error:
                bad.append(name)
                self.config_problems[name] = f"CodestralExtension.{name} = {value!r} cannot be used: {error}"
        if bad or literals:
            cfg = deepcopy(cfg)
            for section in cfg.values():
                if isinstance(section, Config):
                    for name in bad:
                        section.pop(name, None)
                    for name, parsed in literals.items():
                        if name in section and name not in bad:
                            section[name] = parsed
        super()._load_config(cfg, section_names, traits)

    @property
    def kind(self) -> BackendKind:
        """The backend's usual settings (the embedded model's when the backend is unknown)."""
        return KINDS.get(self.backend, KINDS["embedded"])

    # -- defaults from the environment, and checks --------------------------------
    @default("backend")
    def _default_backend(self) -> str:
        named = self._env("backend", "JUPYTER_CODESTRAL_BACKEND")
        if named is not None:
            return self._check_backend(named)
        keys = any(os.environ.get(k, "").strip() for k in ("CODESTRAL_API_KEY", "MISTRAL_API_KEY"))
        self.backend_from_key = keys  # nothing chose a backend, a key did: Codestral with a fallback
        return "mistral" if keys else "embedded"

    @validate("backend")
    def _validate_backend(self, proposal: Any) -> str:
        return self._check_backend(proposal.value)

    def _check_backend(self, value: str) -> str:
        value = kind_name(value)
        unknown = f"Unknown backend {value!r}; choose one of {', '.join(KINDS)}."
        self._verdict("backend", None if value in KINDS else unknown)
        return value

    @default("url")
    def _default_url(self) -> str:
        named = self._env("url", "JUPYTER_CODESTRAL_URL")
        if named is not None:
            return self._check_url(named)
        return mistral_url(os.environ) if self.backend == "mistral" else self.kind.url

    @validate("url")
    def _validate_url(self, proposal: Any) -> str:
        return self._check_url(proposal.value)

    def _check_url(self, value: str) -> str:
        value = value.strip().rstrip("/")
        self._verdict("url", url_problem(self.backend, value))
        return value

    @default("model")
    def _default_model(self) -> str:
        return self._env("model", "JUPYTER_CODESTRAL_MODEL") or self.kind.model

    @default("api_key")
    def _default_api_key(self) -> str | None:
        return self._env("api_key", "JUPYTER_CODESTRAL_API_KEY")

    @default("model_path")
    def _default_model_path(self) -> str | None:
        return self._env("model_path", "JUPYTER_CODESTRAL_MODEL_PATH")

    @default("cpu_kernels")
    def _default_cpu_kernels(self) -> str:
        return self._env("cpu_kernels", "JUPYTER_CODESTRAL_CPU_KERNELS") or Kernels.REPACK.value

    @validate("cpu_kernels")
    def _validate_cpu_kernels(self, proposal: Any) -> str:
        value = str(proposal.value).strip().lower() or Kernels.REPACK.value
        known = [k.value for k in Kernels]
        wrong = f"cpu_kernels must be one of {', '.join(known)}; it is {value!r}."
        self._verdict("cpu_kernels", None if value in known else wrong)
        return value

    @default("prompt_layout")
    def _default_prompt_layout(self) -> str:
        return self.kind.layout

    @validate("prompt_layout")
    def _validate_prompt_layout(self, proposal: Any) -> str:
        value = str(proposal.value).strip().lower() or self.kind.layout
        unknown = f"Unknown prompt layout {value!r}; choose one of {', '.join(LAYOUTS)}."
        self._verdict("prompt_layout", None if value in LAYOUTS else unknown)
        return value

    @validate("fim_template")
    def _validate_fim_template(self, proposal: Any) -> str | None:
        value = (proposal.value or "").strip().lower() or None
        unknown = f"Unknown FIM template {value!r}; known: {', '.join(TEMPLATES)}."
        self._verdict("fim_template", None if value is None or value in TEMPLATES else unknown)
        return value

    @validate("kv_reuse")
    def _validate_kv_reuse(self, proposal: Any) -> str:
        value = str(proposal.value).strip().lower()
        wrong = f"kv_reuse must be 'chunks' or 'prefix'; it is {value!r}."
        self._verdict("kv_reuse", None if value in ("chunks", "prefix") else wrong)
        return value

    @validate("kernel_placement")
    def _validate_kernel_placement(self, proposal: Any) -> str:
        value = str(proposal.value).strip().lower()
        wrong = f"kernel_placement must be 'comment' or 'file'; it is {value!r}."
        self._verdict("kernel_placement", None if value in ("comment", "file") else wrong)
        return value

    @default("prefix_tokens")
    def _default_prefix_tokens(self) -> int:
        return self.kind.budget.prefix_tokens

    @default("suffix_tokens")
    def _default_suffix_tokens(self) -> int:
        return self.kind.budget.suffix_tokens

    @default("trim_step_tokens")
    def _default_trim_step_tokens(self) -> int:
        return self.kind.budget.trim_step_tokens

    @default("near_tokens")
    def _default_near_tokens(self) -> int:
        return self.kind.budget.near_tokens

    @default("near_later_tokens")
    def _default_near_later_tokens(self) -> int:
        return self.kind.budget.near_later_tokens

    @validate("near_tokens", "near_later_tokens")
    def _validate_near_budget(self, proposal: Any) -> int:
        value = int(proposal.value)
        wrong = f"{proposal.trait.name} must be 0 (none) or a number of tokens; it is {value}."
        self._verdict(proposal.trait.name, None if value >= 0 else wrong)
        return max(0, value)

    @validate("prefix_tokens", "suffix_tokens", "trim_step_tokens")
    def _validate_budget(self, proposal: Any) -> int:
        value = int(proposal.value)
        if value <= 0:  # 0 used to mean "the backend's default": it still does
            return int(getattr(self.kind.budget, proposal.trait.name))
        return value

    @default("backends")
    def _default_backends(self) -> dict[str, Any]:
        value = self._json_env("backends", "JUPYTER_CODESTRAL_BACKENDS", _is_object, "a JSON object")
        return value if value is not None else {}

    @default("routes")
    def _default_routes(self) -> dict[str, Any]:
        value = self._json_env("routes", "JUPYTER_CODESTRAL_ROUTES", _is_object, "a JSON object")
        return value if value is not None else {}

    @default("usage_file")
    def _default_usage_file(self) -> str:
        return self._env("usage_file", "JUPYTER_CODESTRAL_USAGE_FILE") or ""

    @default("disabled_paths")
    def _default_disabled_paths(self) -> list[str]:
        return self._path_list("disabled_paths", "JUPYTER_CODESTRAL_DISABLED_PATHS") or []

    @default("allowed_paths")
    def _default_allowed_paths(self) -> list[str] | None:
        return self._path_list("allowed_paths", "JUPYTER_CODESTRAL_ALLOWED_PATHS")

    @default("disabled_kinds")
    def _default_disabled_kinds(self) -> dict[str, list[str]]:
        value = self._json_env("disabled_kinds", "JUPYTER_CODESTRAL_DISABLED_KINDS", _is_kinds_off, _KINDS_OFF)
        return self._kinds_verdict(value) if value is not None else {}

    @validate("disabled_kinds")
    def _validate_disabled_kinds(self, proposal: Any) -> dict[str, list[str]]:
        return self._kinds_verdict(proposal.value)  # the trait's types are checked before

    def _kinds_verdict(self, value: dict[str, list[str]]) -> dict[str, list[str]]:
        known = (*POLICY_KINDS, EDITS)
        unknown = sorted({kind for kinds in value.values() for kind in kinds if kind not in known})
        wrong = f"disabled_kinds names kinds that do not exist ({', '.join(unknown)}); known: {', '.join(known)}."
        self._verdict("disabled_kinds", wrong if unknown else None)
        return value

    def _path_list(self, trait: str, variable: str) -> list[str] | None:
        value: list[str] | None = self._json_env(trait, variable, _is_patterns, "a JSON list of glob patterns")
        return value

    def _json_env(self, trait: str, variable: str, is_good: Callable[[Any], bool], shape: str) -> Any:
        """``$variable`` read as JSON of the wanted ``shape``; None when it is unset, or cannot be used (the
        problem is then recorded for ``trait``)."""
        named = self._env(trait, variable)
        if named is None:
            return None
        try:
            value = json.loads(named)
        except ValueError as error:
            self._verdict(trait, f"{variable} is not valid JSON ({error}); {variable} must be {shape}.")
            return None
        good = is_good(value)
        self._verdict(trait, None if good else f"{variable} must be {shape}; it is {named!r}.")
        return value if good else None
