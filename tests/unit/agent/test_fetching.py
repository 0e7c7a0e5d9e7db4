"""The fetcher's pure decisions (agent/core/fetching.py): which archive members are refused, why a
chain of symlinks cannot leave the sandbox, the cache's keys and eviction."""

from __future__ import annotations

import pytest

from tessera.agent.core.fetching import (
    ArchiveRefused,
    CacheEntry,
    Member,
    MemberKind,
    cache_key,
    check_archive,
    check_symlink,
    member_path,
    plan_eviction,
)

F, D, S, H, SPECIAL = MemberKind.FILE, MemberKind.DIRECTORY, MemberKind.SYMLINK, MemberKind.HARDLINK, MemberKind.OTHER


def check(*members: Member, max_members: int = 100, max_bytes: int = 1 << 20) -> None:
    check_archive(members, max_members, max_bytes)


def refused(*members: Member, **kw: int) -> str:
    with pytest.raises(ArchiveRefused) as caught:
        check(*members, **kw)
    return str(caught.value)


def test_member_names_are_kept_below_the_root() -> None:
    assert member_path("./a//b/./c") == ("a", "b", "c")
    assert member_path("./") == () and member_path(".") == ()
    for name, says in (("/etc/passwd", "absolute"), ("a/../../x", "'..'"), ("..", "'..'"), ("a\0b", "NUL"),
                       ("/".join(["d"] * 65), "deep"), ("x" * 256, "longer than 255")):
        with pytest.raises(ArchiveRefused, match=says):
            member_path(name)


@pytest.mark.parametrize(("where", "target"), [
    (("L",), "x"), (("L",), "dir/x"), (("a", "L"), "../x"), (("a", "b", "L"), "../../x/y"), (("L",), "."[:0] + "y/"),
])
def test_symlinks_that_stay_inside_pass(where: tuple[str, ...], target: str) -> None:
    check_symlink(where, target, "/".join(where))


@pytest.mark.parametrize(("where", "target", "says"), [
    (("L",), "/etc/shadow", "absolute path"),
    (("L",), "..", "points out"),
    (("a", "L"), "../..", "points out"),
    (("a", "b", "L"), "../../../etc", "points out"),
    (("x", "L"), "../a/s/..", "normal form"),  # lexically inside, but `s` may itself be a link: refused
    (("L",), "a/./b", "normal form"),
    (("L",), "a//b", "normal form"),
    (("L",), "", "empty"),
])
def test_symlinks_that_could_leave_are_refused(where: tuple[str, ...], target: str, says: str) -> None:
    with pytest.raises(ArchiveRefused, match=says):
        check_symlink(where, target, "/".join(where))


def test_the_link_chain_that_escapes_a_lexical_check_is_refused() -> None:
    # a/s -> .. lands on the root; x/L -> ../a/s/.. reads as "a" lexically but resolves to the root's parent
    message = refused(Member("a/", D), Member("a/s", S, link=".."), Member("x/", D), Member("x/L", S, link="../a/s/.."))
    assert "x/L" in message and "normal form" in message


def test_nothing_is_written_below_a_symlink_of_the_archive() -> None:
    assert "below the archive's symlink 'd'" in refused(Member("d", S, link="real"), Member("d/evil", F, size=1))
    assert "below the archive's symlink" in refused(Member("d", S, link="real"), Member("d/sub/evil", F))


def test_a_name_may_not_be_a_directory_and_a_file_or_link() -> None:
    assert "gives this name as a directory" in refused(Member("d/x", F), Member("d", S, link="real"))
    assert "is a file in this archive" in refused(Member("f", F), Member("f/x", F))
    check(Member("f", F), Member("f", F), Member("l", S, link="f"), Member("l", F))  # later wins, same kind


def test_an_archive_may_not_give_the_tasks_output_files() -> None:
    assert "output files" in refused(Member("stdout", F))
    assert "output files" in refused(Member("./stderr.2/", D))
    check(Member("logs/stdout", F), Member("stdout.txt", F))  # deeper down, or another name: fine


def test_special_files_are_refused_by_what_they_are() -> None:
    assert "character device" in refused(Member("null", SPECIAL, what="character device"))
    assert "FIFO" in refused(Member("ok", F), Member("pipe", SPECIAL, what="FIFO"))


def test_hard_links_only_to_earlier_regular_files() -> None:
    check(Member("a", F, size=3), Member("b", H, link="a"))
    assert "not a regular file earlier" in refused(Member("b", H, link="a"), Member("a", F))
    assert "not a regular file earlier" in refused(Member("l", S, link="x"), Member("b", H, link="l"))
    assert "'..'" in refused(Member("b", H, link="../../etc/passwd"))
    assert "absolute" in refused(Member("b", H, link="/etc/passwd"))


def test_counts_and_sizes_are_capped() -> None:
    assert "more than 3 members" in refused(*(Member(f"f{i}", F) for i in range(4)), max_members=3)
    assert "more than 10 bytes" in refused(Member("a", F, size=6), Member("b", F, size=6), max_bytes=10)
    summary = check_archive([Member("./", D), Member("a", F, size=6), Member("d/", D)], 10, 10)
    assert (summary.members, summary.files, summary.bytes) == (3, 1, 6)


def test_cache_keys_name_one_url_each() -> None:
    a = cache_key("http://127.0.0.1:8000/tool")
    assert a == cache_key("http://127.0.0.1:8000/tool") and len(a) == 64
    assert a != cache_key("http://127.0.0.1:8000/tool?v=2") != cache_key("http://u:p@127.0.0.1:8000/tool")


def test_eviction_removes_the_least_recently_used_until_the_rest_fits() -> None:
    entries = [CacheEntry("old", 40, 1.0), CacheEntry("mid", 40, 2.0), CacheEntry("new", 40, 3.0)]
    assert plan_eviction(entries, 100) == ["old"]
    assert plan_eviction(entries, 40) == ["old", "mid"]
    assert plan_eviction(entries, 40, frozenset({"old"})) == ["mid", "new"]
    assert plan_eviction(entries, 120) == []
