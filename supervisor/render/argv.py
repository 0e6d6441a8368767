"""The llama-server flags the supervisor renders and the checks of a manifest's extra_args.

Pure. SPELLINGS (the first spelling the image knows is rendered), OWNER_KEY (which manifest key owns
an option), RESERVED (flags extra_args may not set, and the fix), RENAMES (old spellings), and
check_extra_args against the allowlist (allowed_flags.py) and the image's own --help.
"""

from __future__ import annotations

import difflib
import re

from supervisor.artifacts.lock import ImageRecord
from supervisor.manifest.loader import Origin
from supervisor.render.allowed_flags import ALLOWED

# Spellings of one option, preferred first; the first the image knows is rendered.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "model": ("--model", "-m"),
    "host": ("--host",),
    "port": ("--port",),
    "ctx_size": ("--ctx-size", "-c"),
    "parallel": ("--parallel", "-np"),
    "batch_size": ("--batch-size", "-b"),
    "threads": ("--threads", "-t"),
    "flash_attn": ("--flash-attn", "-fa"),
    "cache_type_k": ("--cache-type-k", "-ctk"),
    "cache_type_v": ("--cache-type-v", "-ctv"),
    "api_key_file": ("--api-key-file",),
    "no_webui": ("--no-webui",),
    "gpu_layers": ("--n-gpu-layers", "--gpu-layers", "-ngl"),
    # Turned off explicitly, so that an upstream change of default cannot turn them on (docs/SECURITY.md).
    "no_agent": ("--no-agent", "-no-ag"),
    "no_mcp_proxy": ("--no-ui-mcp-proxy", "--no-webui-mcp-proxy"),
    "cors_origins": ("--cors-origins",),
    "no_cors_credentials": ("--no-cors-credentials",),
}
# Allowed CORS origin: not an origin at all, so no browser page's Origin ever matches it. llama-server
# answers every request with `Access-Control-Allow-Origin: <this value>` (any value but '*' or
# 'localhost' is sent as is), and its default '*' with credentials echoes any Origin back.
CORS_ORIGINS = "none"
# The manifest key that owns each option (for messages and for extra_args that would override it).
OWNER_KEY: dict[str, str] = {
    "model": "source", "host": "server.host", "port": "server.port", "ctx_size": "server.ctx_size",
    "parallel": "server.parallel", "batch_size": "server.batch_size", "threads": "server.threads",
    "flash_attn": "server.flash_attn", "cache_type_k": "server.cache_type_k",
    "cache_type_v": "server.cache_type_v", "api_key_file": "server.api_key_file",
    "gpu_layers": "profile",
}
# Features the supervisor renders off: every spelling, on and off, so extra_args cannot set them again.
_RENDERED_OFF: dict[str, tuple[str, ...]] = {
    "the web UI": ("--ui", "--webui", "--no-ui", "--no-webui"),
    "the agent's built-in tools and CORS proxy (they read, write and run code)": (
        "-ag", "--agent", "-no-ag", "--no-agent"),
    "the web UI's MCP proxy (it fetches any URL)": (
        "--ui-mcp-proxy", "--webui-mcp-proxy", "--no-ui-mcp-proxy", "--no-webui-mcp-proxy"),
    "CORS for browsers (no web page may call the model)": (
        "--cors-origins", "--cors-credentials", "--no-cors-credentials"),
}
_OFF = frozenset(flag for flags in _RENDERED_OFF.values() for flag in flags)
# Flags the supervisor sets itself, and the fix for each: in extra_args they would break it, leak a
# secret, or turn a feature back on.
RESERVED: dict[str, str] = {
    **{flag: f"remove it and use {OWNER_KEY[opt]}"
       for opt, flags in SPELLINGS.items() if opt in OWNER_KEY for flag in flags},
    **{flag: "remove it and use a profile with gpu.layers" for flag in SPELLINGS["gpu_layers"]},
    "--api-key": "remove it and use server.api_key_file (a key on the command line shows in docker inspect)",
    "--slot-save-path": "remove it and use kv_cache: the supervisor names the cache directory and its files",
    **{flag: "remove it and use source" for flag in ("--model-url", "-mu", "--hf-repo", "-hf", "-hfr",
                                                     "--hf-file", "-hff")},
    **{flag: f"remove it: the supervisor turns off {what}, see docs/SECURITY.md"
       for what, flags in _RENDERED_OFF.items() for flag in flags},
}
# Old or other spellings -> (replacement tokens, flag the image must know for the replacement to apply).
RENAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "--mlock": (("--load-mode", "mlock"), "--load-mode"),        # llama.cpp folded both into --load-mode
    "--no-mmap": (("--load-mode", "none"), "--load-mode"),
    "--embedding": (("--embeddings",), "--embeddings"),
    "--embeddings": (("--embedding",), "--embedding"),
}
_NUMBER = re.compile(r"^-?[0-9.]+([eE][-+]?[0-9]+)?$")


