"""A ContainerSpec as a host process: argv, environment, user and limits (pure, no I/O).

The spec is rendered once, for containers; the process runtime maps it here:
paths inside the container (/models/..., /run/secrets/api-key) become the host
paths their mounts name, `--host`/`--port` become spec.host_ip/spec.host_port
(the address Docker would publish on), and a GPU request becomes
CUDA_VISIBLE_DEVICES (the -ngl layers are already in the rendered argv).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.core.spec import ContainerSpec

ARGV0 = "llama-server"
HOST_FLAGS = frozenset({"--host"})
PORT_FLAGS = frozenset({"--port"})
# Per-uid, not per-process: a ceiling against a fork bomb, not the manifest's per-model pids limit.
NPROC_CEILING = 4096
NOFILE = 4096


@dataclass(frozen=True)
class Rlimit:
    name: str          # resource.RLIMIT_* name
    soft: int
    hard: int


def host_argv(spec: ContainerSpec, *, port: int | None = None) -> tuple[str, ...]:
    """The rendered llama-server arguments with container paths and the listen address made host-side
    (`port`: the one picked for a spec whose host_port is 0)."""
    by_target = {m.target: m.source for m in spec.mounts}
    host = spec.host_ip or "127.0.0.1"
    listen_port = port or spec.host_port
    out: list[str] = [ARGV0]
    prev = ""
    for token in spec.argv:
        if prev in HOST_FLAGS:
            token = host
        elif prev in PORT_FLAGS:
            token = str(listen_port)
        elif "=" in token and token.startswith("--"):
            flag, value = token.split("=", 1)
            if flag in HOST_FLAGS:
                token = f"{flag}={host}"
            elif flag in PORT_FLAGS:
                token = f"{flag}={listen_port}"
            elif value in by_target:
                token = f"{flag}={by_target[value]}"
        elif token in by_target:
            token = by_target[token]
        out.append(token)
        prev = token if token.startswith("-") else ""
    return tuple(out)


def gpu_env(spec: ContainerSpec) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for the spec: its device IDs, all GPUs when it names none, none without a GPU."""
    if spec.gpu is None:
        return {"CUDA_VISIBLE_DEVICES": ""}          # a CUDA binary on a CPU profile sees no GPU
    if spec.gpu.device_ids:
        return {"CUDA_VISIBLE_DEVICES": ",".join(spec.gpu.device_ids)}
    return {}


def process_env(spec: ContainerSpec, workdir: str) -> dict[str, str]:
    """The whole environment of the process: nothing inherited from the daemon (no secrets)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LLAMA_CACHE": workdir,
        **gpu_env(spec),
    }


def parse_user(user: str) -> tuple[int, int]:
    """"65532:65532" -> (65532, 65532); a bare uid uses it as the gid too."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def rlimits(spec: ContainerSpec, *, memory_by_cgroup: bool) -> tuple[Rlimit, ...]:
    """No core dumps, a file-descriptor cap, a uid-wide process ceiling; address space when no cgroup can
    cap memory (RLIMIT_AS counts mappings, the model's mmap included: stricter than a cgroup's RSS limit).
    Never RLIMIT_AS with a GPU: the CUDA driver reserves far more address space than it ever backs."""
    limits = [Rlimit("RLIMIT_CORE", 0, 0), Rlimit("RLIMIT_NOFILE", NOFILE, NOFILE),
              Rlimit("RLIMIT_NPROC", NPROC_CEILING, NPROC_CEILING)]
    if spec.memory_bytes is not None and not memory_by_cgroup and spec.gpu is None:
        limits.append(Rlimit("RLIMIT_AS", spec.memory_bytes, spec.memory_bytes))
    return tuple(limits)
