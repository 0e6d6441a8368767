"""Who may act through the console (docs/CONSOLE.md "Authority").

- The login token: made at daemon start, written to the state dir readable by those who may use the
  control socket (0600, or 0640 with the socket's group), and handed out by `llama-supervisorctl console`.
  GET /ui/login?token= exchanges it for a session: a cookie (HttpOnly, SameSite=Strict, Path=/ui)
  and a CSRF token bound to that session, which every action must send back in X-CSRF-Token.
- Admin keys (--admin-keys-file): `Authorization: Bearer KEY` for programs; no cookie, so no CSRF.
  The gateway's inference keys are another set and never grant admin.
Sessions are bounded in number (the oldest goes) and in age.
"""

from __future__ import annotations

import grp
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

COOKIE = "llama_console"
CSRF_HEADER = "x-csrf-token"


class Access(Enum):
    NONE = "none"          # read-only
    SESSION = "session"    # logged in with the token: actions need the CSRF token too
    KEY = "key"            # an admin key


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    expires: float


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Authority:
    def __init__(self, login_token: str, admin_keys: Iterable[str] = (), *, clock: Callable[[], float] = time.monotonic,
                 max_sessions: int = 64, ttl_s: float = 12 * 3600) -> None:
        self._token = login_token
        self._keys = tuple(admin_keys)
        self._clock = clock
        self._max = max_sessions
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def login(self, token: str) -> Session | None:
        if not token or not _equal(token, self._token):
            return None
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._clock() + self.ttl_s)
        self._sessions[s.id] = s
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return s

    def session(self, cookie: str) -> Session | None:
        s = self._sessions.get(cookie) if cookie else None
        if s is None:
            return None
        if self._clock() >= s.expires:
            del self._sessions[cookie]
            return None
        return s

    def access(self, cookie: str, bearer: str) -> tuple[Access, Session | None]:
        if bearer:
            found = False
            for k in self._keys:            # every key compared: the time taken does not say which one
                found |= _equal(bearer, k)
            return (Access.KEY, None) if found else (Access.NONE, None)
        s = self.session(cookie)
        return (Access.SESSION, s) if s is not None else (Access.NONE, None)

    def may_act(self, cookie: str, bearer: str, csrf: str) -> bool:
        """An action: an admin key, or a session with its own CSRF token."""
        access, s = self.access(cookie, bearer)
        if access is Access.KEY:
            return True
        return s is not None and bool(csrf) and _equal(csrf, s.csrf)


def token_path(state_dir: Path, instance: str) -> Path:
    return state_dir / f"console.{instance}.token"


def write_token(path: Path, token: str, group: str | None = None) -> None:
    """The token file, readable as the control socket is usable: the owner, and `group` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if group is not None:
            os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
            os.fchmod(fd, 0o640)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_token() -> str:
    return secrets.token_urlsafe(32)
