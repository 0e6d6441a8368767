"""The one thing the gateway reads in a request body: the top-level `"model"`, without building the document.

`json.loads` of a hostile 16 MiB body holds the GIL for up to ~2 s (`[[],[],...]`) and builds
hundreds of MiB of Python objects; on the gateway's loop it stalled `/health`, and 100,000 nested
`[` made it raise RecursionError (a 500 with a traceback). This scanner walks the top-level object
member by member and steps over each value: regular expressions consume strings and runs without
brackets in C, bounded windows at a time, and Python only counts brackets. So it allocates nothing
in proportion to the body, gives the GIL up between steps (run in a worker thread, the loop keeps
answering), and refuses nesting past `max_depth` as soon as it sees it.

It checks what it reads (the top level, string and bracket syntax, bracket balance and kinds); it
does not validate numbers and commas inside the values it steps over: the model server parses the
body it is forwarded and answers its own 400 for those.
"""

from __future__ import annotations

import json
import re

# Every repetition is possessive or atomic (Python 3.11): a window that cuts a value must fail at once,
# never backtrack (`(?:[^x]+)*` over 64 KiB without its closing bracket would take forever).
_STR = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'               # a JSON string, unrolled: no per-character alternation
_TEXT = rb'[^\[\]{}"]++'                                # anything but brackets and quotes
_FLAT = rb"(?>\[(?:%s|%s)*+\]|\{(?:%s|%s)*+\})" % (_TEXT, _STR, _TEXT, _STR)  # a container with none inside
_WSP = rb"[ \t\r\n]*+"
_NUM = rb"(?>-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+|true|false|null)"
_STRING_PART = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
# What sits between the brackets Python counts: text and strings, and whole flat containers when the
# depth leaves room for one more level (so `[[0],[0],...]` is one C call a window, not a loop turn each).
_RUN = re.compile(rb"(?:%s|%s)*+" % (_TEXT, _STR), re.DOTALL)
_RUN_FLAT = re.compile(rb"(?:%s|%s|%s)*+" % (_TEXT, _STR, _FLAT), re.DOTALL)
_WS = re.compile(_WSP)
_SCALAR = re.compile(_NUM)
# Top-level members that cannot be "model" (a plain name that is not it) with a scalar, string or flat
# value, each followed by a comma: skipped in one C call a window (`{"a":1,"a":1,...}` is 2.8M members).
_MEMBERS = re.compile(rb'(?>"(?!model")[^"\\]*+"%s:%s(?:%s|%s|%s)%s,%s)*+'
                      % (_WSP, _WSP, _NUM, _STR, _FLAT, _WSP, _WSP), re.DOTALL)
_WINDOW = 1 << 16          # bytes one regular-expression call may cover: the GIL is held a few ms at most
_CLOSE = {ord("["): ord("]"), ord("{"): ord("}")}
_QUOTE = ord('"')


class NotJSON(ValueError):
    """The body is not a JSON object (as far as the gateway reads it)."""


class TooDeep(ValueError):
    """Arrays and objects nest deeper than the limit, or too many of them are nested at all."""


MAX_STEPS = 1_000_000
"""Brackets the scanner may count one by one in a body (those of arrays and objects that hold
others; flat ones are skipped whole): at ~0.6 µs each, a scan costs a second of CPU at most. A
16 MiB body of `[[[...500 deep...]]]` elements would otherwise take ~8 s; no real request comes
near (a chat message with content parts is 4)."""


def top_level_model(body: bytes, *, max_depth: int, max_steps: int = MAX_STEPS) -> object:
    """The value of the top-level object's last "model" member (as json.loads would keep it), or None.

    Raises NotJSON when the top level is not an object or what is read is malformed, TooDeep when
    nesting passes `max_depth` (the top-level object counts as depth 1) or needs over `max_steps` steps.
    """
    n = len(body)
    pos = _skip_ws(body, 0)
    if pos >= n or body[pos] != ord("{"):
        raise NotJSON("the body is not a JSON object")
    pos = _skip_ws(body, pos + 1)
    model: object = None
    steps = [max_steps, max_steps]      # left, allowed
    if pos < n and body[pos] == ord("}"):
        return _end(body, pos + 1, model)
    while True:
        if max_depth >= 2:                   # a flat value is depth 2
            pos = _run(body, pos, _MEMBERS)
        if pos >= n or body[pos] != _QUOTE:
            raise NotJSON(f"expected a member name at byte {pos}")
        key_end = _string_end(body, pos)
        key = body[pos:key_end]
        pos = _skip_ws(body, key_end)
        if pos >= n or body[pos] != ord(":"):
            raise NotJSON(f"expected ':' at byte {pos}")
        pos = _skip_ws(body, pos + 1)
        if key == b'"model"' or (b"\\" in key and _decode(key, pos) == "model"):
            model, pos = _scalar_or_string(body, pos)
            if model is _CONTAINER:
                model, pos = None, _skip_value(body, pos, max_depth, steps)
        else:
            pos = _skip_value(body, pos, max_depth, steps)
        pos = _skip_ws(body, pos)
        if pos >= n:
            raise NotJSON("the body ends inside the top-level object")
        if body[pos] == ord("}"):
            return _end(body, pos + 1, model)
        if body[pos] != ord(","):
            raise NotJSON(f"expected ',' or '}}' at byte {pos}")
        pos = _skip_ws(body, pos + 1)


