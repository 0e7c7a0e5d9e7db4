"""Hostile query strings and paths on every endpoint of the web UI's HTTP API (docs/http-api.md): huge
numbers, injection attempts in filters, bad UTF-8, control characters, traversal. Each answer is a proper
status with the JSON error shape (or a page), never a 500; the server keeps serving; and the state does
not change (the web API has no writes)."""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import replace
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.web import WebMaster, web_master
from tests.unit.fuzz.requests import FUZZ_SETTINGS

pytestmark = pytest.mark.timeout(300)

ALLOWED = {200, 400, 404, 410, 503}
MAX_LINE = 8190  # aiohttp's limit on the request line (docs/http-api.md)
ENDPOINTS = ["/api/v1/cluster", "/api/v1/agents", "/api/v1/agents/{id}", "/api/v1/frameworks",
             "/api/v1/frameworks/{id}", "/api/v1/tasks", "/api/v1/tasks/{id}", "/api/v1/tasks/{id}/timeline",
             "/api/v1/tasks/{id}/trace", "/api/v1/tasks/{id}/output", "/api/v1/events", "/api/v1/state",
             "/api/v1/diff", "/api/v1/services", "/api/v1/services/{id}", "/tasks/{id}", "/agents/{id}", "/",
             "/static/{id}"]
PARAMS = ["after", "before", "limit", "offset", "from", "to", "at", "type", "framework", "agent", "task", "q",
          "state", "sort", "order", "stream", "tail"]
HOSTILE = st.one_of(
    st.sampled_from(["", "-1", "0", "1", "9" * 30, "1e309", "NaN", "inf", "0x10", "99999999999999999999",
                     str(2**63), str(2**63 - 1), "' OR 1=1 --", "\"; DROP TABLE events; --", "%", "%00", "%FF%FE",
                     "../../etc/passwd", "<script>alert(1)</script>", "*", "%25", "a,b,,c", "TASK_RUNNING,'x'",
                     "#", "#-1", "@-5", "@1e400", "10m", "2026-13-45T99:99", "\u202e", "x" * 5000]),
    st.text(max_size=30),
    st.binary(max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),
)


def fingerprint(wm: WebMaster) -> str:
    return str(wm.node.master.read_state(lambda s: s.fingerprint()))


def raw_get(url: str, target: bytes) -> int:
    """GET with a raw request target (bytes a client library would refuse to send); the status, or 0 when
    the server closed the connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def wm() -> WebMaster:  # type: ignore[misc]
    with web_master(("f-0", "f-1"), settings=replace(FUZZ_SETTINGS, offer_timeout=3600.0)) as m:
        yield m


def test_hostile_query_strings_get_proper_answers_and_change_nothing(wm: WebMaster) -> None:
    codes: Counter[int] = Counter()
    ref = quote(f"{wm.framework.framework_id}/f-0", safe="")

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(ENDPOINTS), st.one_of(HOSTILE, st.just(ref)),
           st.lists(st.tuples(st.sampled_from(PARAMS), HOSTILE), max_size=4))
    def run(endpoint: str, ident: str, query: list[tuple[str, str]]) -> None:
        before = fingerprint(wm)
        path = endpoint.replace("{id}", quote(ident, safe="%"))
        qs = "&".join(f"{k}={quote(v, safe='%')}" for k, v in query)
        target = path + ("?" + qs if qs else "")
        answer = wm.client.get(target)
        assert answer.status in ALLOWED, (path, qs, answer.status, answer.text[:300])
        if len(target) > MAX_LINE:  # refused by the HTTP layer before any route: a plain 400
            assert answer.status == 400
        elif path.startswith("/api/") and answer.status != 200:
            error = answer.json()["error"]
            assert set(error) >= {"code", "message", "field"} and error["message"]
        assert fingerprint(wm) == before, (path, qs)
        codes[answer.status] += 1

    run()
    assert codes[400] > 0 and codes[200] > 0, codes
    assert wm.client.get_json("/api/v1/cluster")["counts"]["tasks"] == 2  # still serving


def test_raw_bytes_and_oversized_requests_are_refused_cleanly(wm: WebMaster) -> None:
    before = fingerprint(wm)
    for target in (b"/api/v1/tasks?q=\xff\xfe", b"/api/v1/events?type=\xc3\x28", b"/tasks/\xff",
                   b"/api/v1/tasks/%ff%fe/timeline", b"/api/v1/tasks?q=" + b"a" * 20000,
                   b"/static/%2e%2e/%2e%2e/etc/passwd", b"/api/v1/events?after=1&after=2&limit=1",
                   b"/api/v1/tasks?" + b"&".join(b"q%d=1" % i for i in range(3000))):
        status = raw_get(wm.server.url, target)
        assert status in ALLOWED | {0, 414, 431}, (target[:80], status)
    assert fingerprint(wm) == before
    assert wm.client.get_json("/api/v1/tasks")["total"] == 2
