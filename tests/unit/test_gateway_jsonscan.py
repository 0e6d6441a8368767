"""The gateway's scanner for a body's top-level "model": the same answer as json.loads on valid JSON,
NotJSON or TooDeep (never another exception) on anything else, nesting refused before it is walked."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.gateway import jsonscan
from supervisor.gateway.jsonscan import NotJSON, TooDeep, top_level_model

MiB = 1024 * 1024

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                      max_leaves=30)
names = st.sampled_from(["model", "messages", "mode", "model ", "Model", "\u00e9", "a\"b", "m\\odel"]) | st.text()


@settings(max_examples=400, deadline=None)
@given(members=st.lists(st.tuples(names, values), max_size=6), indent=st.sampled_from([None, 0, 2]),
       escape=st.booleans())
def test_the_model_is_what_json_loads_keeps(members: list[tuple[str, object]], indent: int | None,
                                            escape: bool) -> None:
    # a list of pairs, not a dict: duplicate names stay in the text, and json.loads keeps the last one
    text = "{" + ",".join(json.dumps(k, ensure_ascii=escape) + ":" + json.dumps(v, indent=indent, ensure_ascii=escape)
                          for k, v in members) + "}"
    body = text.encode()
    expected = json.loads(body).get("model")
    if isinstance(expected, (list, dict)):
        expected = None          # not a model name: the scanner steps over containers
    assert top_level_model(body, max_depth=64) == expected


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet='{}[]",:\\ 0a1"mode', max_size=60).map(str.encode))
def test_anything_else_is_not_json_or_too_deep_never_another_error(body: bytes) -> None:
    try:
        top_level_model(body, max_depth=4)
    except (NotJSON, TooDeep):
        pass


def test_nesting_is_refused_past_the_limit_and_accepted_up_to_it() -> None:
    def nested(depth: int) -> bytes:        # the top-level object is depth 1
        return b'{"model": "m", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert top_level_model(nested(512), max_depth=512) == "m"
    with pytest.raises(TooDeep):
        top_level_model(nested(513), max_depth=512)
    for inner, depth in ((b"[{}]", 3), (b'[{"a": [0]}]', 4), (b"[[]]", 3), (b"[[0], [1]]", 3)):
        body = b'{"model": "m", "x": ' + inner + b"}"     # flat containers are absorbed, and still counted
        assert top_level_model(body, max_depth=depth) == "m"
        with pytest.raises(TooDeep):
            top_level_model(body, max_depth=depth - 1)


@pytest.mark.timing
@pytest.mark.parametrize("body", [
    b"[" * 100_000,                                         # the body: a RecursionError before
    b'{"model": "m", "x": ' + b"[" * 100_000,
    b'{"model": "m", "x": ' + b"{\"a\":" * 100_000,
])
def test_deep_bodies_are_refused_at_once(body: bytes) -> None:
    t0 = time.perf_counter()
    with pytest.raises((TooDeep, NotJSON)):
        top_level_model(body, max_depth=512)
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.timing
def test_a_body_of_many_deep_elements_is_refused_within_the_step_limit() -> None:
    """16 MiB of 500-deep elements: ~8 s of scanning if every bracket were counted; refused at 1M."""
    element = b"[" * 500 + b"0" + b"]" * 500 + b","
    body = b'{"model": "m", "x": [' + element * (16 * MiB // len(element)) + b"0]}"
    t0 = time.perf_counter()
    with pytest.raises(TooDeep, match="hold others"):
        top_level_model(body, max_depth=512)
    assert time.perf_counter() - t0 < 4          # ~0.6 s here; shared machine
    assert top_level_model(b'{"model": "m", "x": [[[0]], [[0]]]}', max_depth=8, max_steps=6) == "m"
    with pytest.raises(TooDeep):
        top_level_model(b'{"model": "m", "x": [[[0]], [[0]]]}', max_depth=8, max_steps=5)


@pytest.mark.parametrize("body, error", [
    (b"", NotJSON), (b"  ", NotJSON), (b'"model"', NotJSON), (b"[1]", NotJSON), (b"{", NotJSON),
    (b'{"model": "m"', NotJSON), (b'{"model": "m"} x', NotJSON), (b'{"model": "m", "x": [1}', NotJSON),
    (b'{"model": "m", "x": "abc}', NotJSON), (b'{"model": "\\x"}', NotJSON), (b'{model: "m"}', NotJSON),
])
def test_malformed_bodies(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        top_level_model(body, max_depth=512)


def test_a_name_spelled_with_escapes_is_still_model() -> None:
    body = b'{"model": "a", "mod\\u0065l": "b"}'
    assert json.loads(body)["model"] == "b" == top_level_model(body, max_depth=8)


def test_a_model_that_is_not_a_string_is_returned_as_is_for_the_caller_to_refuse() -> None:
    assert top_level_model(b'{"model": 3}', max_depth=8) == 3
    assert top_level_model(b'{"model": ["m"]}', max_depth=8) is None
    assert top_level_model(b'{}', max_depth=8) is None


@pytest.mark.timing
@pytest.mark.parametrize("element", [b"1,", b"[],", b"[0],", b'"a",', b'{"a": 1},'])
def test_a_16_mib_body_gives_the_gil_up_while_it_is_scanned(element: bytes) -> None:
    """The scanner runs in a worker thread: another thread must get the GIL back within a few ms
    (json.loads held it for up to ~2 s on such bodies). Generous bound: shared 2-core machine."""
    body = b'{"model": "m", "x": [' + element * (16 * MiB // len(element)) + b"0]}"
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        assert top_level_model(body, max_depth=512) == "m"
    finally:
        done.set()
        ticker.join()
    assert max(gaps) < 0.2, f"the GIL was held {max(gaps) * 1000:.0f} ms at once"
    assert jsonscan._WINDOW <= 1 << 16
