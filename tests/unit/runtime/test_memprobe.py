"""The opt-in memory probe (`runtime/memprobe.py`, TESSERA_TRACEMALLOC): nothing at all when unset;
snapshots and collector lines when set; the growth between two snapshots named by traceback."""

from __future__ import annotations

import json
import sqlite3
import threading
import tracemalloc
from pathlib import Path

import pytest

from tessera.control_plane.runtime import memprobe
from tessera.control_plane.runtime.memprobe import MemProbe, proc_status_kib, start_from_env, top_growth

STATUS = """Name:\tpython
VmPeak:\t  500000 kB
VmRSS:\t  131360 kB
RssAnon:\t   90848 kB
RssFile:\t   40512 kB
RssShmem:\t       0 kB
Threads:\t33
"""


def test_proc_status_is_read_in_kib() -> None:
    assert proc_status_kib(STATUS) == {"VmRSS": 131360, "RssAnon": 90848, "RssFile": 40512, "RssShmem": 0}
    assert proc_status_kib(STATUS, ("Threads", "VmSwap")) == {"Threads": 33}  # only the keys asked, if present
    assert proc_status_kib("") == {}


def test_unset_it_starts_nothing() -> None:
    threads = threading.active_count()
    assert start_from_env("m1", env={}) is None
    assert start_from_env("m1", env={memprobe.ENV_DIR: ""}) is None
    assert threading.active_count() == threads and not tracemalloc.is_tracing()


@pytest.fixture
def probe(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = start_from_env("m1", env={memprobe.ENV_DIR: str(tmp_path / "probe"), memprobe.ENV_EVERY: "3600",
                                  memprobe.ENV_FRAMES: "4"})
    assert p is not None
    yield p
    p.stop()
    tracemalloc.stop()


def test_set_it_traces_and_writes_snapshots_and_collector_lines(probe: MemProbe, tmp_path: Path) -> None:
    assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 4 and probe.every == 3600
    first = probe.take()
    held = [bytearray(1024) for _ in range(2048)]  # 2 MiB allocated between the snapshots, still alive
    second = probe.take()
    assert first.name.startswith("m1-") and first.name.endswith("-0001.tracemalloc") and second.exists()
    lines = [json.loads(line) for line in (tmp_path / "probe" / f"{probe.prefix}.gc").read_text().splitlines()]
    assert [line["snapshot"] for line in lines] == [first.name, second.name]
    assert lines[1]["status_kib"]["RssAnon"] > 0 and len(lines[1]["gc_stats"]) == 3
    assert lines[1]["c_heap_kib"]["malloc_in_use"] > 0
    growth = top_growth(tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(second)), limit=1)
    assert "test_memprobe.py" in "\n".join(growth), growth  # the largest growth is the list above
    assert float(growth[0].split()[0]) >= 2.0 * 0.9
    del held


def test_c_heap_counts_what_glibc_and_sqlite_hold_outside_the_traces(tmp_path: Path) -> None:
    before = memprobe.c_heap()
    assert {"malloc_heap", "malloc_in_use", "malloc_free", "malloc_mmap", "sqlite"} <= set(before)
    conn = sqlite3.connect(str(tmp_path / "db"))
    conn.execute("PRAGMA cache_size = -4096")  # 4 MiB of page cache, filled by the rows below
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", ((bytes(1000),) for _ in range(3000)))
    conn.commit()
    during = memprobe.c_heap()
    assert during["sqlite"] - before["sqlite"] >= 2048, (before, during)  # ~3 MB of pages cached
    assert during["malloc_in_use"] - before["malloc_in_use"] >= 2048  # SQLite allocates through malloc
    conn.close()
    assert memprobe.c_heap()["sqlite"] < during["sqlite"] - 2048  # closing the connection frees its cache


def test_the_diff_command_needs_two_snapshots(capsys: pytest.CaptureFixture[str]) -> None:
    assert memprobe.main([]) == 2
    assert "usage" in capsys.readouterr().err
