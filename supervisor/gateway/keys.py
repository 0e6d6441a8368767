"""Who may use a model through the gateway: the gateway's keys, each model's own keys.

The rule (docs/SECURITY.md, "The gateway: who may use a model"):

- a model with its own `api_key_file` is used with one of its own keys, or with a gateway key;
  nothing else, whether or not the gateway has keys: the gateway adds the model's key upstream,
  so an open gateway must not become a way around it;
- a model without a key needs a gateway key when the gateway has any, nothing otherwise.

Key files hold one key per line; a line that starts with `#` is a comment (llama-server's own
reading of `--api-key-file`); a `#` inside a key is part of the key. Key values are never logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from supervisor.core.routing import Route
from supervisor.errors import ConfigError

log = structlog.get_logger("supervisor.gateway")


def parse_keys(text: str) -> tuple[str, ...]:
    """One key per line, in file order; blank lines and lines starting with `#` skipped."""
    keys = (line.strip() for line in text.splitlines())
    return tuple(dict.fromkeys(k for k in keys if k and not k.startswith("#")))


def read_gateway_keys(path: Path, option: str = "--gateway-api-keys-file") -> frozenset[str]:
    """--gateway-api-keys-file (or the console's --admin-keys-file), read once at daemon start."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"{option} {path}: {why} (fix: give a readable text file)") from e
    keys = frozenset(parse_keys(text))
    if not keys:
        raise ConfigError(f"{option} {path}: no key in it (fix: one key per line;"
                          " only lines that start with # are comments)")
    return keys


def bearer(authorization: str) -> str:
    """The token of an 'Authorization: Bearer <token>' header ('' when there is none)."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matches(token: str, keys: Iterable[str]) -> bool:
    given = token.encode()
    found = False
    for k in keys:            # every key compared: the time taken does not say which one matched
        found |= hmac.compare_digest(given, k.encode())
    return found


@dataclass
class KeyFiles:
    """Models' api_key_files, re-read when one changes (mtime); an unreadable file holds no key."""

    _cache: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)

    def keys(self, path: str) -> tuple[str, ...]:
        try:
            mtime = os.stat(path).st_mtime_ns
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                with open(path, encoding="utf-8") as f:
                    cached = (mtime, parse_keys(f.read()))
                self._cache[path] = cached
            return cached[1]
        except (OSError, UnicodeDecodeError) as e:
            log.error("cannot read the model's api_key_file", path=path, error=type(e).__name__)
            return ()

    def first(self, path: str | None) -> str | None:
        """The one key the gateway sends upstream (llama-server accepts any of its lines)."""
        if path is None:
            return None
        keys = self.keys(path)
        return keys[0] if keys else None


@dataclass(frozen=True)
class Authority:
    gateway_keys: frozenset[str]
    files: KeyFiles

    def admits(self, token: str, routes: Mapping[str, Route]) -> bool:
        """May this caller use the gateway at all (list models, reach some model)?

        Open gateway: yes (each model's own key is checked by `may_use`). With gateway keys:
        a gateway key, or the key of some model."""
        if not self.gateway_keys:
            return True
        if token and _matches(token, self.gateway_keys):
            return True
        files = {r.api_key_file for r in routes.values() if r.api_key_file}
        return bool(token) and any(_matches(token, self.files.keys(p)) for p in sorted(files))

    def may_use(self, token: str, route: Route) -> bool:
        if token and self.gateway_keys and _matches(token, self.gateway_keys):
            return True
        if route.api_key_file is not None:
            return bool(token) and _matches(token, self.files.keys(route.api_key_file))
        return not self.gateway_keys
