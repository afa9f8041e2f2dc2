"""The Jupyter server extension: the completion service's lifetime and its routes.

Its settings are :class:`~jupyter_codestral.options.CodestralOptions`'; :func:`~jupyter_codestral.assembly.assemble`
turns them into the service, for the server as for ``jupyter codestral``.
"""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import IOLoop

from .assembly import Assembly, assemble
from .handlers import AcceptanceHandler, CompleteHandler, EditHandler, StatusHandler
from .options import CodestralOptions
from .service import CompletionService


class CodestralExtension(CodestralOptions, ExtensionApp):
    name = "jupyter_codestral"
    load_other_extensions = True

    assembly: Assembly

    @property
    def service(self) -> CompletionService:
        return self.assembly.service

    def initialize_settings(self) -> None:
        self.assembly = assemble(
            self,
            kernel_manager=getattr(self.serverapp, "kernel_manager", None),
            session_manager=getattr(self.serverapp, "session_manager", None),
            log=self.log,
        )
        self.settings["codestral_service"] = self.service
        if self.service.config_error:
            # Served as a readable error instead of failing the whole Jupyter server.
            self.log.error("jupyter_codestral: %s", self.service.config_error)
        # Load a local model in the background as soon as the loop runs, so
        # the first keystroke does not pay for it.
        IOLoop.current().add_callback(self.service.start)
        who = self.service.completer.summary()
        self.log.info("jupyter_codestral: backend %s, model %s, %s", who["backend"], who["model"], who["base_url"])

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/codestral/complete", CompleteHandler),
                (r"/codestral/edit", EditHandler),
                (r"/codestral/acceptance", AcceptanceHandler),
                (r"/codestral/status", StatusHandler),
            ]
        )

    async def stop_extension(self) -> None:
        assembly = getattr(self, "assembly", None)
        if assembly is not None:
            await assembly.service.aclose()
