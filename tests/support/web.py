"""A client for the web UI's HTTP API (docs/http-api.md) and an in-process master serving it.

`WebClient` speaks plain HTTP/1.1 with `http.client` (no redirects followed, cookies kept by hand, an
optional TLS context), so tests see exactly the status, headers and body the server sent. `web_master()`
starts an `InProcessMaster` with a scripted agent and framework, launches tasks, and serves the web app
over it on a free 127.0.0.1 port, from a temporary static directory (the UI's own files are not needed)."""

from __future__ import annotations

import http.client
import json
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tessera.control_plane.eventlog import MemoryEventStore
from tessera.control_plane.tracing import setup_tracing
from tessera.control_plane.web.server import WebServer
from tessera.v1 import common_pb2
from tests.support.cluster import wait_for
from tests.support.inprocess import InProcessMaster
from tests.support.scripted import ScriptedAgent, ScriptedFramework

INDEX_HTML = "<!doctype html><title>Tessera</title><script src=/static/app.js></script>"
LOGIN_HTML = '<!doctype html><form method="post" action="/login"><input name="token"></form>'


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class WebClient:
    url: str
    context: ssl.SSLContext | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0

    def _conn(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=self.timeout,
                                               context=self.context)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = self._conn()
        try:
            sent = dict(headers or {})
            if self.cookies and "Cookie" not in sent:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
            for k, v in resp.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    value = rest.split(";", 1)[0]
                    if value and "max-age=0" not in v.lower():
                        self.cookies[name] = value
                    else:
                        self.cookies.pop(name, None)
            return Answer(resp.status, got, data)
        finally:
            conn.close()

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def get_json(self, path: str, status: int = 200, headers: dict[str, str] | None = None) -> Any:
        answer = self.get(path, headers)
        assert answer.status == status, f"GET {path}: {answer.status} {answer.text[:500]}"
        return answer.json()

    def stream(self, path: str, headers: dict[str, str] | None = None) -> SseReader:
        conn = self._conn()
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request("GET", path, headers=sent)
        return SseReader(conn, conn.getresponse())


class SseReader:
    """Server-sent events read one by one: (event, id, data)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn, self.resp = conn, resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}

    def next(self) -> tuple[str, str | None, Any]:
        event, ident, data = "message", None, ""
        while True:
            line = self.resp.fp.readline()  # type: ignore[union-attr]
            if not line:
                raise EOFError("the stream ended")
            text = line.decode().rstrip("\n")
            if not text:
                return event, ident, json.loads(data) if data else None
            key, _, value = text.partition(": ")
            if key == "event":
                event = value
            elif key == "id":
                ident = value
            elif key == "data":
                data += value

    def until(self, kind: str, predicate: Any = None, limit: int = 10_000) -> list[tuple[str, str | None, Any]]:
        """Messages up to and including the first `kind` one (matching `predicate`)."""
        seen = []
        for _ in range(limit):
            msg = self.next()
            seen.append(msg)
            if msg[0] == kind and (predicate is None or predicate(msg[2])):
                return seen
        raise AssertionError(f"no {kind} message within {limit}")

    def close(self) -> None:
        self.conn.close()


@dataclass
class WebMaster:
    node: InProcessMaster
    agent: ScriptedAgent
    framework: ScriptedFramework
    server: WebServer
    client: WebClient
    static: Path
    task_ids: list[str]


def without_provenance(answer: dict[str, Any]) -> dict[str, Any]:
    """A state-at/diff answer as `tessera state --at/--diff --json` prints it: without the web's page
    fields (`offset`, `limit`, `tasks_total`, `changes_total`) and without how each state was obtained
    (the snapshot or cached state it started from, the events replayed: that depends on what the master
    rebuilt before, the answer does not)."""
    out = {k: v for k, v in answer.items() if k not in ("offset", "limit", "tasks_total", "changes_total")}
    for point in ("at", "diff_from"):
        if point in out:
            out[point] = {k: v for k, v in out[point].items() if k not in ("snapshot_index", "replayed_events")}
    return out


def static_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="tessera-web-static-"))
    (d / "index.html").write_text(INDEX_HTML)
    (d / "login.html").write_text(LOGIN_HTML)
    (d / "app.js").write_text("console.log('tessera');\n")
    (d / "css").mkdir()
    (d / "css" / "ui.css").write_text("body{margin:0}\n")
    return d


def launch(node: InProcessMaster, fw: ScriptedFramework, agent: ScriptedAgent, task_ids: list[str],
           state: int = common_pb2.TASK_RUNNING) -> None:
    """Launch `task_ids` (one offer each) and have the agent report `state` for each."""
    for task_id in task_ids:
        offer = wait_for(lambda: next(iter(list(fw.offers.values())), None), 10, what="an offer")
        with fw.lock:
            fw.offers.pop(offer.offer_id, None)
        fw.launch(offer, task_id, command=f"echo {task_id}")
        wait_for(lambda t=task_id: any(x.task_id == t for x in agent.run_tasks()), 10, what=f"{task_id} sent")
        agent.send_status(task_id, state, framework_id=fw.framework_id)
        wait_for(lambda t=task_id: state in fw.states_of(t), 10, what=f"{task_id} acknowledged")


@contextmanager
def web_master(task_ids: tuple[str, ...] = ("web-0", "web-1"), *, guard: Any = None,
               insecure: bool = True, events: Any = None, settings: Any = None) -> Iterator[WebMaster]:
    static = static_dir()
    store = events if events is not None else MemoryEventStore()
    tracer = setup_tracing("tessera-master", span_store=store, set_global=False)  # spans next to the events
    node = InProcessMaster(events=store, tracer_provider=tracer, **({"settings": settings} if settings else {}))
    with node:
        agent = ScriptedAgent(node.channel, hostname="node-1", resources="cpus:8;mem:8192").start()
        assert agent.registered.wait(10)
        fw = ScriptedFramework(node.channel, name="batch").start()
        assert fw.subscribed.wait(10)
        launch(node, fw, agent, list(task_ids))
        server = WebServer(node.server.operator, "127.0.0.1", 0, insecure=insecure, ssl_context=None,
                           static_dir=static, guard=guard).start()
        try:
            yield WebMaster(node, agent, fw, server, WebClient(server.url), static, list(task_ids))
        finally:
            server.stop()
            agent.close()
            fw.close()
            tracer.shutdown()
