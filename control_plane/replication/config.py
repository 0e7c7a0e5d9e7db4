"""Configuration of the replication layer: Raft timing, files, group commit, log compaction.

Owns ``ReplicationConfig`` (one Raft node) and ``GroupCommitConfig`` (shared by the Raft and the
local implementation). The defaults are the values measured on pysyncobj 0.3.17 in
``/work/shared/notes/pysyncobj-measured.md`` (§6.1, §6.2, §8); the comments say why each one is what
it is. Rules kept here:

* the journal (``raft.journal``) and the dump (``raft.dump``) always live together in ``data_dir``:
  one without the other loses acknowledged data or wedges the node after a restart (§4, §6.3);
* the constraints pysyncobj checks with ``assert`` (which vanish under ``python -O``) are checked
  here with real exceptions, at construction time;
* one replicated call stays well under 64 KiB (the chunking bug just below multiples of 64 KiB, §6.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RAFT_JOURNAL_FILE = "raft.journal"
RAFT_DUMP_FILE = "raft.dump"

# pysyncobj splits AppendEntries payloads at 64 KiB and mis-handles commands just under 2 x 64 KiB;
# staying below 60 KiB per batch keeps every group-commit call in one AppendEntries frame.
_MAX_SAFE_BATCH_BYTES = 60 * 1024


def parse_address(address: str) -> tuple[str, int]:
    """Split a Raft address 'host:port' and validate it. Raises ValueError."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"raft address must be 'host:port', got {address!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"raft address must be 'host:port', got {address!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"raft address port out of range: {address!r}")
    return host, port


@dataclass(frozen=True)
class GroupCommitConfig:
    """How concurrent submissions are gathered into one replicated call."""

    # Wait at most this long after the first pending entry before proposing a batch: the cost of
    # one Raft round trip is paid once per batch instead of once per entry.
    linger_s: float = 0.002
    # Accounted as sum(len(entry) + 8); keeps the pickled call well under 64 KiB (see module doc).
    max_batch_bytes: int = 48 * 1024
    max_batch_entries: int = 1024
    # Batches proposed but not yet committed. While all slots are busy, new entries accumulate into
    # bigger batches, so throughput adapts to load without more Raft calls.
    max_batches_in_flight: int = 4
    # Entries waiting for a batch; beyond this, submit() fails fast (UnknownOutcomeError QUEUE_FULL)
    # instead of letting memory and latency grow without bound.
    max_pending_entries: int = 200_000
    # A single entry above this is refused (EntryTooLargeError). Bigger than max_batch_bytes is
    # allowed (it travels alone, chunked by pysyncobj), but megabytes per entry stall the tick thread.
    max_entry_bytes: int = 1024 * 1024
    # Every proposed batch resolves within this time: if no commit/failure arrived, its futures fail
    # with UnknownOutcomeError('TIMEOUT'). Must exceed a failover (~0.5 s measured) with margin.
    commit_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        if not 0 < self.max_batch_bytes <= _MAX_SAFE_BATCH_BYTES:
            raise ValueError(f"max_batch_bytes must be in (0, {_MAX_SAFE_BATCH_BYTES}]")
        if self.max_batch_entries < 1:
            raise ValueError("max_batch_entries must be >= 1")
        if self.max_batches_in_flight < 1:
            raise ValueError("max_batches_in_flight must be >= 1")
        if self.max_pending_entries < 1:
            raise ValueError("max_pending_entries must be >= 1")
        if self.max_entry_bytes < 1:
            raise ValueError("max_entry_bytes must be >= 1")
        if self.commit_timeout_s <= 0:
            raise ValueError("commit_timeout_s must be > 0")


@dataclass(frozen=True)
class ReplicationConfig:
    """One Raft node (one master). Addresses are Raft addresses 'host:port', not gRPC addresses."""

    self_address: str
    peers: tuple[str, ...]
    data_dir: Path
    # Fernet encryption + authentication of the Raft port, which otherwise speaks unauthenticated
    # pickle (remote code execution for anyone who can reach it). None only for throwaway dev runs.
    password: str | None = None
    # Where to listen. None: the host of self_address (pysyncobj alone would bind 0.0.0.0).
    bind_address: str | None = None

    # Election timeout is uniform in [min, max]; pysyncobj requires min > 3 * append_entries_period.
    raft_min_timeout_s: float = 0.3
    raft_max_timeout_s: float = 0.6
    append_entries_period_s: float = 0.05
    # Large: with the default 3.5 s the first RequestVote on an idle follower<->follower socket is
    # dropped and failover takes twice as long (§6.2). TCP keepalive still detects dead peers.
    connection_timeout_s: float = 3600.0
    # A connection accepted on the Raft port that has not identified itself as a master (key exchange,
    # then its address, encrypted with the password) within this time is closed, and at most
    # max_pending_connections such connections are kept (the oldest go first). A master completes the
    # handshake within a round trip; pysyncobj alone keeps any connection for connection_timeout_s.
    handshake_timeout_s: float = 3.0
    max_pending_connections: int = 16
    # A leader cut off from its quorum steps down after this long (pysyncobj default: 30 s).
    leader_fallback_timeout_s: float = 1.5
    # How often a node retries connecting to a missing peer (pysyncobj default 5 s); a restarted
    # master rejoins faster, and an attempt against a dead peer costs one refused connect.
    connection_retry_time_s: float = 1.0
    # Poll timeout of pysyncobj's tick loop; bounds the latency of an idle single-node cluster.
    tick_period_s: float = 0.05
    # Bind attempts (bind_retry_time_s apart) before start() gives up.
    max_bind_retries: int = 10
    bind_retry_time_s: float = 0.5

    # We batch ourselves (group commit); True would pace every commit by the heartbeat (~10/s).
    append_entries_use_batch: bool = False
    # False: fail fast (MISSING_LEADER -> NotLeaderError) instead of queueing with no expiry.
    commands_wait_leader: bool = False
    # Lets an operator grow the quorum 3 -> 5 (single-server changes, one at a time).
    dynamic_membership_change: bool = True
    # Pre-vote and check-quorum (replication/prevote.py, Raft thesis §9.6): a node that cannot win an
    # election does not raise the term, a leader without a majority steps down. False only to measure.
    pre_vote: bool = True

    # Log compaction: snapshot when the log holds more than this many Raft entries (one entry per
    # group-commit batch) or when this much time has passed. The dump is written by a forked child.
    log_compaction_min_entries: int = 5000
    log_compaction_min_time_s: float = 300.0
    log_compaction_split: bool = False
    # True: a forked child pickles and writes the dump (copy-on-write; the Raft thread only forks).
    # False: the dump is pickled and written on the Raft thread, a stall that grows with the state
    # and can cause elections (§6.5). fork() from a threaded process is safe here because the child
    # only pickles, writes and _exit()s.
    use_fork_for_dump: bool = True

    group_commit: GroupCommitConfig = field(default_factory=GroupCommitConfig)

    # True: apply committed batches on the replicator's own apply thread (``_applier``) rather than on
    # pysyncobj's tick thread, so that receiving, syncing, acknowledging and sending the next batch do not
    # wait for the state machine. Measured (docs/benchmarks.md, issue 22): +19 to +75 % write throughput on
    # a quiet machine, nothing measurable on a loaded one. Off by default until the pysyncobj compaction race
    # the simulation found with the apply step (``tests.sim.run --apply-step``, docs/reliability.md) is guarded.
    apply_thread: bool = False
    # Entries queued for the apply thread before the tick thread waits for it (backpressure).
    apply_queue_entries: int = 8192

    # Sync the journal before acknowledging (``durability``): an acknowledged write then survives the
    # power loss of every master. False (``tessera master --unsafe-no-fsync``) is pysyncobj's own
    # behaviour: it survives the crash of processes, not of machines.
    fsync: bool = True

    # Bound on each wait inside stop() and start() (thread joins, bind).
    stop_timeout_s: float = 10.0
    # A leadership transfer that is not observed (another node leading) within this time fails.
    transfer_timeout_s: float = 5.0
    # A membership change that is not committed within this time fails with UnknownOutcomeError.
    membership_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        parse_address(self.self_address)
        peers = tuple(self.peers)
        object.__setattr__(self, "peers", peers)
        for peer in peers:
            parse_address(peer)
        if self.self_address in peers:
            raise ValueError("peers must not contain self_address")
        if len(set(peers)) != len(peers):
            raise ValueError("peers contains duplicates")
        if self.bind_address is not None:
            parse_address(self.bind_address)
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.append_entries_period_s <= 0:
            raise ValueError("append_entries_period_s must be > 0")
        if not self.raft_min_timeout_s > 3 * self.append_entries_period_s:
            raise ValueError("raft_min_timeout_s must exceed 3 * append_entries_period_s")
        if not self.raft_max_timeout_s > self.raft_min_timeout_s:
            raise ValueError("raft_max_timeout_s must exceed raft_min_timeout_s")
        if not self.connection_timeout_s >= self.raft_max_timeout_s:
            raise ValueError("connection_timeout_s must be >= raft_max_timeout_s")
        if self.handshake_timeout_s <= 0:
            raise ValueError("handshake_timeout_s must be > 0")
        if self.max_pending_connections < 1:
            raise ValueError("max_pending_connections must be >= 1")
        if not self.leader_fallback_timeout_s > self.append_entries_period_s:
            raise ValueError("leader_fallback_timeout_s must exceed append_entries_period_s")
        if self.connection_retry_time_s < 0:
            raise ValueError("connection_retry_time_s must be >= 0")
        if self.tick_period_s <= 0:
            raise ValueError("tick_period_s must be > 0")
        if self.max_bind_retries < 1 or self.bind_retry_time_s <= 0:
            raise ValueError("max_bind_retries must be >= 1 and bind_retry_time_s > 0")
        if self.apply_queue_entries < 1:
            raise ValueError("apply_queue_entries must be >= 1")
        if self.log_compaction_min_entries < 2 or self.log_compaction_min_time_s <= 0:
            raise ValueError("log_compaction_min_entries must be >= 2 and log_compaction_min_time_s > 0")
        for name in ("stop_timeout_s", "transfer_timeout_s", "membership_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def journal_file(self) -> Path:
        return self.data_dir / RAFT_JOURNAL_FILE

    @property
    def dump_file(self) -> Path:
        return self.data_dir / RAFT_DUMP_FILE
