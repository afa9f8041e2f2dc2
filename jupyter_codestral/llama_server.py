"""``python -m jupyter_codestral.llama_server ARGS``: llama-cpp-python's own server (``python -m
llama_cpp.server ARGS``, the same arguments), kept off llama.cpp's AMX kernels as the embedded model is.

llama.cpp's AMX kernels crash at the first decode on some Intel CPUs (``embedded/cpu.py``), and
``llama_cpp.server`` has no setting to avoid them.  This refuses the process the AMX permission before
llama.cpp loads (its repacked kernels stay); where that cannot be done, or with
``JUPYTER_CODESTRAL_CPU_KERNELS=plain``, the extra buffer types are turned off in every model it loads.
``JUPYTER_CODESTRAL_CPU_KERNELS=amx`` runs it as llama.cpp would.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

from .embedded.cpu import Kernels, guard_process


def without_extra_buffers(llama_cpp: Any) -> None:
    """Every model loaded from now on keeps its weights in plain CPU buffers (``llama_cpp.Llama`` takes
    its model parameters from ``llama_model_default_params`` and offers no switch of its own)."""
    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    llama_cpp.llama_model_default_params = params


def main() -> None:
    choice = os.environ.get("JUPYTER_CODESTRAL_CPU_KERNELS", "").strip().lower() or Kernels.REPACK.value
    try:
        kernels = Kernels(choice)
    except ValueError:
        known = ", ".join(k.value for k in Kernels)
        sys.exit(f"JUPYTER_CODESTRAL_CPU_KERNELS must be one of {known}; it is {choice!r}.")
    guard = guard_process(kernels)
    print(f"jupyter_codestral: CPU kernels: {guard.note}", file=sys.stderr, flush=True)
    if not guard.extra_buffers:
        import llama_cpp.llama_cpp

        without_extra_buffers(llama_cpp.llama_cpp)
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
