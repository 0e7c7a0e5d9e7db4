"""What a framework author reads first: `help(tessera.sdk)` (a short guide whose example runs), the README
examples, `tessera.sdk.testing`'s public names and what its `FakeMaster` says about itself."""

from __future__ import annotations

import logging
import pydoc
import re
import textwrap
import threading
from pathlib import Path

import pytest

import tessera.sdk as sdk
import tessera.sdk.testing as testing
from tessera.sdk import TaskState
from tessera.sdk.protocol import AcceptCall, DeclineCall
from tessera.sdk.testing import FakeMaster

ROOT = Path(__file__).resolve().parents[3]

# `help(tessera.sdk)` was 2,234 lines, the guide drowned in every class's inherited members; it is now the
# guide, the package contents and `__all__` (78 lines). Each class's reference is on its module's page.
HELP_PAGE_MAX_LINES = 150


def help_page() -> str:
    return pydoc.render_doc(sdk, renderer=pydoc.plaintext)


def example(text: str) -> str:
    """The minimal scheduler of a guide, from `from tessera.sdk import` to `.run()`, dedented."""
    found = re.search(r"^( *from tessera\.sdk import .*?\.run\(\))$", text, re.M | re.S)
    assert found is not None, "no example from `from tessera.sdk import` to `.run()`"
    return textwrap.dedent(found.group(1))


def test_help_sdk_is_the_guide_and_stays_short() -> None:
    text = help_page()
    lines = text.count("\n") + 1
    assert lines <= HELP_PAGE_MAX_LINES, f"help(tessera.sdk) is {lines} lines (at most {HELP_PAGE_MAX_LINES})"
    assert "inherited from" not in text
    guide = text[: text.index("PACKAGE CONTENTS")]
    for must in ("teardown()", "stop()", "failover_timeout", "REFUSED", "reconcile", "TASK_RUNNING",
                 "FakeMaster", "sdk/README.md", "tessera.sdk.testing", "tessera.sdk.examples"):
        assert must in guide, must


def test_the_guide_names_every_public_name() -> None:
    named = set(re.findall(r"`(\w+)`", sdk.__doc__ or ""))
    assert set(sdk.__all__) <= named, sorted(set(sdk.__all__) - named)


def test_the_package_serves_the_api_without_holding_it_in_its_namespace() -> None:
    public = {name for name in dir(sdk) if not name.startswith("_")}
    assert all(type(getattr(sdk, name)).__name__ == "module" for name in public), public
    star: dict[str, object] = {}
    exec("from tessera.sdk import *", star)
    assert {name for name in star if not name.startswith("__")} == set(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(sdk, name) is star[name]
    assert not hasattr(sdk, "NoSuchName")


@pytest.mark.parametrize(("guide", "masters"), [
    ("help(tessera.sdk)", '["127.0.0.1:5050"]'),
    ("sdk/README.md", '"m1:5050,m2:5050,m3:5050"'),
])
def test_the_guides_example_runs_against_fake_master(guide: str, masters: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The example, pointed at a FakeMaster instead of its masters: it launches its one task once, gives back
    what it does not use, and when the task finishes tears the framework down; no callback fails."""
    code = example((sdk.__doc__ or "") if guide == "help(tessera.sdk)" else (ROOT / guide).read_text())
    assert code.count(masters) == 1, code
    fake = FakeMaster(behaviour=lambda task: [TaskState.TASK_STARTING, TaskState.TASK_RUNNING])
    fake.add_agent("cpus:1;mem:256")  # one agent: after the launch, what is left of it is offered again
    failures: list[BaseException] = []

    def run() -> None:
        try:
            exec(code.replace(masters, "fake.addresses, transport=fake.transport()"), {"fake": fake})
        except BaseException as exc:  # noqa: B036 - reported by the test below
            failures.append(exc)

    caplog.set_level(logging.ERROR)
    runner = threading.Thread(target=run, name="guide-example", daemon=True)
    runner.start()
    try:
        fake.wait_for(lambda: fake.tasks_in(TaskState.TASK_RUNNING) and not fake.offers(), timeout=10,
                      what="the task running and the rest of the agent declined")
        (task,) = fake.tasks_in(TaskState.TASK_RUNNING)
        fake.update(task.info.task_id, TaskState.TASK_FINISHED, exit_code=0)
        runner.join(10)
        assert not runner.is_alive() and not failures, failures or "run() did not return after the task ended"
    finally:
        if runner.is_alive():  # the example did not end its framework: end it for it
            fake.remove_framework(fake.framework().framework_id)
            runner.join(10)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []  # no callback raised
    assert len(fake.calls_of(AcceptCall)) == 1 and len(fake.calls_of(DeclineCall)) == 1
    assert fake.framework().removed == "teardown requested by the framework"


def test_the_readme_examples_end_the_framework_with_teardown() -> None:
    for path in (ROOT / "README.md", ROOT / "sdk" / "README.md"):
        text = path.read_text()
        example = re.search(r"```python\n(.*?SchedulerDriver\(.*?)```", text, re.S)
        assert example is not None, path
        assert "driver.teardown()" in example.group(1) and "driver.stop()" not in example.group(1), path
    assert "driver.teardown()" in (sdk.__doc__ or "") and "driver.stop()" not in (sdk.__doc__ or "")


def test_sdk_testing_names_its_public_api_and_documents_the_fake() -> None:
    assert testing.__all__ == sorted(testing.__all__) and set(testing.__all__) == {
        "AgentView", "Behaviour", "FakeGrpcServer", "FakeMaster", "FakeStream", "FakeTransport",
        "FrameworkView", "StatusStep", "TaskView", "runs_and_finishes"}
    assert all(hasattr(testing, name) for name in testing.__all__)
    doc = FakeMaster.__doc__ or ""
    assert "fail_next" in doc and "transport()" in doc
    assert "What it checks" in doc and "What it does not do" in doc


def test_the_contract_suite_fake_master_names_runs_against_the_fake_and_the_real_master() -> None:
    suites = re.findall(r"`(tests/[\w/]+\.py)`", FakeMaster.__doc__ or "")
    assert "tests/unit/sdk/test_master_contract.py" in suites
    for suite in suites:
        assert (ROOT / suite).is_file(), suite
    text = (ROOT / "tests/unit/sdk/test_master_contract.py").read_text()
    assert 'params=["fake", "master"]' in text and "FakeMaster()" in text and "InProcessMaster()" in text
