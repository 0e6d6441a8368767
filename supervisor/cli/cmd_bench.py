"""llama-supervisorctl bench: one real streaming completion straight to a running model's port.

Apart from the daemon commands (cmd_control.py): it is a client of llama-server, not of the
daemon, beyond asking the daemon where the model listens. httpx is imported when it runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from supervisor.cli import output
from supervisor.cli.cmd_control import (
    EXIT_NOT_RUNNING,
    EXIT_UNKNOWN,
    NO_SUCH_MODEL,
    CommandExit,
    add_socket_option,
    control_client,
    speaks_errors,
)
from supervisor.errors import SupervisorError

if TYPE_CHECKING:
    import httpx     # imported in run_bench: `status` must start fast, and the table loads us only for bench


@dataclass(frozen=True)
class BenchResult:
    ttft_s: float
    tokens: int
    tokens_per_s: float
    total_s: float


def run_bench(url: str, *, prompt: str, max_tokens: int, api_key: str | None = None,
              timeout: float = 300.0, http: httpx.Client | None = None) -> BenchResult:
    """One streaming chat completion against a llama-server; tokens/s is generation only (after the first token)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    client = http or httpx.Client(timeout=timeout)
    start = time.monotonic()
    first: float | None = None
    last = start
    chunks = 0
    reported: int | None = None
    server_rate: float | None = None
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                hint = ": pass --api-key-file" if response.status_code == 401 else ""
                raise SupervisorError(f"HTTP {response.status_code} from {url}{hint}: {response.text[:200]}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        now = time.monotonic()
                        first = first if first is not None else now
                        last = now
                        chunks += 1
                timings = event.get("timings") or {}
                usage = event.get("usage") or {}
                reported = timings.get("predicted_n") or usage.get("completion_tokens") or reported
                server_rate = timings.get("predicted_per_second") or server_rate
    except httpx.HTTPError as e:
        raise SupervisorError(f"request to {url} failed: {e}") from e
    except ValueError as e:
        raise SupervisorError(f"{url} streamed something that is not JSON: {e}") from e
    finally:
        if http is None:
            client.close()
    total = time.monotonic() - start
    if first is None:
        raise SupervisorError(f"{url} streamed no tokens")
    tokens = int(reported or chunks)
    if server_rate:
        rate = float(server_rate)
    elif tokens > 1 and last > first:
        rate = (tokens - 1) / (last - first)
    else:
        rate = tokens / total
    return BenchResult(ttft_s=first - start, tokens=tokens, tokens_per_s=rate, total_s=total)


@click.command()
@click.argument("name")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the model's API key (its server.api_key_file).")
@click.option("--prompt", default="Write one sentence about the sea.", show_default=True)
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the model's port is published on.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the whole completion.")
@click.pass_context
@speaks_errors
def bench(ctx: click.Context, name: str, api_key_file: Path | None, prompt: str, max_tokens: int,
          host: str, timeout: float) -> None:
    """One real streaming completion straight to the model's port: time to first token, tokens/s, latency."""
    with control_client(ctx) as client:
        reply = client.status((name,))
    if reply.unknown:
        output.echo(f"{name}: ERROR ({NO_SUCH_MODEL})")
        raise CommandExit(EXIT_UNKNOWN)
    model = reply.models[0]
    if model.state != "RUNNING" or model.port is None:
        output.echo(f"{name}: ERROR (not running: {model.state}{', ' + model.reason if model.reason else ''})")
        raise CommandExit(EXIT_NOT_RUNNING)
    api_key = api_key_file.read_text().strip() if api_key_file else None
    url = f"http://{host}:{model.port}/v1/chat/completions"
    result = run_bench(url, prompt=prompt, max_tokens=max_tokens, api_key=api_key, timeout=timeout)
    output.echo(f"{name} (port {model.port}, {result.tokens} tokens)")
    output.echo(f"  time to first token  {result.ttft_s:.3f} s")
    output.echo(f"  tokens/s             {result.tokens_per_s:.1f}")
    output.echo(f"  total latency        {result.total_s:.3f} s")


def register(cli: click.Group) -> None:
    add_socket_option(cli)
    cli.add_command(bench)
