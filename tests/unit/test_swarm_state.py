"""`deploy status`: a stack's services and tasks, read from what the engine returns (a hand-written fake API)."""

from __future__ import annotations

from typing import Any

from supervisor.export import swarm_deploy


class FakeApi:
    """The two engine calls status makes: services by stack label, running tasks by service."""

    def __init__(self, services: list[dict[str, Any]], tasks: dict[str, list[dict[str, Any]]]) -> None:
        self._services, self._tasks = services, tasks
        self.filters: list[dict[str, str]] = []

    def services(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        self.filters.append(filters)
        return self._services

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert filters["desired-state"] == "running"
        return list(self._tasks.get(filters["service"], []))


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api


def svc(sid: str, model: str, update: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"ID": sid, "Spec": {
        "Name": f"llama_{model}", "Mode": {"Replicated": {"Replicas": 1}},
        "Labels": {"io.llama-supervisor.model": model, "io.llama-supervisor.config-hash": f"{model}-hash"},
    }}
    if update:
        body["UpdateStatus"] = {"State": update}
    return body


def task(state: str, at: str, err: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "ContainerStatus": {"ContainerID": f"c-{at}"}}
    if err:
        status["Err"] = err
    return {"UpdatedAt": at, "Status": status}


def test_status_per_model_sorted_with_task_states_and_errors() -> None:
    api = FakeApi(
        [svc("2", "zeta"), svc("1", "alpha"), svc("3", "mid", update="updating")],
        {"1": [task("running", "t1")],
         "2": [task("starting", "t2"), task("failed", "t3", err="task: non-zero exit (137)")],
         "3": [task("running", "t4")]},
    )
    states = swarm_deploy.status(FakeClient(api), "llama")  # type: ignore[arg-type]
    assert api.filters == [{"label": "com.docker.stack.namespace=llama"}]
    assert [s.model for s in states] == ["alpha", "mid", "zeta"]
    alpha, mid, zeta = states
    assert alpha.converged and alpha.config_hash == "alpha-hash" and alpha.service == "llama_alpha"
    assert not mid.converged                    # running, but an update is under way
    assert not zeta.converged and zeta.running == 0
    assert zeta.task_states == ("failed", "starting") and zeta.error == "task: non-zero exit (137)"


def test_task_containers_are_the_running_tasks_only() -> None:
    api = FakeApi([], {"s": [task("running", "b"), task("starting", "c"), task("running", "a")]})
    assert swarm_deploy.task_containers(FakeClient(api), "s") == ["c-a", "c-b"]  # type: ignore[arg-type]
