"""The pure on-demand scheduler: admit, make room (who goes first), refuse, idle expiry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.scheduler import Admit, Budget, Load, MakeRoom, Refuse, expired, schedule

G = 1024**3
M = 1024**2


def load(name: str, *, on_demand: bool = True, reserved: bool = False, stopping: bool = False, mem: int = G,
         inflight: int = 0, waiting: int = 0, last_used: float = 0.0, gpu: int = 0) -> Load:
    return Load(name, on_demand, reserved, stopping, mem, gpu, inflight, waiting, last_used)


def loads(*xs: Load) -> dict[str, Load]:
    return {x.name: x for x in xs}


def test_admits_when_it_fits_and_without_a_budget() -> None:
    ls = loads(load("a"), load("b", reserved=True))
    assert schedule("a", ls, Budget(memory_bytes=2 * G)) == Admit("a")
    assert schedule("a", ls, Budget()) == Admit("a")


def test_makes_room_from_the_least_recently_used_idle_model() -> None:
    ls = loads(load("t"), load("old", reserved=True, last_used=1.0), load("new", reserved=True, last_used=5.0))
    assert schedule("t", ls, Budget(memory_bytes=2 * G)) == MakeRoom("t", ("old",))


def test_idle_models_go_before_busy_ones_even_if_used_more_recently() -> None:
    ls = loads(load("t"), load("busy", reserved=True, inflight=2, last_used=1.0),
               load("idle", reserved=True, last_used=9.0))
    assert schedule("t", ls, Budget(memory_bytes=2 * G)) == MakeRoom("t", ("idle",))


def test_never_chooses_always_on_models_or_models_with_requests_waiting() -> None:
    ls = loads(load("t"), load("fixed", on_demand=False, reserved=True, mem=G // 2),
               load("queued", reserved=True, waiting=1, mem=G // 2), load("free", reserved=True, mem=G // 2))
    assert schedule("t", ls, Budget(memory_bytes=2 * G)) == MakeRoom("t", ("free",))


def test_stopping_models_are_waited_for_not_chosen_again() -> None:
    ls = loads(load("t"), load("going", reserved=True, stopping=True))
    assert schedule("t", ls, Budget(memory_bytes=G + G // 2)) == MakeRoom("t", ())


def test_refuses_at_once_what_cannot_fit_beside_the_always_on_models() -> None:
    ls = loads(load("t", mem=3 * G), load("fixed", on_demand=False, reserved=True, mem=G))
    d = schedule("t", ls, Budget(memory_bytes=3 * G))
    assert isinstance(d, Refuse)
    assert "needs 3072 MiB of memory; the memory budget is 3072 MiB, of which 1024 MiB is held by always-on" in d.message
    assert "(fixed)" in d.message and "--memory-budget" in d.message


def test_gpu_budget_counts_separately() -> None:
    ls = loads(load("t", mem=G, gpu=10 * G), load("other", reserved=True, mem=G, gpu=10 * G))
    assert schedule("t", ls, Budget(memory_bytes=8 * G, gpu_memory_bytes=16 * G)) == MakeRoom("t", ("other",))
    d = schedule("t", loads(load("t", gpu=20 * G)), Budget(gpu_memory_bytes=16 * G))
    assert isinstance(d, Refuse) and "GPU memory" in d.message


def test_expired_only_idle_reserved_on_demand_models_past_their_ttl() -> None:
    ls = loads(load("old", reserved=True, last_used=0.0), load("recent", reserved=True, last_used=95.0),
               load("busy", reserved=True, inflight=1), load("always", on_demand=False, reserved=True),
               load("down"), load("going", reserved=True, stopping=True))
    ttl = dict.fromkeys(ls, 10.0)
    assert expired(ls, ttl, now=100.0) == ["old"]


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 8), st.integers(0, 2), st.integers(0, 2)),
                min_size=1, max_size=6),
       st.integers(1, 8), st.integers(4, 16))
def test_drained_models_are_on_demand_idle_of_queue_and_enough_when_possible(
        others: list[tuple[bool, bool, int, int, int]], need: int, budget: int) -> None:
    ls = {"t": load("t", mem=need * G)}
    for i, (on_demand, reserved, mem, inflight, waiting) in enumerate(others):
        ls[f"m{i}"] = load(f"m{i}", on_demand=on_demand, reserved=reserved, mem=mem * G, inflight=inflight,
                           waiting=waiting, last_used=float(i))
    d = schedule("t", ls, Budget(memory_bytes=budget * G))
    held = sum(x.memory_bytes for n, x in ls.items() if n != "t" and x.reserved)
    fixed = sum(x.memory_bytes for n, x in ls.items() if n != "t" and x.reserved and not x.on_demand)
    match d:
        case Admit():
            assert held + need * G <= budget * G
        case Refuse():
            assert fixed + need * G > budget * G
        case MakeRoom(drain=drain):
            assert held + need * G > budget * G
            for n in drain:
                assert ls[n].on_demand and ls[n].reserved and ls[n].waiting == 0
            movable = sum(x.memory_bytes for n, x in ls.items()
                          if n != "t" and x.reserved and x.on_demand and x.waiting == 0)
            if held - movable + need * G <= budget * G:     # enough can go: the drained set is enough
                freed = sum(ls[n].memory_bytes for n in drain)
                assert held - freed + need * G <= budget * G
