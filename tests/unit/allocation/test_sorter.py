"""The DRF sorter: (share, name) order, lazy re-keying, pop/push_back walks, and dominant shares."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tessera.control_plane.allocation import DRFSorter, dominant_share


def drain(sorter: DRFSorter) -> list[str]:
    out = []
    while (name := sorter.pop()) is not None:
        out.append(name)
    return out


def test_clients_pop_in_share_order_and_ties_break_by_name() -> None:
    sorter = DRFSorter([("b", 0.5), ("c", 0.1), ("a", 0.5), ("d", 0.0)])
    assert drain(sorter) == ["d", "c", "a", "b"]
    assert sorter.pop() is None


def test_update_moves_a_queued_client_and_leaves_a_popped_one_out_until_push_back() -> None:
    sorter = DRFSorter([("a", 0.1), ("b", 0.2)])
    assert sorter.pop() == "a"
    sorter.update("a", 0.9)
    sorter.update("b", 0.95)
    assert len(sorter) == 1
    assert sorter.pop() == "b"
    assert sorter.pop() is None
    sorter.push_back("a")
    sorter.push_back("b")
    assert drain(sorter) == ["a", "b"]


def test_removed_clients_never_come_back() -> None:
    sorter = DRFSorter([("a", 0.1), ("b", 0.2)])
    sorter.remove("a")
    sorter.push_back("a")
    assert "a" not in sorter
    assert drain(sorter) == ["b"]


def test_sorted_lists_every_client_popped_or_not() -> None:
    sorter = DRFSorter([("a", 0.3), ("b", 0.2)])
    sorter.pop()
    assert sorter.sorted() == ["b", "a"]
    assert sorter.shares() == {"a": 0.3, "b": 0.2}


def test_dominant_share_is_the_largest_fraction_over_kinds_the_cluster_has() -> None:
    inverse = {"cpus": 1 / 100, "mem": 1 / 1000}
    assert dominant_share({"cpus": 10, "mem": 500}, inverse) == 0.5
    assert dominant_share({"gpus": 3}, inverse) == 0.0
    assert dominant_share({}, inverse) == 0.0


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 10)), max_size=60))
def test_heap_order_matches_a_full_sort_after_any_updates(updates: list[tuple[str, float]]) -> None:
    sorter = DRFSorter([(n, 1.0) for n in "abcdefgh"])
    for name, share in updates:
        sorter.update(name, share)
    assert drain(sorter) == sorter.sorted()
