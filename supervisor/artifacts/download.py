"""HTTP downloads with progress, for sources and models given by URL (never at daemon run time).

Every byte is untrusted until its SHA-256 matches, so a download is bounded: a
size limit (checked against Content-Length before reading and while reading),
connect and read timeouts, at most MAX_REDIRECTS redirects and none from https
to http (an http URL in the manifest is the operator asking for plain HTTP),
and a body shorter than its Content-Length is an error. Callers write into a
temporary file and rename it into place only after the hash matched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urljoin, urlsplit

from supervisor.errors import FetchError

if TYPE_CHECKING:
    import httpx

MAX_MODEL_BYTES = 256 << 30      # the largest GGUF files today are a few hundred GB split in parts
MAX_SOURCE_BYTES = 2 << 30       # the llama.cpp sdist is ~30 MB
MAX_REDIRECTS = 5
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0            # no byte for this long: the transfer is stalled


def download(url: str, dest: Path, *, progress: Callable[[str], None], label: str,
             max_bytes: int = MAX_MODEL_BYTES, allow_http: bool | None = None,
             client: httpx.Client | None = None) -> None:
    """Stream `url` into `dest` (see the module docstring); every failure is a FetchError.

    allow_http: follow redirects to http:// too (default: only when `url` itself is http).
    """
    import httpx  # only the commands that download pay for it

    if allow_http is None:
        allow_http = urlsplit(url).scheme == "http"
    own = client is None
    http = client or httpx.Client(
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), follow_redirects=False,
    )
    try:
        with dest.open("wb") as out:
            _fetch(http, url, out, progress=progress, label=label, max_bytes=max_bytes, allow_http=allow_http)
    except httpx.HTTPError as e:
        raise FetchError(f"could not download {url}: {e}") from e
    except OSError as e:
        raise FetchError(f"could not write {dest} while downloading {url}: {e}") from e
    finally:
        if own:
            http.close()


def _fetch(http: httpx.Client, url: str, out: BinaryIO, *, progress: Callable[[str], None], label: str,
           max_bytes: int, allow_http: bool) -> None:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        scheme = urlsplit(current).scheme
        if scheme not in ("https", "http") or (scheme == "http" and not allow_http):
            raise FetchError(
                f"could not download {url}: it redirects to {current}, which is not https"
                " (fix: use an https URL, or write the http URL itself in the manifest if plain HTTP is meant)"
            )
        with http.stream("GET", current, follow_redirects=False) as r:
            if r.is_redirect:
                location = r.headers.get("location")
                if not location:
                    raise FetchError(f"could not download {url}: HTTP {r.status_code} without a Location")
                current = urljoin(current, location)
                continue
            if r.status_code != 200:
                raise FetchError(f"could not download {url}: HTTP {r.status_code} from {current}")
            total = int(r.headers.get("content-length") or 0)
            if total > max_bytes:
                raise FetchError(f"could not download {url}: it is {total} bytes, over the {max_bytes} byte limit")
            done, shown = 0, -10
            for block in r.iter_bytes(1 << 20):
                done += len(block)
                if done > max_bytes:
                    raise FetchError(f"could not download {url}: more than {max_bytes} bytes; stopped")
                out.write(block)
                pct = done * 100 // total if total else 0
                if total and pct >= shown + 10 and pct < 100:
                    progress(f"{label}: {done >> 20}/{total >> 20} MiB ({pct}%)")
                    shown = pct
            if total and done != total:
                raise FetchError(f"could not download {url}: got {done} of {total} bytes (connection cut)")
            progress(f"{label}: {done >> 20} MiB, done")
            return
    raise FetchError(f"could not download {url}: more than {MAX_REDIRECTS} redirects")
