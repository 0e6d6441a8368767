"""Host llama-server binaries for the process runtime: taken out of a locked image, or compiled here.

Either way the binary lands under <state dir>/bin/<variant>-<sha256[:12]>/llama-server
(mode 0755, so the unprivileged uid the runtime drops to can execute it) and its
lock record holds the same facts as an image's: SHA-256 of the file, `--version`,
every flag `--help` lists and those it warns about. `BinaryVerifier`
(runtime/process/verifier.py) is the check before every create;
the runtime hashes the very file descriptor it executes once more at launch.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from supervisor import paths
from supervisor.errors import BuildError, ImageMismatch
from supervisor.artifacts.hashing import HashCache, sha256_file
from supervisor.artifacts.lock import BINARY_ID_PREFIX, BinaryRecord, ImageLock, ImageRecord

Progress = Callable[[str], None]

# Each CPU variant's instruction sets: the same switches as images/Dockerfile.
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "cpu-generic": ("-DGGML_SSE42=OFF", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_BMI2=OFF",
                    "-DGGML_FMA=OFF", "-DGGML_F16C=OFF", "-DGGML_AVX512=OFF"),
    "cpu-avx2": ("-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_BMI2=ON",
                 "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=OFF"),
    "cpu-avx512": ("-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_BMI2=ON",
                   "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=ON"),
    "arm64": ("-DGGML_CPU_ARM_ARCH=armv8-a",),
}
COMMON_CMAKE = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF",
    "-DGGML_BACKEND_DL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
)


def bin_dir() -> Path:
    return paths.state_dir() / "bin"


def cmake_args(variant: str, *, build_number: int, commit: str, cuda_architectures: str | None = None
               ) -> list[str]:
    """The cmake configure arguments for a native build of `variant` (pure)."""
    args = [*COMMON_CMAKE, f"-DLLAMA_BUILD_NUMBER={build_number}", f"-DLLAMA_BUILD_COMMIT={commit}"]
    if variant == "cuda":
        if not cuda_architectures:
            raise BuildError("a native cuda build needs CMAKE_CUDA_ARCHITECTURES: pass --cuda-arch (e.g. 90 "
                             "for an H100), or run it on a host where nvidia-ml-py sees the GPU")
        # The CUDA runtime links dynamically (as in images/cuda.Dockerfile); the rest stays static.
        return [*args, "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures}"]
    if variant not in ISA_FLAGS:
        raise BuildError(f"unknown variant {variant!r}: use one of {', '.join([*ISA_FLAGS, 'cuda'])}")
    return [*args, "-DCMAKE_EXE_LINKER_FLAGS=-static", *ISA_FLAGS[variant]]


def cuda_architectures(capabilities: list[tuple[int, int]]) -> str:
    """CMAKE_CUDA_ARCHITECTURES from the cards' compute capabilities: (9, 0) -> "90" (pure)."""
    if not capabilities:
        raise BuildError("no NVIDIA GPU detected: pass --cuda-arch explicitly")
    return ";".join(sorted({f"{major}{minor}" for major, minor in capabilities}))


