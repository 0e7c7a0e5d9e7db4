"""What a framework author reads first: `help(sdk)`, the README examples, `tessera.sdk.testing`'s public names."""

from __future__ import annotations

import pydoc
import re
from pathlib import Path

import tessera.sdk as sdk

ROOT = Path(__file__).resolve().parents[3]


def test_help_sdk_opens_with_a_guide_and_the_namespace_holds_only_the_api_and_submodules() -> None:
    text = pydoc.render_doc(sdk, renderer=pydoc.plaintext)
    guide = text[: text.index("PACKAGE CONTENTS")]
    for must in ("teardown()", "stop()", "failover_timeout", "REFUSED", "reconcile", "TASK_RUNNING",
                 "FakeMaster"):
        assert must in guide, must
    public = {name for name in dir(sdk) if not name.startswith("_")}
    submodules = {name for name in public if type(getattr(sdk, name)).__name__ == "module"}
    assert public - submodules == set(sdk.__all__)  # no `annotations`, typing or protobuf names


def test_the_readme_examples_end_the_framework_with_teardown() -> None:
    for path in (ROOT / "README.md", ROOT / "sdk" / "README.md"):
        text = path.read_text()
        example = re.search(r"```python\n(.*?SchedulerDriver\(.*?)```", text, re.S)
        assert example is not None, path
        assert "driver.teardown()" in example.group(1) and "driver.stop()" not in example.group(1), path
    assert "driver.teardown()" in (sdk.__doc__ or "") and "driver.stop()" not in (sdk.__doc__ or "")


def test_sdk_testing_names_its_public_api_and_documents_the_fake() -> None:
    assert all(hasattr(sdk.testing, name) for name in sdk.testing.__all__)
    assert "FakeMaster" in sdk.testing.__all__ and "runs_and_finishes" in sdk.testing.__all__
    doc = sdk.testing.FakeMaster.__doc__ or ""
    assert "fail_next" in doc and "transport()" in doc