_CONTAINER = object()


def _decode(text: bytes, pos: int) -> object:
    try:
        return json.loads(text)
    except ValueError:       # a string with a bad escape or invalid UTF-8
        raise NotJSON(f"invalid string at byte {pos}") from None


def _end(body: bytes, pos: int, model: object) -> object:
    if _skip_ws(body, pos) != len(body):
        raise NotJSON(f"unexpected data after the top-level object at byte {pos}")
    return model


def _skip_ws(body: bytes, pos: int) -> int:
    m = _WS.match(body, pos)
    assert m is not None         # matches the empty string
    return m.end()


def _scalar_or_string(body: bytes, pos: int) -> tuple[object, int]:
    if pos < len(body) and body[pos] in _CLOSE:
        return _CONTAINER, pos
    text, end = _match_scalar(body, pos)
    if text is None:
        return None, end     # a string over a window is no model name: not decoded
    return _decode(text, pos), end


def _match_scalar(body: bytes, pos: int) -> tuple[bytes | None, int]:
    """(the scalar's text, or None for a string over a window, not worth decoding; its end)."""
    if pos < len(body) and body[pos] == _QUOTE:
        end = _string_end(body, pos)
        return (body[pos:end] if end - pos <= _WINDOW else None), end
    m = _SCALAR.match(body, pos)
    if m is None:
        raise NotJSON(f"expected a value at byte {pos}")
    return m.group(), m.end()


def _string_end(body: bytes, pos: int) -> int:
    """The position after the string that opens at `pos`, a window at a time."""
    n, start, pos = len(body), pos, pos + 1
    while True:
        m = _STRING_PART.match(body, pos, min(pos + _WINDOW, n))
        assert m is not None         # matches the empty string
        end = m.end()
        if end < n and body[end] == _QUOTE:
            return end + 1
        if end == pos:               # a lone backslash at the end, or the end itself
            raise NotJSON(f"unterminated string at byte {start}")
        pos = end


def _skip_value(body: bytes, pos: int, max_depth: int, steps: list[int]) -> int:
    """The position after the value at `pos` (a member of the top-level object, depth 2)."""
    n = len(body)
    if pos >= n:
        raise NotJSON("the body ends where a value should be")
    if body[pos] not in _CLOSE:
        return _match_scalar(body, pos)[1]
    stack = bytearray()      # the closing brackets expected, innermost last
    limit = max_depth - 1    # the top-level object is depth 1
    while True:
        c = body[pos]
        steps[0] -= 1
        if steps[0] < 0:
            raise TooDeep(f"more than {steps[1]} arrays and objects that hold others")
        if c in _CLOSE:
            if len(stack) >= limit:
                raise TooDeep(f"arrays and objects nest deeper than {max_depth}")
            stack.append(_CLOSE[c])
            pos += 1
        elif c == ord("]") or c == ord("}"):
            if not stack or stack.pop() != c:
                raise NotJSON(f"unbalanced '{chr(c)}' at byte {pos}")
            pos += 1
            if not stack:
                return pos
        elif c == _QUOTE:                     # a string longer than a window
            pos = _string_end(body, pos)
        pos = _run(body, pos, _RUN_FLAT if len(stack) < limit else _RUN)
        if pos >= n:
            raise NotJSON("the body ends inside an array or object")


def _run(body: bytes, pos: int, run: re.Pattern[bytes]) -> int:
    """Past the text between counted brackets, a window at a time (each call holds the GIL briefly)."""
    n = len(body)
    while True:
        end = min(pos + _WINDOW, n)
        m = run.match(body, pos, end)
        assert m is not None         # matches the empty string
        if m.end() < end or end == n:
            return m.end()
        pos = end
