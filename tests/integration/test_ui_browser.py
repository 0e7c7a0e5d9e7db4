"""The web UI in a real browser: Debian's chromium driven by Playwright against a real `tessera up` cluster
(3 masters, 1 agent), as an operator would use it.

What is pinned: every page loads with no console error; a task started with `tessera run` appears on the
tasks page and in the event log's live tail without a reload; the time-travel view at index N shows what
`tessera state --at N --json` prints; the task's trace waterfall shows the Raft commit span; after the
leader master is killed, a surviving master's overview names the new leader and its pages keep working
(and a page on the dead one says so, with links to the others); unknown ids get the 404 page, malformed
points a clear message. Two more use their own masters: a secured master's login form, cookie and sign-out,
and the event log's notice when a resumed tail asks for events retention removed (an in-process master).

No timing assertions (machines here are noisy): every wait is bounded generously and the measured
latencies are printed (`-s` shows them) so they can be recorded against the targets (a task on the
tasks page: 2 s; a leader change on the overview: 3 s).

Screenshots of every page go to a temporary directory (their paths are printed); with
`TESSERA_UI_SCREENSHOTS=docs/ui python -m pytest tests/integration/test_ui_browser.py` the six the README
shows are written to docs/ui/ instead.

Chromium cannot be downloaded by Playwright here: the test uses `/usr/bin/chromium` (the Debian package
`chromium`, installed by .ci/run) and fails naming the package when it is missing.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_up import TESSERA, Up, child_pids, clean_env, gone, kill_all
from tests.integration.test_web_processes import ACL, TOKENS  # ops reads; nobody may not
from tests.support.cluster import wait_for
from tests.support.secure_cluster import new_pki, secured_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 15.0  # seconds: every wait's bound (the targets are far below; these only catch a broken UI)
VIEWPORT = {"width": 1280, "height": 800}


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read().decode())


@dataclass
class Cluster:
    up: Up
    cwd: Path
    ui: str  # the UI `tessera up` printed (the leader's when it started)
    pids: list[int]
    runs: list[subprocess.Popen[str]] = field(default_factory=list)

    def cli(self, *args: str) -> Any:
        done = subprocess.run([*TESSERA, *args], cwd=self.cwd, env=clean_env(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def overview(self, ui: str | None = None) -> Any:
        return get_json(f"{ui or self.ui}api/v1/cluster")

    def members(self) -> list[dict[str, Any]]:
        return list(json.loads((self.cwd / ".tessera" / "cluster.json").read_text())["members"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cwd = tmp_path_factory.mktemp("ui")
    up = Up(cwd, "--masters", "3", "--agents", "1", "--duration", "550", "--quiet")
    pids: list[int] = []
    runs: list[subprocess.Popen[str]] = []
    try:
        up.wait_ready()
        pids = child_pids(cwd / ".tessera" / "cluster.json")
        line = wait_for(lambda: next((x for x in up.lines if x.startswith("ui: ")), None), 30, what="the ui: line")
        ui = line.split()[1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", ui), line
        c = Cluster(up, cwd, ui, pids, runs)
        wait_for(lambda: c.overview()["leader"], WAIT, what="a leader on the UI's API")
        yield c
    finally:
        for run in runs:
            if run.poll() is None:
                run.send_signal(signal.SIGTERM)
                try:
                    run.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    run.kill()
        if up.proc.poll() is None:
            os.kill(up.proc.pid, signal.SIGTERM)
            try:
                up.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        kill_all(up, [p for p in pids if not gone(p)])


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install chromium; "
                    ".ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@contextmanager
def chromium(pw: Any, **options: Any) -> Iterator[Any]:
    """Debian's chromium, headless, on a fresh profile (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="tessera-ui-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS, viewport=VIEWPORT, **options)
        context.set_default_timeout(WAIT * 1000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    with chromium(playwright) as context:
        yield context


DOCUMENTED = ("overview", "tasks", "task", "events", "timetravel", "service")  # the README shows these (docs/ui/)


@dataclass
class Shots:
    """Where screenshots go: all of them to a temporary directory; with TESSERA_UI_SCREENSHOTS=DIR the
    README's (DOCUMENTED) to DIR instead."""

    tmp: Path
    documented: Path | None

    def path(self, name: str) -> Path:
        where = self.documented if self.documented and name in DOCUMENTED else self.tmp
        where.mkdir(parents=True, exist_ok=True)
        return where / f"{name}.png"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Shots:
    wanted = os.environ.get("TESSERA_UI_SCREENSHOTS")
    return Shots(tmp_path_factory.mktemp("screenshots"), Path(wanted) if wanted else None)


class Tab:
    """A browser page with its console errors and uncaught exceptions collected."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text} ({m.location})")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, url: str) -> Any:
        response = self.page.goto(url, wait_until="load")
        self.page.wait_for_selector("main .page > *")  # the router drew something
        # (no wait_for_function: its polling evaluates a string, which the server's CSP forbids)
        self.page.locator("main [aria-busy=true]").first.wait_for(state="detached")
        return response

    def shot(self, shots: Shots, name: str, start_at: str | None = None) -> None:
        """A viewport-sized screenshot, of the page's top or from the element `start_at` selects down."""
        path = shots.path(name)
        if start_at is None:
            self.page.screenshot(path=str(path))
        else:
            box = self.page.locator(start_at).first.bounding_box()
            assert box is not None, start_at
            top = max(0.0, box["y"] - 60)
            self.page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": top, **VIEWPORT})
        print(f"screenshot {path}")

    def close(self) -> None:
        self.page.close()


def start_task(c: Cluster, name: str, command: str) -> subprocess.Popen[str]:
    run = subprocess.Popen([*TESSERA, "run", "--name", name, "--cpus", "0.1", "--mem", "16", "--", command],
                           cwd=c.cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    c.runs.append(run)
    return run


def find_task(c: Cluster, name: str, ui: str | None = None) -> dict[str, Any] | None:
    page = get_json(f"{ui or c.ui}api/v1/tasks?q={name}&limit=10")
    return next((t for t in page["items"] if t["name"] == name), None)


def test_a_task_started_with_tessera_run_appears_on_the_tasks_page_and_the_event_tail_without_a_reload(
        cluster: Cluster, browser: Any, shots: Shots) -> None:
    tasks = Tab(browser)
    events = Tab(browser)
    tasks.open(f"{cluster.ui}tasks")
    events.open(f"{cluster.ui}events")
    events.page.wait_for_selector("[data-testid=events-status]:has-text('live')")
    tasks.page.evaluate("window.__notReloaded = true")
    events.page.evaluate("window.__notReloaded = true")

    name = f"ui-probe-{os.getpid()}"
    started = time.monotonic()
    start_task(cluster, name, "echo hello-from-the-ui-test; echo to-stderr >&2; sleep 400")
    row = tasks.page.locator("[data-testid=tasks-table] tbody tr", has_text=name)
    row.first.wait_for(timeout=WAIT * 4 * 1000)  # `tessera run` itself starts a Python and subscribes first
    seen = time.time()
    print(f"task on the tasks page {time.monotonic() - started:.2f} s after `tessera run` started")
    task = wait_for(lambda: find_task(cluster, name), WAIT, what="the task in the API")
    launched = get_json(f"{cluster.ui}api/v1/events?type=TaskLaunched&task={task['id']}")["items"]
    assert launched, "no TaskLaunched event for the task"
    print(f"task on the tasks page {seen - launched[0]['time']:.2f} s after its TaskLaunched event "
          "(target 2 s; cross-process clocks)")
    assert tasks.page.evaluate("window.__notReloaded") is True

    tail = events.page.locator(f"[data-testid=events-table] tbody tr[data-task='{task['id']}']")
    tail.first.wait_for()
    assert events.page.locator(f"tr[data-task='{task['id']}'][data-type=TaskLaunched]").count() == 1
    assert events.page.evaluate("window.__notReloaded") is True

    # the row goes RUNNING live too, and links to the task's page
    row.locator(".state", has_text="running").first.wait_for(timeout=WAIT * 2 * 1000)
    tasks.shot(shots, "tasks")
    events.shot(shots, "events")
    assert tasks.errors == [] and events.errors == [], tasks.errors + events.errors
    tasks.close()
    events.close()


def test_every_page_loads_without_console_errors_and_unknown_ids_get_a_404_page(
        cluster: Cluster, browser: Any, shots: Shots) -> None:
    task = wait_for(lambda: find_task(cluster, f"ui-probe-{os.getpid()}"), WAIT, what="the probe task")
    agent = get_json(f"{cluster.ui}api/v1/agents")["items"][0]["id"]
    # the service framework with one app, for the services pages
    services = subprocess.Popen([*TESSERA, "services"], cwd=cluster.cwd, env=clean_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    cluster.runs.append(services)
    app = cluster.cwd / "ui-app.json"
    app.write_text(json.dumps({"id": "ui-app", "instances": 1, "cpus": 0.1, "mem": 16, "cmd": "sleep 500"}))

    def applied() -> bool:
        done = subprocess.run([*TESSERA, "service", "apply", str(app)], cwd=cluster.cwd, env=clean_env(),
                              capture_output=True, text=True, timeout=60)
        return done.returncode == 0

    wait_for(applied, WAIT * 4, interval=1.0, what="tessera service apply")
    wait_for(lambda: [s for s in get_json(f"{cluster.ui}api/v1/services")["items"] if s["running"] == 1], WAIT * 2,
             what="the app running")
    framework = task["framework_id"]
    pages = {
        "overview": "", "agents": "agents", "agent": f"agents/{agent}", "frameworks": "frameworks",
        "framework": f"frameworks/{framework}", "tasks-all": "tasks", "events-all": "events",
        "timetravel": "timetravel", "services": "services", "service": "services/ui-app",
    }
    for shot_name, path in pages.items():
        tab = Tab(browser)
        response = tab.open(f"{cluster.ui}{path}")
        assert response.status == 200, path
        assert tab.page.locator("[data-testid=not-found], [data-testid=error]").count() == 0, path
        assert tab.page.locator("#insecure-banner").is_visible(), path  # `tessera up` is insecure dev mode
        tab.page.wait_for_selector("[data-testid=leader-master]")
        if shot_name in ("agent", "framework"):  # its tasks, from the server's filtered pages
            tab.page.locator(f"[data-testid={shot_name}-tasks] tbody tr", has_text=task["id"]).wait_for()
        if shot_name == "services":
            tab.page.locator("[data-testid=services-table] tr", has_text="ui-app").wait_for()
        if shot_name == "service":
            tab.page.locator("[data-testid=service-instances] tbody tr .state", has_text="running").wait_for()
        if shot_name in ("overview", "agents", "frameworks", "framework", "timetravel", "services", "service"):
            tab.shot(shots, shot_name)
        assert tab.errors == [], (path, tab.errors)
        tab.close()

    # links between pages: the tasks table links to the task, the task to its framework
    tab = Tab(browser)
    tab.open(f"{cluster.ui}tasks?q={task['id']}")
    tab.page.locator("[data-testid=tasks-table] tbody a", has_text=task["id"]).first.click()
    tab.page.wait_for_selector("[data-testid=task-ref]")
    assert tab.page.locator("[data-testid=task-ref]").inner_text() == task["ref"]
    tab.page.wait_for_selector("[data-testid=output-stdout]:has-text('hello-from-the-ui-test')")
    tab.page.wait_for_selector("[data-testid=output-stderr]:has-text('to-stderr')")
    tab.page.wait_for_selector("[data-testid=task-timeline] li")
    tab.page.locator("dd a", has_text=re.compile(r".+")).first.click()
    tab.page.wait_for_selector("[data-testid=framework-tasks]")
    assert tab.errors == [], tab.errors
    tab.close()

    # unknown ids: the server's 404 and the page's "not found" with a way back
    for path in ("tasks/no-such-task", "agents/no-such-agent", "frameworks/no-such-framework", "no/such/page"):
        tab = Tab(browser)
        response = tab.open(f"{cluster.ui}{path}")
        assert response.status == 404, path
        tab.page.wait_for_selector("[data-testid=not-found]")
        assert tab.page.locator("[data-testid=not-found] a[href='/']").count() == 1
        if path.startswith("tasks"):
            tab.shot(shots, "not-found")
        # the API's own 404 is logged by the browser as a failed resource, nothing else is
        assert all("404" in e for e in tab.errors), (path, tab.errors)
        tab.close()

    # malformed points: a clear message, not a broken page
    tab = Tab(browser)
    tab.open(f"{cluster.ui}timetravel?at=not-a-point")
    error = tab.page.locator("[data-testid=error]")
    error.wait_for()
    assert "at" in error.inner_text()
    tab.open(f"{cluster.ui}events?around=12abc")
    assert "is not an event index" in tab.page.locator("[data-testid=error]").inner_text()
    assert all("400" in e for e in tab.errors), tab.errors
    tab.close()


def test_time_travel_at_an_index_shows_what_tessera_state_at_prints(cluster: Cluster, browser: Any) -> None:
    task = wait_for(lambda: find_task(cluster, f"ui-probe-{os.getpid()}"), WAIT, what="the probe task")
    launched = get_json(f"{cluster.ui}api/v1/events?type=TaskLaunched&task={task['id']}")["items"][0]["seq"]
    for n in (1, launched):  # (a point inside an entry shows the whole entry: 1 is surely before the task)
        expected = cluster.cli("state", "--at", str(n), "--json")
        tab = Tab(browser)
        tab.open(f"{cluster.ui}timetravel?at={n}")
        tab.page.wait_for_selector("[data-testid=tt-index]")
        assert tab.page.locator("[data-testid=tt-index]").inner_text() == f"#{expected['at']['index']}"
        state = expected["state"]
        for what in ("agents", "frameworks", "tasks"):
            shown = tab.page.locator(f"[data-testid=tt-count-{what}]").inner_text()
            assert int(shown) == len(state.get(what, [])), (n, what)
        shown_tasks = {r.get_attribute("data-task"): r.locator(".state").first.get_attribute("title")
                       for r in tab.page.locator("[data-testid=tt-tasks] tbody tr").all()}
        assert shown_tasks == {t["task"]["task_id"]: t["state"] for t in state.get("tasks", [])}, n
        assert (task["id"] in shown_tasks) == (n == launched)
        assert tab.errors == [], tab.errors
        tab.close()

    # the slider over time: a second after the launch was recorded, the state is what `--at @T` prints
    launch_time = get_json(f"{cluster.ui}api/v1/events?after={launched - 1}&limit=1")["items"][0]["time"]
    kept = get_json(f"{cluster.ui}api/v1/events?limit=1")
    assert kept["first_time"] <= launch_time <= kept["last_time"]
    when = math.ceil(launch_time)
    expected = cluster.cli("state", "--at", f"@{when}", "--json")
    tab = Tab(browser)
    tab.open(f"{cluster.ui}timetravel?at=1")  # before the task: sliding to the launch's time brings it in
    tab.page.wait_for_selector("[data-testid=tt-index]")
    assert tab.page.locator(f"[data-testid=tt-tasks] tbody tr[data-task='{task['id']}']").count() == 0
    tab.page.select_option("[data-testid=tt-mode]", "time")
    slider = tab.page.locator("[data-testid=tt-slider]")
    assert slider.get_attribute("aria-label") == "Time"
    assert int(slider.get_attribute("min")) == math.floor(kept["first_time"])
    slider.evaluate("(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }", when)
    assert tab.page.locator("[data-testid=tt-at-input]").input_value() == f"@{when}"
    tab.page.wait_for_selector(f"[data-testid=tt-tasks] tbody tr[data-task='{task['id']}']")
    assert tab.page.locator("[data-testid=tt-index]").inner_text() == f"#{expected['at']['index']}"
    assert tab.page.evaluate("location.search") == f"?at=%40{when}"
    assert tab.errors == [], tab.errors
    tab.close()

    # a diff between two points: the task appears
    tab = Tab(browser)
    tab.open(f"{cluster.ui}timetravel?at={launched}&from=1")
    tab.page.wait_for_selector("[data-testid=tt-diff]")
    assert tab.page.locator("[data-testid=tt-diff] tr", has_text=task["id"]).count() >= 1
    assert tab.errors == [], tab.errors
    tab.close()


def test_the_task_page_shows_its_trace_waterfall_with_the_raft_commit_span(
        cluster: Cluster, browser: Any, shots: Shots) -> None:
    task = wait_for(lambda: find_task(cluster, f"ui-probe-{os.getpid()}"), WAIT, what="the probe task")
    leader_ui = cluster.overview()["leader"]["ui_url"]  # spans are kept by the leader
    tab = Tab(browser)
    tab.open(f"{leader_ui}tasks/{urllib.request.quote(task['ref'], safe='')}")
    raft = tab.page.locator("[data-testid=trace-waterfall] [data-span='raft.commit']")
    raft.first.wait_for()
    assert re.search(r"raft\.commit .*@\d+", raft.first.inner_text())
    tab.page.wait_for_selector("[data-testid=task-statuses] tbody tr")
    tab.page.wait_for_selector("[data-testid=output-stdout]:has-text('hello-from-the-ui-test')")
    tab.shot(shots, "task", start_at="[data-testid=task-timeline]")
    assert tab.errors == [], tab.errors
    tab.close()


def test_after_the_leader_is_killed_a_surviving_masters_overview_names_the_new_leader_and_keeps_working(
        cluster: Cluster, browser: Any, shots: Shots) -> None:
    before = cluster.overview()
    leader = before["leader"]
    survivor = next(m for m in before["masters"] if not m["is_leader"] and m["ui_url"])
    tab = Tab(browser)
    tab.open(survivor["ui_url"])
    name = tab.page.locator("[data-testid=overview-leader-name]")
    name.wait_for()
    assert name.inner_text() == leader["name"]
    tab.page.wait_for_selector(f"[data-testid=quorum] tr[data-master='{leader['name']}'][data-leader=true]")

    on_leader = Tab(browser)  # a page on the master about to die
    on_leader.open(f"{leader['ui_url']}tasks")
    on_leader.page.wait_for_selector("[data-testid=leader-master]")

    pid = next(m["pid"] for m in cluster.members() if m["grpc"] == leader["grpc_address"])
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: name.inner_text(timeout=1000) not in (leader["name"], "No leader known"), WAIT * 2,
             what="a new leader on the overview")
    print(f"new leader on the overview {time.monotonic() - killed:.2f} s after the leader was killed (target 3 s)")
    new_leader = name.inner_text()
    assert new_leader != leader["name"]
    # what the page showed (from the log's LeaderElected event, or the API) is what the API comes to say
    wait_for(lambda: (cluster.overview(survivor["ui_url"])["leader"] or {}).get("name") == new_leader, WAIT,
             what="the survivor's API naming the leader the page showed")
    tab.page.wait_for_selector(f"[data-testid=quorum] tr[data-master='{leader['name']}'] .state.bad")
    tab.shot(shots, "overview-after-leader-kill")
    # the page on the dead master says so and links to the others
    lost = on_leader.page.locator("#master-bar .conn-lost")
    lost.wait_for()
    assert on_leader.page.locator(f"#master-bar a[href='{survivor['ui_url']}']").count() == 1
    on_leader.close()
    assert tab.errors == [], tab.errors

    # the surviving master's pages keep working: its tasks, its event log, the task's page
    task = wait_for(lambda: find_task(cluster, f"ui-probe-{os.getpid()}", survivor["ui_url"]), WAIT,
                    what="the probe task on the surviving master")
    tab.page.locator("header nav a", has_text="Tasks").click()
    tab.page.locator("[data-testid=tasks-table] tbody tr", has_text=task["id"]).first.wait_for()
    tab.page.locator("header nav a", has_text="Event log").click()
    tab.page.wait_for_selector("[data-testid=events-table] tbody tr[data-seq]")
    tab.page.wait_for_selector("[data-testid=leader-master]")
    assert tab.page.locator("[data-testid=leader-master]").inner_text() == new_leader
    assert tab.errors == [], tab.errors
    tab.close()


def test_a_secured_master_asks_the_browser_for_a_token_and_then_serves_its_pages(
        playwright: Any, tmp_path: Path, shots: Shots) -> None:
    pki = new_pki(tmp_path / "pki", ACL)
    with secured_cluster(tmp_path / "cluster", pki, TOKENS):
        url_file = tmp_path / "cluster" / "m1" / "ui-url"
        url = wait_for(lambda: url_file.is_file() and url_file.read_text().strip(), 30, what="the master's ui-url")
        assert url.startswith("https://127.0.0.1:")
        # the dev CA is not in chromium's store: the certificate itself is checked by test_web_processes.py
        with chromium(playwright, ignore_https_errors=True) as context:
            tab = Tab(context)
            answer = tab.page.goto(f"{url}tasks")
            assert answer.status == 401
            tab.page.wait_for_selector("form[action='/login'] input[name=token]")
            assert tab.page.locator("input[name=next]").input_value() == "/tasks"
            tab.page.fill("input[name=token]", "tok-not-a-token")
            tab.page.click("button[type=submit]")
            tab.page.wait_for_selector("#login-error:has-text('not accepted')")
            # a principal without `read`: POST /login answers 403 and the page says why
            tab.page.fill("input[name=token]", TOKENS["nobody"])
            tab.page.click("button[type=submit]")
            tab.page.wait_for_selector("#login-error:has-text('may not read the cluster')")
            assert tab.page.locator("input[name=next]").input_value() == "/tasks"  # kept across refusals
            tab.shot(shots, "login")
            # ?error= is a code mapped to a fixed text: anything else is never put on the page
            tab.page.goto(f"{url}login?error=permission_denied&next=/tasks")
            tab.page.wait_for_selector("#login-error:has-text('may not read the cluster')")
            tab.page.goto(f"{url}login?error=%3Cb%3Eyou%20were%20hacked%3C%2Fb%3E&next=/tasks")
            tab.page.wait_for_selector("#login-error:has-text('Sign in again.')")
            assert "hacked" not in tab.page.content()
            tab.page.fill("input[name=token]", TOKENS["ops"])
            tab.page.click("button[type=submit]")
            tab.page.wait_for_url(f"{url}tasks")
            tab.page.wait_for_selector("[data-testid=tasks-table]")
            tab.page.wait_for_selector("[data-testid=leader-master]")
            assert not tab.page.locator("#insecure-banner").is_visible()
            cookie = next(c for c in context.cookies() if c["name"] == "tessera_token")
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            assert tab.page.evaluate("document.cookie") == ""  # the token is out of the scripts' reach
            tab.page.locator("header nav a", has_text="Overview").click()
            tab.page.wait_for_selector("[data-testid=quorum] tr[data-leader=true]")
            tab.page.click("#logout button")  # signing out clears the cookie: the pages ask again
            tab.page.wait_for_url(f"{url}login")
            assert [c for c in context.cookies() if c["name"] == "tessera_token"] == []
            assert tab.page.goto(f"{url}tasks").status == 401
            # the refused logins were answered 401 and 403: the browser logs those documents, nothing else
            assert all(" 401 " in e or " 403 " in e for e in tab.errors), tab.errors


def test_the_event_log_says_so_when_it_asks_for_events_retention_removed(playwright: Any) -> None:
    """An in-process master (its event store pruned by hand) serving the real pages: a paused tail that
    resumes after retention removed what it had not seen shows the stream's gap notice and goes on; a jump
    to a removed index says where the log starts."""
    from tessera.control_plane.web.server import STATIC_DIR, WebServer
    from tests.support.web import launch, web_master

    with web_master(("gap-0",)) as m, chromium(playwright) as context:
        server = WebServer(m.node.server.operator, "127.0.0.1", 0, insecure=True, ssl_context=None,
                           static_dir=STATIC_DIR).start()
        try:
            tab = Tab(context)
            tab.open(f"{server.url}events")
            store = m.node.events
            seen = store.last_seq()
            tab.page.locator(f"[data-testid=events-table] tr[data-seq='{seen}']").wait_for()
            tab.page.click("[data-testid=events-pause]")
            tab.page.locator("[data-testid=events-status]", has_text="paused").wait_for()
            launch(m.node, m.framework, m.agent, ["gap-1", "gap-2"])  # events the paused page has not seen
            store.prune(before_seq=seen + 3)
            tab.page.click("[data-testid=events-pause]")  # resume: the stream starts after `seen`
            gap = tab.page.locator("[data-testid=events-gap]")
            gap.wait_for()
            assert f"#{seen + 1}" in gap.inner_text() and f"#{seen + 3}" in gap.inner_text()
            tab.page.locator(f"[data-testid=events-table] tr[data-seq='{store.last_seq()}']").wait_for()
            assert tab.page.locator(f"[data-testid=events-table] tr[data-seq='{seen + 1}']").count() == 0

            tab.open(f"{server.url}events?around=1")
            assert f"starts at #{seen + 3}" in tab.page.locator("[data-testid=events-gap]").inner_text()
            assert all("410" in e for e in tab.errors), tab.errors  # the pruned page's answer, nothing else
        finally:
            server.stop()