def detect_compute_capabilities() -> list[tuple[int, int]]:
    """The NVIDIA cards' compute capabilities, through nvidia-ml-py, else nvidia-smi; [] without a GPU."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            return [tuple(pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(i)))
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no module, no driver, no device: try nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    caps = []
    for line in out.split():
        major, _, minor = line.strip().partition(".")
        if major.isdigit():
            caps.append((int(major), int(minor or 0)))
    return caps


def install(src: Path, variant: str) -> tuple[Path, str]:
    """Copy a binary into the state dir under its content address; returns (path, sha256)."""
    digest = sha256_file(src)
    target_dir = bin_dir() / f"{variant}-{digest[:12]}"
    target = target_dir / "llama-server"
    target_dir.mkdir(parents=True, exist_ok=True)
    for d in (bin_dir().parent, bin_dir(), target_dir):
        d.chmod(d.stat().st_mode | 0o755)        # the unprivileged uid must reach and run it
    if not target.exists() or sha256_file(target) != digest:
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".llama-server.")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    return target, digest


def _run_binary(path: Path, args: list[str]) -> str:
    try:
        proc = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"}, cwd="/", stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageMismatch(f"{path}: llama-server {' '.join(args)} failed: {e}") from e
    if proc.returncode != 0:
        raise ImageMismatch(f"{path}: llama-server {' '.join(args)} exited {proc.returncode}: "
                            f"{proc.stderr.strip()[-300:]}")
    return proc.stdout + proc.stderr


def derive(path: Path, *, variant: str, origin: str, source_sha256: str, build_number: int,
           built_at: str = "") -> BinaryRecord:
    """Every fact the lock records about a host binary, read from the file now."""
    from supervisor.artifacts.images import version_line, parse_help

    version = version_line(_run_binary(path, ["--version"]).strip())
    flags, warned = parse_help(_run_binary(path, ["--help"]))
    return BinaryRecord(
        variant=variant, path=str(path), sha256=sha256_file(path), version=version,
        build_number=build_number, flags=flags,
        source_sha256=source_sha256, built_at=built_at or _now(), origin=origin,
        architecture=os.uname().machine.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        warned_flags=warned,
    )


def from_image(client: object, record: ImageRecord, *, progress: Progress) -> BinaryRecord:
    """Take the static llama-server out of a locked image; refused unless it hashes as the lock says."""
    import docker.errors

    from supervisor.artifacts.images import BINARY

    progress(f"take {BINARY} out of {record.tag} ({record.image_id[:19]})")
    try:
        container = client.containers.create(record.image_id, network_disabled=True)  # type: ignore[attr-defined]
        try:
            stream, _ = container.get_archive(BINARY)
            blob = b"".join(stream)
        finally:
            container.remove(force=True)
    except docker.errors.DockerException as e:
        raise ImageMismatch(f"cannot read {BINARY} from {record.tag}: {e}") from e
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            f = tar.extractfile(tar.getmember(os.path.basename(BINARY)))
            if f is None:
                raise ImageMismatch(f"{record.tag}: {BINARY} is not a regular file")
            out = Path(tmp) / "llama-server"
            out.write_bytes(f.read())
        path, digest = install(out, record.variant)
    if digest != record.binary_sha256:
        path.unlink(missing_ok=True)
        raise ImageMismatch(
            f"llama-server taken out of {record.tag} has SHA-256 {digest}, the lock has {record.binary_sha256}: "
            f"run 'llama-supervisorctl verify {record.variant}'"
        )
    return derive(path, variant=record.variant, origin=f"image:{record.image_id}",
                  source_sha256=record.source_sha256, build_number=record.build_number)


def build_native(variant: str, source: object, *, progress: Progress, jobs: int | None = None,
                 cuda_arch: str | None = None) -> BinaryRecord:
    """Compile llama-server from the verified tarball with the host's cmake and compiler."""
    from supervisor.artifacts.source import SourceTarball, check_sha256

    assert isinstance(source, SourceTarball)
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError("a native build needs cmake on PATH (apt-get install cmake, or pip install cmake)")
    args = cmake_args(variant, build_number=source.build_number, commit=source.commit,
                      cuda_architectures=cuda_arch)
    check_sha256(source.path, source.sha256, what="llama.cpp source")
    work = paths.state_dir() / "native-build" / f"{variant}-{source.sha256[:12]}"
    tree = work / "src"
    if not (tree / "CMakeLists.txt").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        progress(f"unpack {source.path} (SHA-256 {source.sha256[:12]}... verified)")
        with tarfile.open(source.path) as tar:
            tar.extractall(work / "unpacked", filter="data")
        top = next((p.parent for p in sorted((work / "unpacked").glob("**/llama.cpp/CMakeLists.txt"))), None)
        if top is None:
            raise BuildError(f"{source.path}: no llama.cpp/CMakeLists.txt in the tarball")
        top.rename(tree)
        shutil.rmtree(work / "unpacked", ignore_errors=True)
    build = work / "build"
    _stream([cmake, "-S", str(tree), "-B", str(build), *args], progress)
    _stream([cmake, "--build", str(build), "--target", "llama-server", "-j", str(jobs or os.cpu_count() or 1)],
            progress)
    built = build / "bin" / "llama-server"
    stripped = work / "llama-server"
    if shutil.which("strip"):
        subprocess.run(["strip", "-o", str(stripped), str(built)], check=True)
    else:
        shutil.copyfile(built, stripped)
    path, _ = install(stripped, variant)
    return derive(path, variant=variant, origin="native", source_sha256=source.sha256,
                  build_number=source.build_number)


def _stream(cmd: list[str], progress: Progress) -> None:
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-30:]
        progress(line.rstrip())
    if proc.wait() != 0:
        raise BuildError(f"{' '.join(cmd[:3])}... failed ({proc.returncode}):\n" + "\n".join(tail))


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


_ID = re.compile("^" + re.escape(BINARY_ID_PREFIX) + "[0-9a-f]{64}$")


def verify_file(record: BinaryRecord, hashes: HashCache | None = None) -> None:
    """The file at record.path must hash as recorded (raises ImageMismatch). With `hashes`, a file whose
    identity (device, inode, size, mtime, ctime) is the one hashed before is not read again."""
    path = Path(record.path)
    if not path.is_file():
        raise ImageMismatch(f"llama-server binary {path} is gone: run 'llama-supervisorctl build --native "
                            f"{record.variant}'")
    actual = hashes.sha256_path(path) if hashes is not None else sha256_file(path)
    if actual != record.sha256:
        raise ImageMismatch(
            f"llama-server binary {path} has SHA-256 {actual}, the lock has {record.sha256}: refusing to start; "
            f"rebuild with 'llama-supervisorctl build --native {record.variant}'"
        )


def binary_for(lock: ImageLock, binary_id: str) -> BinaryRecord | None:
    if not _ID.match(binary_id):
        return None
    return lock.binary_by_id(binary_id)