def check_extra_args(extra_args: tuple[str, ...], record: ImageRecord, origin: Origin) -> list[str]:
    """A problem for each flag in extra_args that is not on the allowlist (supervisor.render.allowed_flags),
    that the supervisor renders itself, that the image's --help warns about, or that the image does not know.

    llama-server reads every item that starts with '-' in a flag's place as a flag, and takes no
    `--flag=value` items, so each such item is checked as a flag (a value that looks like one is refused).
    """
    problems: list[str] = []
    for i, token in enumerate(extra_args):
        where = origin.at(f"server.extra_args.{i}")
        if not token or any(ord(c) < 32 or ord(c) == 127 for c in token):
            problems.append(f"{where}: extra_args item {i} is empty or holds a control character"
                            f" (fix: one plain argument per item)")
            continue
        if not token.startswith("-") or token == "-" or _NUMBER.match(token):
            continue  # a value
        problem = _flag_problem(token, record)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _flag_problem(flag: str, record: ImageRecord) -> str | None:
    """Why one extra_args flag is refused, with the fix; None when it is allowed."""
    name, eq, value = flag.partition("=")
    if eq and value.startswith("-") and not _NUMBER.match(value):
        return f"the value of {name} looks like a flag ({value!r}) (fix: give the value as the next item, or remove it)"
    if eq:
        return (f"{flag!r}: llama-server takes no flag=value items and would not start"
                f" (fix: give the value as the next item: {name}, {value})")
    if flag in RESERVED:
        return f"extra_args sets {flag}, which the supervisor renders itself (fix: {RESERVED[flag]})"
    if flag in record.warned_flags:
        return (f"extra_args sets {flag}, whose --help in image {record.tag} ({record.version}) warns against"
                f" untrusted environments (fix: remove it; no manifest may enable it)")
    known = flag in record.flags
    if flag in ALLOWED and known:
        return None
    if known:
        return (f"extra_args sets {flag}, which is not on the allowlist of flags that only tune inference or"
                f" performance (fix: remove it; if it only tunes inference, propose adding it to GROUPS in"
                f" supervisor/render/allowed_flags.py)")
    return (f"{flag} is not a flag of llama-server in image {record.tag} ({record.version})"
            f" (fix: {suggest(flag, record.flags)})")


def suggest(flag: str, known: frozenset[str]) -> str:
    """How to replace a flag the image does not know: a known rename, another spelling, the closest flag
    a manifest may use (an allowed flag, or one the supervisor renders from a manifest key)."""
    rename = RENAMES.get(flag)
    if rename is not None and rename[1] in known:
        return f"use '{' '.join(rename[0])}'"
    for spellings in SPELLINGS.values():
        if flag in spellings:
            other = next((f for f in spellings if f in known), None)
            if other is not None:
                return f"use '{other}'"
    usable = {f for f in known if f in ALLOWED or (f in RESERVED and f not in _OFF)}
    close = difflib.get_close_matches(flag, sorted(usable), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "remove it; 'docker run --rm <image> --help' lists the flags"
