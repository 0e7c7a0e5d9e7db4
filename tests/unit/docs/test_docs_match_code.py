"""Docs drawn from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from tessera.control_plane.core.lifecycle import transition_table_markdown

ROOT = Path(__file__).resolve().parents[3]


def test_task_lifecycle_doc_shows_the_transition_table_in_use() -> None:
    text = (ROOT / "docs" / "task-lifecycle.md").read_text()
    table = text.split("<!-- table:begin -->\n", 1)[1].split("\n<!-- table:end -->", 1)[0].strip()
    assert table == transition_table_markdown().strip()
