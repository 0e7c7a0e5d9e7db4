"""Journal and dump alignment before pysyncobj loads them: the guard against a pysyncobj 0.3.17 data loss
after ``kill -9`` during a dump (see ``align_journal_with_dump`` and docs/reliability.md).

Run by ``RaftReplicator`` and the simulation (``sim.SimRaftNode``) on a node's files before its
``SyncObj`` is built; nothing else touches them then. Reads pysyncobj's dump format and journal through
its private names: ``pysyncobj_release`` pins the release they were written for.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

from pysyncobj.journal import createJournal


def align_journal_with_dump(journal_file: Path, dump_file: Path) -> int:
    """Drop the head of the journal that a dump already covers, so pysyncobj keeps the entries after the
    dump; returns how many entries were dropped. (A pysyncobj 0.3.17 data loss found by
    tests/integration/test_replication_processes.py under load.)

    A dump holds the state after an applied entry D and the entries D-1 and D; once it is written,
    pysyncobj deletes the journal's entries before D-1. The dump is written by a forked child, which a
    ``kill -9`` of the master does not stop: the master dies with its journal still starting before D-1,
    and the child then puts the new dump in place. At the next start pysyncobj finds that the journal
    does not begin with the dump's two entries and *clears* it: every entry after D is gone from this
    node, even those it had acknowledged to the leader. Lose that on a majority (all masters killed
    while writing dumps) and committed, acknowledged writes are lost. Deleting the covered head here
    gives pysyncobj the journal it expects, with the entries after D kept.
    """
    if not journal_file.exists() or not dump_file.exists():
        return 0
    try:
        with gzip.open(dump_file, "rb") as f:
            dump = pickle.load(f)
        last, before_last = dump[1], dump[2]
    except Exception:  # noqa: BLE001 - unreadable or not ours: pysyncobj decides, as before
        return 0
    journal = createJournal(str(journal_file))
    try:
        size = len(journal)
        for k in range(1, size - 1):
            if journal[k] == before_last and journal[k + 1] == last:
                journal.deleteEntriesTo(k)
                journal.flush()
                return k
        return 0
    finally:
        journal._destroy()
