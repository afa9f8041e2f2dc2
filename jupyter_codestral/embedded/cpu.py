"""Which CPU kernels llama.cpp may use on this machine, and what the CPU and the build offer.

llama.cpp moves weights into "extra buffer types" whose kernels suit the CPU: ``CPU_REPACK`` (quantized
blocks interleaved for AVX2/AVX-512: faster prompt reading) and, on Intel CPUs with AMX (Sapphire
Rapids and later: AWS m7i/c7i, GCP C3/C4), ``AMX``.  The AMX kernels segfault at the first decode on
some of those CPUs (llama.cpp #20824, ollama #17205 and #17249), so they are never used unless asked for.

AMX alone is excluded, with the repacked kernels kept, by refusing the worker process the kernel's
AMX permission: llama.cpp asks for it (``arch_prctl(ARCH_REQ_XCOMP_PERM)``) before it offers the AMX
buffer type, and offers none when refused.  A seccomp filter refuses that one call and nothing else.
Where no filter can be installed, the extra buffer types are turned off on AMX machines instead.

Runs in the worker process (and the ``llama_cpp.server`` launcher) before llama.cpp is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Kernels(StrEnum):
    """The CPU kernels a worker may use (``CodestralExtension.cpu_kernels``)."""

    REPACK = "repack"  # llama.cpp's repacked kernels where they apply, never AMX (the default)
    AMX = "amx"  # every extra buffer type llama.cpp offers, AMX included (crashes on some CPUs)
    PLAIN = "plain"  # no extra buffer types: llama.cpp's plain kernels, the slowest and safest


# The CPU's flags that decide llama.cpp's kernels (/proc/cpuinfo's names).
FEATURES = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16")

# What the injected fault names (tests): the worker crashes at its first decode unless its kernels
# are among those listed after "unless:" ("segfault" alone: always).
FAULT_ENV = "JUPYTER_CODESTRAL_WORKER_FAULT"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where the kernel does not list them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def has_amx(flags: set[str]) -> bool:
    return "amx_tile" in flags


@dataclass(frozen=True)
class Guard:
    """How a process keeps AMX out: ``denied`` (the permission refused), or the extra buffer types off."""

    kernels: Kernels
    amx_denied: bool  # the seccomp filter is installed
    extra_buffers: bool  # llama.cpp may use extra buffer types (llama_model_params.use_extra_bufts)
    note: str  # why, in a sentence (logged; doctor prints it)


def guard_process(kernels: Kernels, flags: set[str] | None = None) -> Guard:
    """Make this process safe for ``kernels`` before llama.cpp loads: on a CPU with AMX, the ``repack``
    choice refuses AMX (or, where that cannot be done, turns the extra buffer types off)."""
    flags = cpu_flags() if flags is None else flags
    if kernels == Kernels.PLAIN:
        return Guard(kernels, False, False, "extra buffer types off: llama.cpp's plain CPU kernels")
    if kernels == Kernels.AMX or not has_amx(flags):
        what = "AMX included where the CPU has it" if kernels == Kernels.AMX else "this CPU has no AMX"
        return Guard(kernels, False, True, f"llama.cpp's extra buffer types ({what})")
    try:
        deny_amx()
    except OSError as exc:
        return Guard(kernels, False, False, f"extra buffer types off: AMX could not be excluded alone ({exc.strerror})")
    return Guard(kernels, True, True, "llama.cpp's repacked kernels, AMX refused to this process")


# -- the seccomp filter ---------------------------------------------------------------------
# Eight classic-BPF instructions, written here: the libseccomp bindings are Debian's system Python's
# only, and PyPI's wrappers of it are unmaintained.  Constants from <linux/filter.h>, <linux/seccomp.h>.
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_AUDIT_ARCH_X86_64 = 0xC000003E
_SYS_ARCH_PRCTL = 158  # x86_64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
# struct seccomp_data: nr at 0, arch at 4, args[0] (its low 32 bits, little-endian) at 16.
_NR, _ARCH, _ARG0 = 0, 4, 16


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def deny_amx() -> None:
    """Refuse this process (and the threads it starts from now on) the AMX permission: every other
    system call, and every other ``arch_prctl``, is allowed.  Raises OSError where it cannot be done."""
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOSYS, "not an x86_64 machine")
    program = [
        (_BPF_LD_W_ABS, 0, 0, _ARCH),
        (_BPF_JEQ_K, 0, 5, _AUDIT_ARCH_X86_64),
        (_BPF_LD_W_ABS, 0, 0, _NR),
        (_BPF_JEQ_K, 0, 3, _SYS_ARCH_PRCTL),
        (_BPF_LD_W_ABS, 0, 0, _ARG0),
        (_BPF_JEQ_K, 0, 1, _ARCH_REQ_XCOMP_PERM),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    fprog = _SockFprog(len(program), filters)
    libc = _libc()
    # No new privileges: what lets a process without CAP_SYS_ADMIN install a filter.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def amx_permission_errno() -> int:
    """What asking for the AMX permission gives this process: 0 (granted), else the errno (EPERM where
    :func:`deny_amx` refused it; EINVAL or another on a CPU or kernel without AMX)."""
    libc = _libc()
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0:
        return 0
    return ctypes.get_errno()


# -- what llama.cpp reports ---------------------------------------------------------------------
def build_features(system_info: str) -> dict[str, bool]:
    """The features this llama.cpp build was compiled with (``llama_print_system_info``'s ``NAME = 1``)."""
    return {name: value == "1" for name, value in re.findall(r"([A-Z0-9_]+) = ([01])", system_info)}


# "load_tensors:   CPU_REPACK model buffer size =   116.77 MiB"
_BUFFER_LINE = re.compile(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB")


def buffer_sizes(log_lines: list[str]) -> dict[str, float]:
    """The weights' buffer types and their sizes in MiB, from llama.cpp's loading log."""
    sizes: dict[str, float] = {}
    for line in log_lines:
        if match := _BUFFER_LINE.search(line):
            sizes[match.group(1)] = sizes.get(match.group(1), 0.0) + float(match.group(2))
    return sizes


def injected_fault(kernels: Kernels, threads: int) -> bool:
    """Whether the tests asked this worker to crash at its first decode (``FAULT_ENV``): "segfault"
    always does; "segfault-unless:plain" or "segfault-unless:plain/1" does unless its kernels (and
    thread count) are the ones named."""
    value = os.environ.get(FAULT_ENV, "")
    if value == "segfault":
        return True
    if not value.startswith("segfault-unless:"):
        return False
    safe = value.removeprefix("segfault-unless:")
    name, _, count = safe.partition("/")
    return not (kernels == name and (not count or int(count) == threads))


def crash() -> None:
    """A real segmentation fault in native code (what the AMX kernels do), for the injected fault."""
    ctypes.string_at(0)
