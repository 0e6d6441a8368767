"""Hostile host paths in manifests (docs/SECURITY.md, 'Host files'): regular files only, resolved, never system trees."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from supervisor.artifacts import hostfile, modelsrc
from supervisor.daemon.executor import Executor
from supervisor.core.actions import Create
from supervisor.errors import ManifestError, ModelMismatch
from supervisor.render.desired import load_desired

from .fakes import FakeRuntime, FakeVerifier
from .test_render import HOST, LOCK

SHA = "a" * 64


def manifest(path: str, *, key: str | None = None) -> str:
    text = f"""\
kind: model
name: m
source:
  path: {path}
  sha256: {SHA}
server:
  port: 8081
"""
    if key:
        text += f"  api_key_file: {key}\n"
    return text


def problems_for(tmp_path: Path, path: str, *, key: str | None = None) -> tuple[dict[str, object], list[str]]:
    d = tmp_path / "manifests"
    d.mkdir(exist_ok=True)
    (d / "m.yaml").write_text(manifest(path, key=key))
    return load_desired(d, LOCK, HOST)  # type: ignore[return-value]


def test_a_symlinked_model_is_mounted_by_its_resolved_path(tmp_path: Path) -> None:
    real = tmp_path / "store" / "real.gguf"
    real.parent.mkdir()
    real.write_bytes(b"GGUF" + b"\0" * 100)
    link = tmp_path / "link.gguf"
    link.symlink_to(real)
    desired, problems = problems_for(tmp_path, str(link))
    assert problems == []
    m = desired["m"]
    assert m.model_path == str(real)                              # what the verifier hashes
    assert m.spec.mounts[0].source == str(real)                   # what Docker mounts
    assert m.spec.mounts[0].target == "/models/link.gguf"


@pytest.mark.parametrize("what", ["directory", "fifo", "socket"])
def test_a_model_path_that_is_not_a_regular_file_is_refused_with_file_and_line(tmp_path: Path, what: str) -> None:
    p = tmp_path / f"thing-{what}.gguf"
    if what == "directory":
        p.mkdir()
    elif what == "fifo":
        os.mkfifo(p)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    desired, problems = problems_for(tmp_path, str(p))
    assert "m" not in desired
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'manifests' / 'm.yaml'}:4: ")       # source.path's line
    assert f"a {what}" in problems[0].replace("a fifo", "a FIFO").lower() or what.upper() in problems[0]
    assert "not a regular file" in problems[0]


@pytest.mark.parametrize("path", ["/var/run/docker.sock", "/run/docker.sock", "/proc/self/environ",
                                  "/sys/kernel/notes", "/etc/shadow", "/dev/sda", "/etc/../etc/passwd"])
def test_system_paths_are_refused_even_if_absent(tmp_path: Path, path: str) -> None:
    desired, problems = problems_for(tmp_path, path)
    assert "m" not in desired
    assert len(problems) == 1 and ":4: " in problems[0] and "system directory" in problems[0], problems


def test_a_symlink_into_a_system_tree_is_refused_naming_where_it_leads(tmp_path: Path) -> None:
    link = tmp_path / "innocent.gguf"
    link.symlink_to("/etc/hostname")
    _, problems = problems_for(tmp_path, str(link))
    assert len(problems) == 1 and "resolves to /etc/hostname" in problems[0], problems


def test_api_key_file_must_be_a_regular_file_outside_system_trees(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    _, problems = problems_for(tmp_path, str(model), key="/var/run/docker.sock")
    assert len(problems) == 1 and ":8: " in problems[0] and "api_key_file" in problems[0], problems
    keydir = tmp_path / "keys"
    keydir.mkdir()
    _, problems = problems_for(tmp_path, str(model), key=str(keydir))
    assert len(problems) == 1 and "a directory" in problems[0], problems
    assert hostfile.refused_tree("/etc/llama-supervisor/keys/a.key", refused=hostfile.KEY_REFUSED) is None
    assert hostfile.refused_tree("/run/secrets/a.key", refused=hostfile.KEY_REFUSED) == "/run"
    assert hostfile.refused_tree("/etc/llama/a.gguf") == "/etc"


def test_the_daemon_loader_refuses_the_whole_read_so_nothing_is_mounted(tmp_path: Path) -> None:
    from supervisor.cli.daemon import make_loader

    d = tmp_path / "manifests"
    d.mkdir()
    (d / "m.yaml").write_text(manifest("/var/run/docker.sock"))
    lock = tmp_path / "lock.json"
    from supervisor.artifacts.lock import write_lock

    write_lock(lock, LOCK)
    with pytest.raises(ManifestError) as e:
        make_loader(d, lock)()
    assert "m.yaml:4" in str(e.value)


def gguf(path: Path, body: bytes = b"weights") -> str:
    import hashlib

    path.write_bytes(b"GGUF" + body)
    path.chmod(0o644)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_verifier_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    os.mkfifo(p)
    with pytest.raises(ModelMismatch, match="not a regular file"):
        modelsrc.ModelVerifier().check(p, SHA)        # O_NONBLOCK: a FIFO with no writer must not hang


def test_verifier_refuses_a_path_that_became_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.gguf"
    digest = gguf(real)
    p = tmp_path / "m.gguf"
    p.symlink_to(real)
    with pytest.raises(ModelMismatch, match="symlink"):
        modelsrc.ModelVerifier().check(p, digest)


def test_a_file_swapped_after_the_check_is_caught_by_confirm(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    digest = gguf(p)
    v = modelsrc.ModelVerifier()
    v.check(p, digest)
    v.confirm(p, digest)                                  # unchanged: fine
    other = tmp_path / "evil.gguf"
    gguf(other, b"evil!!!")
    os.replace(other, p)                                  # renamed over, as an attacker would
    with pytest.raises(ModelMismatch, match="replaced or changed"):
        v.confirm(p, digest)


def test_executor_removes_the_container_when_the_file_changed_under_the_check() -> None:
    from supervisor.core.spec import ContainerSpec, DesiredModel, Mount

    spec = ContainerSpec(model="m", image="i", image_id="sha256:i", argv=(), model_sha256=SHA,
                         mounts=(Mount("/srv/m.gguf", "/models/m.gguf"),), host_ip="127.0.0.1", host_port=8081)
    rt, verifier = FakeRuntime(), FakeVerifier()
    verifier.swapped_models.add("m")
    with pytest.raises(ModelMismatch):
        Executor(rt, verifier).apply(Create(DesiredModel("m", spec, model_path="/srv/m.gguf")), None)
    assert rt.ops() == ["create", "start", "remove"]
    assert rt.containers == {}
