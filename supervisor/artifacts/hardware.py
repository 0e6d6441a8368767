"""Host detection (cores, RAM, CPU flags, NVIDIA GPUs) and the image variant it calls for.

`parse_cpuinfo` and `best_variant` are pure; `detect` is the only function that
reads the host (/proc/cpuinfo, psutil, the binfmt_misc entries of qemu-user-static,
and pynvml when it is installed).

arm64 levels: the arm64 image is built for armv8-a (`-march=armv8-a`), which
enables NEON (Advanced SIMD is part of every AArch64 CPU) and neither dotprod
(SDOT/UDOT, armv8.2-a+dotprod, mandatory from armv8.4-a) nor i8mm (SMMLA,
armv8.6-a) nor SVE: it runs on any 64-bit ARM CPU. `llama-supervisorctl build
arm64 --cpu armv8.2-a+dotprod` adds dotprod, `--cpu armv8.6-a` adds dotprod and
i8mm (llama.cpp's Q4_0/Q8_0 kernels use them); such a binary stops with SIGILL
on a CPU without them, which `arm64_levels` of its /proc/cpuinfo tells.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
import psutil

AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})
AVX2 = frozenset({"avx2", "fma", "f16c", "bmi2"})
# The flags worth showing an operator (the full set is long).
NOTABLE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", *sorted(AVX512), "avx512_vnni",
                 "avx_vnni", "amx_int8", "neon", "asimd", "asimddp", "sve", "i8mm")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    vram_bytes: int


@dataclass(frozen=True)
class HostInfo:
    cores: int                       # CPUs this process may run on
    memory_bytes: int
    arch: str                        # normalized: x86_64 | aarch64 | what platform.machine() says
    cpu_flags: frozenset[str]
    gpus: tuple[GpuInfo, ...] = ()
    emulates: frozenset[str] = frozenset()   # other architectures the kernel runs through qemu-user (binfmt_misc)


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8", "armv8l"):
        return "aarch64"
    return m


def parse_cpuinfo(text: str) -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo text: x86 `flags`, ARM `Features` (asimd also counts as neon)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
            break  # every core lists the same flags
    if "asimd" in flags:
        flags.add("neon")
    return frozenset(f.lower() for f in flags)


ARM64_LEVELS = {"neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm"}   # level -> its /proc/cpuinfo Features word


def arm64_levels(host: HostInfo) -> dict[str, bool]:
    """Which of NEON, dotprod and i8mm this arm64 host's CPU has (all False elsewhere)."""
    return {level: host.arch == "aarch64" and word in host.cpu_flags for level, word in ARM64_LEVELS.items()}


def best_cpu_variant(host: HostInfo) -> str:
    """The fastest CPU-only image variant this host can run."""
    if host.arch == "aarch64":
        return "arm64"
    if AVX512 <= host.cpu_flags:
        return "cpu-avx512"
    if AVX2 <= host.cpu_flags:
        return "cpu-avx2"
    return "cpu-generic"


def best_variant(host: HostInfo) -> str:
    """The image variant for `profile: auto`: cuda with an NVIDIA GPU, else the best CPU variant."""
    if host.gpus:
        return "cuda"
    return best_cpu_variant(host)


def runnable_variants(host: HostInfo) -> frozenset[str]:
    """Every variant whose instructions this host has (cuda needs a detected GPU); arm64 also on a host
    that runs aarch64 binaries under emulation (never picked by best_variant: a profile names it)."""
    if host.arch == "aarch64":
        out = {"arm64"}
    else:
        out = {"cpu-generic"}
        if AVX2 <= host.cpu_flags:
            out.add("cpu-avx2")
        if AVX512 <= host.cpu_flags:
            out.add("cpu-avx512")
        if "aarch64" in host.emulates:
            out.add("arm64")
    if host.gpus:
        out.add("cuda")
    return frozenset(out)


def emulated(variant: str, host: HostInfo) -> bool:
    """Whether `variant` runs here through qemu-user: arm64 on a host that is not aarch64."""
    return variant == "arm64" and host.arch != "aarch64"


def missing_for(variant: str, host: HostInfo) -> str:
    """Why `variant` cannot run here, in a few words ('' when it can)."""
    if variant in runnable_variants(host):
        return ""
    if variant == "cuda":
        return "no NVIDIA GPU was detected (install nvidia-ml-py if there is one)"
    if variant == "arm64":
        return (f"the host is {host.arch} and does not run aarch64 binaries under emulation"
                " (install qemu-user-static and binfmt-support: make base-images)")
    if host.arch == "aarch64":
        return f"the host is {host.arch}"
    need = AVX512 if variant == "cpu-avx512" else AVX2
    return "the CPU lacks " + ", ".join(sorted(need - host.cpu_flags))


def default_threads(host: HostInfo, *, cpus: float | None = None, cpuset: str | None = None) -> int:
    """Threads for llama-server when nothing says: the CPUs it may use, at least 1."""
    n = host.cores
    if cpus is not None:
        n = min(n, max(1, int(cpus + 0.999)))
    if cpuset:
        n = min(n, cpuset_size(cpuset))
    return max(1, n)


def cpuset_size(cpuset: str) -> int:
    total = 0
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        total += (int(hi) - int(lo) + 1) if hi else 1
    return max(1, total)


def detect() -> HostInfo:
    """What this host has. NVIDIA GPUs are seen only when `pynvml` (nvidia-ml-py) imports and initializes."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = psutil.cpu_count() or 1
    return HostInfo(
        cores=cores,
        memory_bytes=int(psutil.virtual_memory().total),
        arch=normalize_arch(platform.machine()),
        cpu_flags=parse_cpuinfo(cpuinfo),
        gpus=_nvidia_gpus(),
        emulates=emulated_arches(),
    )


BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_ARCHES = ("aarch64",)          # the architectures an image variant is built for, besides x86_64


def emulated_arches(binfmt: Path = BINFMT) -> frozenset[str]:
    """The architectures whose binaries the kernel hands to qemu-user: an enabled binfmt_misc entry with the
    F flag (the interpreter is opened when registered, so it also works inside a container's root)."""
    out: set[str] = set()
    for arch in QEMU_ARCHES:
        try:
            text = (binfmt / f"qemu-{arch}").read_text()
        except OSError:
            continue
        lines = text.splitlines()
        flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
        if lines and lines[0].strip() == "enabled" and "F" in flags:
            out.add(arch)
    return frozenset(out)


def _nvidia_gpus() -> tuple[GpuInfo, ...]:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver, no device
        return ()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            vram = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            gpus.append(GpuInfo(i, str(name), vram))
        return tuple(gpus)
    except pynvml.NVMLError:  # a GPU that cannot be queried is one we cannot schedule on
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
