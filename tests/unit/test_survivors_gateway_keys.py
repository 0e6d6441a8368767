"""Mutants of gateway/keys.py that survived `make mutate` (docs/TESTING.md): the bearer token's
parsing, a model's key file re-read exactly when it changes, and what an unreadable key file says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.core.lifecycle import State
from supervisor.core.routing import Route
from supervisor.errors import ConfigError
from supervisor.gateway.keys import Authority, KeyFiles, bearer, read_gateway_keys


def test_bearer_takes_everything_after_the_scheme_and_nothing_for_another_scheme() -> None:
    assert bearer("  Bearer  k1 k2 ") == "k1 k2"
    assert bearer("bearer k") == "k"
    assert bearer("Basic dXNlcjpwdw==") == ""
    assert bearer("") == ""


def test_a_key_file_is_read_again_when_its_mtime_changes_and_only_then(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("# comment\nk1\n")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    files = KeyFiles()
    assert files.keys(str(f)) == ("k1",)
    f.write_text("k2\n")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))        # same mtime: the cached keys stand
    assert files.keys(str(f)) == ("k1",) and files.first(str(f)) == "k1"
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    assert files.keys(str(f)) == ("k2",)
    f.write_text("k3\n")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))        # any change of mtime, even backwards
    assert files.keys(str(f)) == ("k3",)


def test_an_unreadable_key_file_holds_no_key_and_is_logged_by_path_and_error(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_bytes(b"\xff\xfe not utf-8")
    with capture_logs() as logs:
        assert KeyFiles().keys(str(f)) == ()
    assert KeyFiles().first(str(f)) is None and KeyFiles().first(None) is None
    assert logs == [{"event": "cannot read the model's api_key_file", "path": str(f),
                     "error": "UnicodeDecodeError", "log_level": "error"}]


def test_the_gateway_keys_file_says_why_it_cannot_be_used(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        read_gateway_keys(tmp_path / "absent")
    assert str(missing.value) == (f"--gateway-api-keys-file {tmp_path / 'absent'}: No such file or directory"
                                  " (fix: give a readable text file)")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin: not UTF-8 text \(fix: give a readable text file\)$"):
        read_gateway_keys(binary)
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match=r"empty: no key in it \(fix: one key per line;"
                                          r" only lines that start with # are comments\)$"):
        read_gateway_keys(empty)


def test_with_gateway_keys_a_wrong_token_is_not_admitted_and_a_models_own_key_is(tmp_path: Path) -> None:
    key = tmp_path / "model.key"
    key.write_text("model-key\n")
    routes = {"m": Route("m", State.RUNNING, "127.0.0.1", 9001, api_key_file=str(key)),
              "open": Route("open", State.RUNNING, "127.0.0.1", 9002)}
    auth = Authority(frozenset({"gw-key"}), KeyFiles())
    assert auth.admits("gw-key", routes) and auth.admits("model-key", routes)
    assert not auth.admits("wrong", routes) and not auth.admits("", routes)
    assert not auth.admits("wrong", {}), "no model key files: only a gateway key"
    assert Authority(frozenset(), KeyFiles()).admits("", routes), "an open gateway admits everyone"
