"""HTTP downloads with progress, for sources and models given by URL (never at daemon run time)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from supervisor.errors import FetchError


def download(url: str, dest: Path, *, progress: Callable[[str], None], label: str) -> None:
    """Stream `url` into `dest`, reporting every 10 % and the end; HTTP errors become FetchError."""
    import httpx  # only the commands that download pay for it

    try:
        with dest.open("wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            r.raise_for_status()
            total = int(r.headers.get("content-length") or 0)
            done, shown = 0, -10
            for block in r.iter_bytes(1 << 20):
                out.write(block)
                done += len(block)
                pct = done * 100 // total if total else 0
                if total and pct >= shown + 10 and pct < 100:
                    progress(f"{label}: {done >> 20}/{total >> 20} MiB ({pct}%)")
                    shown = pct
        progress(f"{label}: {done >> 20} MiB, done")
    except httpx.HTTPError as e:
        raise FetchError(f"could not download {url}: {e}") from e
