"""The Jupyter server extension: configuration, backend lifetime, routes."""

from __future__ import annotations

import os
from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import IOLoop
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode

from .backends import create_backend
from .config import BACKENDS, ConfigError, resolve
from .handlers import CompleteHandler, StatusHandler
from .kernel_summary import KernelNamespace
from .ratelimit import UserRateLimiter
from .request import RequestLimits
from .service import CompletionService, ServiceLimits

CONFIG_TRAITS = (
    "backend", "url", "model", "api_key", "fim_template", "prompt_layout", "prefix_tokens",
    "suffix_tokens", "max_tokens", "temperature", "timeout", "connect_timeout", "retries",
    "openai_suffix", "model_path", "threads", "kv_cache", "kernel_placement", "backend_connections",
)


class CodestralExtension(ExtensionApp):
    name = "jupyter_codestral"
    load_other_extensions = True

    backend = CaselessStrEnum(
        BACKENDS,
        default_value=None,
        allow_none=True,
        help="Completion backend. Default: 'mistral' when CODESTRAL_API_KEY or MISTRAL_API_KEY "
        "is set, else 'local' (the embedded model). Env: JUPYTER_CODESTRAL_BACKEND.",
    ).tag(config=True)
    url = Unicode(
        None, allow_none=True,
        help="Backend base URL, e.g. http://127.0.0.1:8080. For 'mistral' the host root; "
        "'/v1/fim/completions' is added. Env: JUPYTER_CODESTRAL_URL.",
    ).tag(config=True)
    model = Unicode(None, allow_none=True, help="Model name. Env: JUPYTER_CODESTRAL_MODEL.").tag(config=True)
    api_key = Unicode(
        None, allow_none=True,
        help="Key for an OpenAI-compatible server (prefer the JUPYTER_CODESTRAL_API_KEY variable). "
        "Mistral keys come from CODESTRAL_API_KEY or MISTRAL_API_KEY.",
    ).tag(config=True)
    fim_template = Unicode(
        None, allow_none=True,
        help="FIM template for raw-prompt backends: codestral, qwen, starcoder2, deepseek, codellama. "
        "Default: chosen from the model name.",
    ).tag(config=True)
    prompt_layout = CaselessStrEnum(
        ("inline", "split"), default_value=None, allow_none=True,
        help="Where later cells go: 'inline' in the FIM suffix, or 'split' as a separate file before the "
        "FIM part (cache-friendly; needs repo-level FIM tokens). Default per backend.",
    ).tag(config=True)
    prefix_tokens = Int(0, help="Token budget for the text before the cursor (0: the backend's default).").tag(config=True)
    suffix_tokens = Int(0, help="Token budget for the text after the cursor (0: the backend's default).").tag(config=True)
    max_tokens = Int(128, help="Most tokens generated per completion.").tag(config=True)
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
        None, allow_none=True,
        help="'local' backend: a GGUF file to use instead of the bundled model. Env: JUPYTER_CODESTRAL_MODEL_PATH.",
    ).tag(config=True)
    threads = Int(0, help="'local' backend: CPU threads (0: all cores).").tag(config=True)
    kv_cache = Bool(
        True, help="'local' backend: reuse the model's prompt cache between requests (off only to measure its worth)."
    ).tag(config=True)
    max_body_bytes = Int(16 * 1024 * 1024, help="Largest accepted request body; larger ones get 413.").tag(config=True)
    max_cells = Int(5000, help="Most cells accepted in one request.").tag(config=True)
    user_rate_limit = Float(
        0.0, help="Completion requests per minute allowed to each user (0: no limit). For shared servers."
    ).tag(config=True)
    user_rate_burst = Int(30, help="Requests a user may send at once before user_rate_limit applies.").tag(config=True)
    kernel_context = Bool(
        True,
        help="Add a summary of the notebook kernel's variables (names, types, DataFrame columns, signatures) "
        "to the prompt. It is read silently from an idle IPython kernel after executions.",
    ).tag(config=True)
    kernel_placement = CaselessStrEnum(
        ("comment", "file"), default_value="comment",
        help="Where the kernel summary goes: 'comment' lines leading the notebook, or (split layout, raw-prompt "
        "backends) a 'file' of its own before it.",
    ).tag(config=True)
    kernel_timeout = Float(1.0, help="Seconds to wait for the kernel's summary before going without.").tag(config=True)
    log_prompts = Bool(
        False, help="Log completions at INFO level (for debugging only; they contain the user's code)."
    ).tag(config=True)

    service: CompletionService

    def initialize_settings(self) -> None:
        traits = {name: getattr(self, name) for name in CONFIG_TRAITS}
        config_error = None
        try:
            backend_settings, budget = resolve(traits, os.environ)
        except ConfigError as error:
            # Serve a readable error instead of failing the whole Jupyter server.
            config_error = str(error)
            self.log.error("jupyter_codestral: %s", error)
            backend_settings, budget = resolve({**traits, "backend": "mistral"}, {})
        kernels = (
            KernelNamespace(self.serverapp.kernel_manager, timeout=self.kernel_timeout)
            if self.kernel_context and self.serverapp is not None
            else None
        )
        self.service = CompletionService(
            create_backend(backend_settings),
            budget,
            ServiceLimits(
                max_body_bytes=self.max_body_bytes,
                request=RequestLimits(max_cells=self.max_cells, max_total_chars=self.max_body_bytes),
                max_tokens=backend_settings.max_tokens,
            ),
            UserRateLimiter(self.user_rate_limit, self.user_rate_burst),
            kernels=kernels,
            config_error=config_error,
            log_prompts=self.log_prompts,
            log=self.log,
        )
        self.settings["codestral_service"] = self.service
        # Load a local model in the background as soon as the loop runs, so
        # the first keystroke does not pay for it.
        IOLoop.current().add_callback(self.service.start)
        self.log.info(
            "jupyter_codestral: backend %s, model %s, %s",
            backend_settings.backend, backend_settings.model, backend_settings.url,
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/codestral/complete", CompleteHandler),
                (r"/codestral/status", StatusHandler),
            ]
        )

    async def stop_extension(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            await service.aclose()
