"""Issue 22: survivors of gateway/guard.py. Its pure parts exactly, without a served app: how a Host
header is split, which names the gateway answers for a listen address, when an Origin is the
gateway's own, and each refusal `check` gives (the values it names included)."""

from __future__ import annotations

import pytest

from supervisor.gateway.errors import GatewayError
from supervisor.gateway.guard import LOOPBACK_NAMES, allowed_hosts, check, split_host

HOSTS = allowed_hosts("127.0.0.1")
HOST = {"host": "localhost:8080"}
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("value, parsed", [
    ("localhost:8080", ("localhost", 8080)),
    (" LocalHost.:8080 ", ("localhost", 8080)),        # spaces, case and the root's dot do not matter
    ("localhost", ("localhost", None)),
    ("a:0080", ("a", 80)),
    ("a:65535", ("a", 65535)),
    ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)),
    ("[FE80::1]:8", ("fe80::1", 8)),
    ("::1", ("::1", None)),                            # a bare IPv6 address: all of it is the host
])
def test_a_host_header_is_split_into_name_and_port(value: str, parsed: tuple[str, int | None]) -> None:
    assert split_host(value) == parsed


@pytest.mark.parametrize("value", ["", " ", ":80", "a:", "a:b", "a:+1", "a: 1", "a:123456", "[::1", "[::1]x",
                                   "[::1]:", "[::1]:x", "[::1]]:80", "[]:80", "[]"])
def test_a_malformed_host_header_is_none(value: str) -> None:
    assert split_host(value) is None


def test_the_listen_address_is_answered_unless_it_is_a_wildcard() -> None:
    assert LOOPBACK_NAMES == {"127.0.0.1", "localhost", "::1"}
    for wildcard in ("0.0.0.0", "::", "[::]", "", " "):
        assert allowed_hosts(wildcard) == LOOPBACK_NAMES, wildcard
    assert allowed_hosts("10.0.0.2") == LOOPBACK_NAMES | {"10.0.0.2"}
    assert allowed_hosts(" [FE80::1] ") == LOOPBACK_NAMES | {"fe80::1"}
    assert allowed_hosts("Box.LAN.") == LOOPBACK_NAMES | {"box.lan"}


def test_the_operators_names_are_normalised_and_empty_ones_dropped() -> None:
    assert allowed_hosts("0.0.0.0", ["Gpu-Box.lan.", "[FE80::2]", "", "  "]) == LOOPBACK_NAMES | {"gpu-box.lan", "fe80::2"}
    assert allowed_hosts("127.0.0.1", iter(["x"])) == LOOPBACK_NAMES | {"x"}


def refusal(method: str, headers: dict[str, str]) -> tuple[int, str, str]:
    err = check(method, headers, HOSTS)
    assert isinstance(err, GatewayError), headers
    return err.status, err.code, err.message


def test_a_host_not_answered_or_missing_is_421_naming_it() -> None:
    assert refusal("GET", {"host": "evil.example:8080"}) == (
        421, "misdirected_request", "Host 'evil.example:8080' is not a name of this gateway (a DNS-rebinding page"
        " sends its own name; fix: use 127.0.0.1 or localhost, or name the host with --gateway-allowed-hosts)")
    assert refusal("GET", {})[:2] == (421, "misdirected_request")
    assert "Host '' is not" in refusal("GET", {})[2]
    assert refusal("GET", {"host": "localhost:x"})[:2] == (421, "misdirected_request")


@pytest.mark.parametrize("origin", ["http://localhost:8080", "https://localhost:8080", " http://LOCALHOST:8080 "])
def test_the_gateways_own_origin_passes(origin: str) -> None:
    assert check("POST", {**HOST, **JSON, "origin": origin}, HOSTS) is None


def test_an_ipv6_origin_matches_a_bracketed_host() -> None:
    assert check("GET", {"host": "[::1]:8080", "origin": "http://[::1]:8080"}, HOSTS) is None
    assert check("GET", {"host": "[::1]", "origin": "http://[::1]"}, HOSTS) is None


@pytest.mark.parametrize("origin", [
    "null", "", "http://localhost", "http://localhost:8081", "http://127.0.0.1:8080", "ftp://localhost:8080",
    "http://localhost:8080/", "http://localhost:8080/x", "http://localhost:8080?q", "http://u@localhost:8080",
    "http://u:p@localhost:8080", "http://:8080", "http://localhost:99999", "http://localhost:x", "localhost:8080",
])
def test_any_other_origin_is_403_naming_it(origin: str) -> None:
    assert refusal("GET", {**HOST, "origin": origin}) == (
        403, "cross_site_request", f"cross-site request refused (Origin {origin!r}): web pages other than the"
        " gateway's own may not use it (fix: call it from a program, which sends no Origin)")


@pytest.mark.parametrize("site", ["cross-site", "same-site", " Cross-Site "])
def test_sec_fetch_site_from_another_site_is_403_naming_it_or_the_origin(site: str) -> None:
    status, code, message = refusal("GET", {**HOST, "sec-fetch-site": site})
    assert (status, code) == (403, "cross_site_request")
    assert f"(Origin 'Sec-Fetch-Site: {site.strip().lower()}')" in message
    message = refusal("GET", {**HOST, "sec-fetch-site": site, "origin": "http://localhost:8080"})[2]
    assert "(Origin 'http://localhost:8080')" in message


@pytest.mark.parametrize("site", ["same-origin", "none", ""])
def test_sec_fetch_site_of_the_gateway_itself_or_of_the_user_passes(site: str) -> None:
    assert check("GET", {**HOST, "sec-fetch-site": site}, HOSTS) is None


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8",
                                          " application/json ;x=1;y=2"])
def test_a_json_body_passes(content_type: str) -> None:
    assert check("POST", {**HOST, "content-type": content_type}, HOSTS) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("content_type, named", [(None, "'(none)'"), ("", "'(none)'"), ("text/plain", "'text/plain'"),
                                                 ("application/json-seq", "'application/json-seq'"),
                                                 ("text/plain; application/json", "'text/plain; application/json'")])
def test_a_body_not_said_to_be_json_is_415_naming_its_type(method: str, content_type: str | None, named: str) -> None:
    headers = {**HOST, **({} if content_type is None else {"content-type": content_type})}
    assert refusal(method, headers) == (
        415, "unsupported_media_type", f"Content-Type {named}: the gateway takes JSON only"
        " (fix: send 'Content-Type: application/json')")


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_bodyless_method_needs_no_content_type(method: str) -> None:
    assert check(method, dict(HOST), HOSTS) is None
