"""The optional GPG signature over the image lock: verified with gpgv when a keyring is configured."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor.cli.cmd_images import check_signature
from supervisor.errors import ImageMismatch

from .tools import require



@pytest.fixture(autouse=True)
def gpg_installed() -> None:
    require("gpg", "gpgv", why="the lock signature tests sign and verify with them")


@pytest.fixture
def signer(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A throwaway key (no passphrase) and a keyring holding only its public half."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "lock-signer@example.invalid",
                    "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    keyring = tmp_path / "trusted.gpg"
    public = subprocess.run(["gpg", "--batch", "--export"], env=env, check=True, capture_output=True).stdout
    subprocess.run(["gpg", "--batch", "--no-default-keyring", "--keyring", str(keyring), "--import"],
                   env=env, input=public, check=True, capture_output=True)
    return env, keyring


def sign(env: dict[str, str], path: Path) -> None:
    subprocess.run(["gpg", "--batch", "--yes", "--detach-sign", "--armor", str(path)], env=env, check=True,
                   capture_output=True)


def test_no_keyring_configured_means_no_signature_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_SUPERVISOR_LOCK_KEYRING", raising=False)
    check_signature(tmp_path / "images.lock.json")      # nothing to check, nothing raised


def test_signed_lock_verifies_and_a_changed_lock_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: tuple[dict[str, str], Path]
) -> None:
    env, keyring = signer
    monkeypatch.setenv("LLAMA_SUPERVISOR_LOCK_KEYRING", str(keyring))
    lock = tmp_path / "images.lock.json"
    lock.write_text('{"version": 1, "images": {}}\n')
    with pytest.raises(ImageMismatch, match="images.lock.json.asc is missing"):
        check_signature(lock)
    sign(env, lock)
    check_signature(lock)
    lock.write_text('{"version": 1, "images": {"x": {}}}\n')
    with pytest.raises(ImageMismatch, match="does not verify"):
        check_signature(lock)
