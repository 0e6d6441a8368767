"""CPU flag parsing from sample /proc/cpuinfo texts and the image variant each host gets."""

from __future__ import annotations

import pytest

from supervisor.artifacts import hardware
from supervisor.artifacts.hardware import GpuInfo, HostInfo, best_variant, parse_cpuinfo

X86_AVX512 = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f \
avx512dq avx512cd avx512bw avx512vl avx512_vnni
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f \
avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""
X86_AVX2 = """\
processor\t: 0
model name\t: AMD Ryzen 7 3700X 8-Core Processor
flags\t\t: fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand bmi1 avx2 bmi2
"""
X86_BASELINE = """\
processor\t: 0
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 \
pni cx16 popcnt hypervisor
"""
AARCH64 = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
"""
X86_AVX512F_ONLY = X86_AVX2.replace("bmi2", "bmi2 avx512f")  # a partial AVX-512 set is not enough


def host(text: str, arch: str = "x86_64", gpus: tuple[GpuInfo, ...] = ()) -> HostInfo:
    return HostInfo(cores=4, memory_bytes=8 << 30, arch=arch, cpu_flags=parse_cpuinfo(text), gpus=gpus)


@pytest.mark.parametrize(
    ("text", "arch", "variant"),
    [
        (X86_AVX512, "x86_64", "cpu-avx512"),
        (X86_AVX2, "x86_64", "cpu-avx2"),
        (X86_AVX512F_ONLY, "x86_64", "cpu-avx2"),
        (X86_BASELINE, "x86_64", "cpu-generic"),
        ("", "x86_64", "cpu-generic"),
        (AARCH64, "aarch64", "arm64"),
    ],
)
def test_best_variant(text: str, arch: str, variant: str) -> None:
    assert best_variant(host(text, arch)) == variant


def test_nvidia_gpu_picks_cuda() -> None:
    gpu = GpuInfo(0, "NVIDIA L4", 24 << 30)
    assert best_variant(host(X86_AVX2, gpus=(gpu,))) == "cuda"
    assert hardware.best_cpu_variant(host(X86_AVX2, gpus=(gpu,))) == "cpu-avx2"


def test_parse_flags() -> None:
    flags = parse_cpuinfo(X86_AVX512)
    assert {"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags
    assert "neon" not in flags
    arm = parse_cpuinfo(AARCH64)
    assert {"asimd", "neon", "asimddp"} <= arm
    assert parse_cpuinfo("garbage without colons\n") == frozenset()


def test_normalize_arch() -> None:
    assert hardware.normalize_arch("AMD64") == "x86_64"
    assert hardware.normalize_arch("arm64") == "aarch64"
    assert hardware.normalize_arch("riscv64") == "riscv64"


def test_runnable_and_missing() -> None:
    h = host(X86_AVX2)
    assert hardware.runnable_variants(h) == {"cpu-generic", "cpu-avx2"}
    assert hardware.missing_for("cpu-avx512", h) == (
        "the CPU lacks avx512bw, avx512cd, avx512dq, avx512f, avx512vl"
    )
    assert hardware.missing_for("cuda", h).startswith("no NVIDIA GPU was detected")
    assert hardware.missing_for("cpu-avx2", h) == ""
    assert hardware.missing_for("cpu-avx2", host(AARCH64, "aarch64")) == "the host is aarch64"
    assert "arm64" not in hardware.runnable_variants(h)


def test_default_threads() -> None:
    h = host(X86_AVX2)
    assert hardware.default_threads(h) == 4
    assert hardware.default_threads(h, cpus=1.5) == 2
    assert hardware.default_threads(h, cpuset="0,2") == 2
    assert hardware.default_threads(h, cpus=8, cpuset="0-5") == 4


def test_detect_reads_this_host() -> None:
    found = hardware.detect()
    assert found.cores >= 1 and found.memory_bytes > 0 and found.arch
    assert best_variant(found) in {"cpu-generic", "cpu-avx2", "cpu-avx512", "arm64", "cuda"}


# A Neoverse-N2-like host (Graviton 3 class): NEON, dotprod and i8mm. And a Cortex-A72 (Raspberry Pi 4): NEON only.
AARCH64_I8MM = AARCH64.replace("asimddp", "asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp"
                                          " sve2 sveaes svepmull svebitperm svesha3 flagm2 frint svei8mm svebf16 i8mm bf16")
AARCH64_A72 = """\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08
"""


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        (AARCH64_A72, {"neon": True, "dotprod": False, "i8mm": False}),
        (AARCH64, {"neon": True, "dotprod": True, "i8mm": False}),
        (AARCH64_I8MM, {"neon": True, "dotprod": True, "i8mm": True}),
    ],
)
def test_arm64_host_picks_arm64_and_states_its_levels(text: str, levels: dict[str, bool]) -> None:
    h = host(text, "aarch64")
    assert best_variant(h) == "arm64"
    assert hardware.runnable_variants(h) == {"arm64"}
    assert hardware.arm64_levels(h) == levels


def test_arm64_levels_are_false_on_x86() -> None:
    assert hardware.arm64_levels(host(X86_AVX512)) == {"neon": False, "dotprod": False, "i8mm": False}


def test_emulated_arm64_is_runnable_but_never_picked() -> None:
    h = HostInfo(cores=2, memory_bytes=8 << 30, arch="x86_64", cpu_flags=parse_cpuinfo(X86_AVX2),
                 emulates=frozenset({"aarch64"}))
    assert hardware.runnable_variants(h) == {"cpu-generic", "cpu-avx2", "arm64"}
    assert hardware.missing_for("arm64", h) == ""
    assert best_variant(h) == "cpu-avx2"
    assert hardware.missing_for("arm64", host(X86_AVX2)).startswith(
        "the host is x86_64 and does not run aarch64 binaries under emulation")


QEMU_F = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\nmagic 7f454c46\n"


@pytest.mark.parametrize(
    ("entry", "found"),
    [
        (QEMU_F, {"aarch64"}),
        (QEMU_F.replace("enabled", "disabled"), set()),
        (QEMU_F.replace("flags: PF", "flags: P"), set()),      # without F the interpreter is not found in a container
        (None, set()),
    ],
)
def test_emulated_arches_reads_binfmt(tmp_path, entry: str | None, found: set[str]) -> None:  # type: ignore[no-untyped-def]
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    (tmp_path / "qemu-riscv64").write_text(QEMU_F)            # not an architecture any variant is built for
    assert hardware.emulated_arches(tmp_path) == found
