"""Request bodies at the gateway: read with deadlines, bounded in number and in bytes, parsed off the loop.

Before, each body was buffered up to 16 MiB with no deadline and no cap: 100 stalled uploads took the
daemon from 63 MiB to 1.7 GB. Now:

- a body must keep arriving (`idle_s` between chunks) and be complete within `total_s`: else 408;
- a large body (over `small_bytes`, or of unknown length) needs one of `max_uploads` slots, waited
  for at most `slot_wait_s`, and room in `budget_bytes`, the bytes that requests in flight may hold
  in bodies together (its Content-Length is reserved up front; a chunked body's bytes as they come);
  else 503 + Retry-After. Small bodies (what a chat request is) need neither, so uploads held by
  others never lock them out; the connection cap bounds them.
- what a request reserved is given back when the request ends (`ReleaseBodies`, around the app),
  after the upstream exchange that still holds the body;
- the top-level "model" is read by `jsonscan` (no document built, nesting bounded), in one worker
  thread when the body is over `inline_parse_bytes`, so the loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request

from supervisor.gateway import errors, jsonscan

MiB = 1024 * 1024
TRIM_AFTER_BYTES = 8 * MiB     # freed body bytes that make the freed heap worth handing back
TRIM_DELAY_S = 1.0             # after the first of them: one trim for a burst of requests ending
_RESERVED = "llama_supervisor.body_bytes"      # the scope key: bytes this request holds in the budget


@dataclass(frozen=True)
class BodyLimits:
    budget_bytes: int = 64 * MiB        # large bodies' bytes that requests in flight may hold together
    max_uploads: int = 16               # large bodies being received at once
    small_bytes: int = 64 * 1024        # bodies up to this size need neither a slot nor budget
    idle_s: float = 10.0                # the longest pause between two chunks of a body
    total_s: float = 60.0               # the longest a whole body may take
    slot_wait_s: float = 1.0            # how long a large body may wait for an upload slot
    max_json_depth: int = 512           # arrays and objects nested deeper: 400, never forwarded
    inline_parse_bytes: int = 8 * 1024  # bodies up to this size are scanned on the loop (< ~2 ms)


class Bodies:
    """The gateway's body reader: one per app, used on the gateway's loop only."""

    def __init__(self, max_bytes: int, limits: BodyLimits = BodyLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.limits = limits
        self.clock = clock
        self.in_flight_bytes = 0            # reserved by requests in flight (large bodies only)
        self.uploads = 0                    # large bodies being received now
        self._slots = anyio.Semaphore(limits.max_uploads)
        self._parser: ThreadPoolExecutor | None = None     # one worker: the scanner, and malloc_trim
        self._freed = 0                     # bytes released since the last trim
        self._trimming = False

    # --- reading -------------------------------------------------------------------------------

    async def read(self, request: Request) -> bytes:
        limits = self.limits
        declared = request.headers.get("content-length", "")
        length = int(declared) if declared.isdigit() else None
        if length is None and "transfer-encoding" not in request.headers:
            length = 0                # no body at all (a GET to /upstream/): no slot, no budget
        if length is not None and length > self.max_bytes:
            raise errors.too_large(self.max_bytes)
        if length is not None and length <= limits.small_bytes:
            return await self._receive(request, length, reserve=False)
        if length is not None:
            self._reserve(request.scope, length)
        try:
            with anyio.fail_after(limits.slot_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise errors.busy(f"the gateway is receiving {limits.max_uploads} large request bodies already",
                              "uploads_full", retry_after_s=1) from None
        self.uploads += 1
        try:
            return await self._receive(request, length, reserve=length is None)
        finally:
            self.uploads -= 1
            self._slots.release()

    async def _receive(self, request: Request, length: int | None, *, reserve: bool) -> bytes:
        """The whole body; `reserve`: count its bytes in the budget as they come (unknown length)."""
        limits, receive = self.limits, request.receive
        deadline = self.clock() + limits.total_s
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise errors.body_timeout(f"not complete after {limits.total_s:g}s")
            try:
                with anyio.fail_after(min(limits.idle_s, left)):
                    message = await receive()
            except TimeoutError:
                what = (f"nothing for {limits.idle_s:g}s" if left > limits.idle_s
                        else f"not complete after {limits.total_s:g}s")
                raise errors.body_timeout(f"{what}, {size} bytes received") from None
            if message["type"] == "http.disconnect":
                raise errors.body_incomplete()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_bytes:
                    raise errors.too_large(self.max_bytes)
                if reserve:
                    self._reserve(request.scope, len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if len(chunks) == 1:
            return chunks[0]          # the usual small body: no copy
        body = b"".join(chunks)       # the one copy; the chunks go right after
        chunks.clear()
        return body

    # --- the budget ----------------------------------------------------------------------------

    def _reserve(self, scope: MutableMapping[str, Any], n: int) -> None:
        budget = self.limits.budget_bytes
        if self.in_flight_bytes + n > budget:
            held = self.in_flight_bytes
            if n > budget:
                raise errors.too_large(budget)
            raise errors.busy(f"requests in flight hold {held // MiB} MiB of bodies and this one needs"
                              f" {max(1, n // MiB)} MiB more than the {budget // MiB} MiB the gateway allows"
                              " (--gateway-body-budget)", "bodies_full", retry_after_s=1)
        self.in_flight_bytes += n
        scope[_RESERVED] = scope.get(_RESERVED, 0) + n

    def release(self, scope: MutableMapping[str, Any]) -> None:
        """Give back what the request reserved (its end: ReleaseBodies)."""
        n = scope.pop(_RESERVED, 0)
        self.in_flight_bytes -= n
        self._freed += n
        if self._freed >= TRIM_AFTER_BYTES and not self._trimming:
            self._trimming = True
            asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        """Hand the freed bodies' pages back to the OS (glibc keeps freed heap otherwise: 16 MiB bodies
        come in 64-256 KiB chunks, below its mmap threshold), in the worker thread: ctypes lets the GIL go."""
        self._freed = 0

        def trim() -> None:
            try:
                ctypes.CDLL(None).malloc_trim(0)
            except (OSError, AttributeError):
                pass             # not glibc: nothing to trim
            finally:
                self._trimming = False

        self._executor().submit(trim)

    # --- the model -----------------------------------------------------------------------------

    async def model(self, body: bytes) -> tuple[str, bool]:
        """The request's top-level "model" string and whether it asks to stream (`streams`); 400 for a
        body that is not a JSON object with a "model"."""
        depth = self.limits.max_json_depth

        def scan() -> tuple[object, bool]:
            return jsonscan.top_level_model(body, max_depth=depth), streams(body)

        try:
            if len(body) <= self.limits.inline_parse_bytes:
                name, stream = scan()
            else:
                name, stream = await asyncio.get_running_loop().run_in_executor(self._executor(), scan)
        except jsonscan.TooDeep as e:
            raise errors.too_deep(str(e)) from None
        except jsonscan.NotJSON as e:
            raise errors.not_object(str(e)) from None
        if not isinstance(name, str) or not name:
            raise errors.bad_request("the request has no \"model\" (fix: add \"model\": \"<name or alias>\")")
        return name, stream

    async def streams(self, body: bytes) -> bool:
        """Whether a body the gateway does not parse (/upstream/) asks to stream, off the loop when large."""
        if len(body) <= self.limits.inline_parse_bytes:
            return streams(body)
        return await asyncio.get_running_loop().run_in_executor(self._executor(), streams, body)

    def _executor(self) -> ThreadPoolExecutor:
        if self._parser is None:
            self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-body")
        return self._parser

    def close(self) -> None:
        if self._parser is not None:
            self._parser.shutdown(wait=False, cancel_futures=True)
            self._parser = None


# `"stream": true` as a member of any object in the body. Inside a JSON string a quote is escaped, so
# these bytes are a key; a nested "stream" key is a false positive that costs one new connection.
# Linear: 16 MiB of hostile bytes take < 0.1 s, in the worker thread.
_STREAM_TRUE = re.compile(rb'"stream"[ \t\r\n]*+:[ \t\r\n]*+true')


def streams(body: bytes) -> bool:
    """The request asks for a streamed answer (a scan for the key, without parsing the body)."""
    return _STREAM_TRUE.search(body) is not None


class ReleaseBodies:
    """ASGI middleware: when a request ends (its response sent or abandoned), its budget comes back."""

    def __init__(self, app: Any, bodies: Bodies) -> None:
        self.app = app
        self.bodies = bodies

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.bodies.release(scope)
