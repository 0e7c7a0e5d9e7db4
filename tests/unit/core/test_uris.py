"""The master's checks of a task's URIs and the facts master and agent share about them
(control_plane/core/uris.py): every refusal is an InvalidRequest naming the field."""

from __future__ import annotations

import pytest

from tessera.control_plane.core.errors import InvalidRequest
from tessera.control_plane.core.limits import MAX_URI_LENGTH, MAX_URIS, check_task_size
from tessera.control_plane.core.resources import Resources
from tessera.control_plane.core.state import check_task_info
from tessera.control_plane.core.uris import ParsedURL, archive_kind, file_name_of, is_output_name, parse_url
from tessera.control_plane.core.values import CommandInfo, CommandURI, TaskInfo


def task(*uris: CommandURI) -> TaskInfo:
    return TaskInfo("t1", resources=Resources.of(cpus=0.1), command=CommandInfo(value="true"), uris=uris)


def refused(*uris: CommandURI) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_task_info(task(*uris), "task")
    return caught.value.message


def test_the_three_schemes_pass_in_their_usual_forms() -> None:
    check_task_info(task(
        CommandURI("http://127.0.0.1:8080/tools/tool"),
        CommandURI("HTTPS://Example.org/a/data.tar.gz?version=3&from=a@b#top", extract=True),
        CommandURI("file:///srv/artifacts/run.sh", executable=True),
        CommandURI("file://localhost/srv/artifacts/other.zip", extract=True),
        CommandURI("file:/srv/x", output_file="renamed"),
        CommandURI("http://[::1]:9000/v6.tgz", extract=True),
    ), "task")


def test_parse_url_splits_scheme_host_and_the_decoded_path() -> None:
    assert parse_url("HTTP://Host.Example:81/a%20b/c.tgz?q=1#f", "u") == ParsedURL(
        "http", "host.example", "/a b/c.tgz", "c.tgz")
    assert parse_url("file:///srv/a%2Fb", "u") == ParsedURL("file", "", "/srv/a/b", "a/b")
    assert parse_url("https://h", "u").path == "/" and parse_url("https://h/d/", "u").name == ""


@pytest.mark.parametrize(("value", "says"), [
    ("ftp://127.0.0.1/tool", "scheme 'ftp' is not supported"),
    ("s3://bucket/key", "scheme 's3' is not supported"),
    ("/srv/tool", "absolute URL"),
    ("tool", "absolute URL"),
    ("", "must be a URL"),
    ("http:/tool", "starts with http://HOST"),
    ("http:///tool", "names no host"),
    ("http://h:0/tool", "port '0'"),
    ("http://h:65536/tool", "port '65536'"),
    ("http://h:x/tool", "port 'x'"),
    ("http://h/a b", "printable ASCII"),
    ("http://user:secret@h/tool", "credentials in a URL are not supported"),
    ("http://h/\u00e9t\u00e9", "printable ASCII"),
    ("http://h/tool\n", "printable ASCII"),
    ("file://otherhost/srv/tool", "not host 'otherhost'"),
    ("file:tool", "absolute path"),
    ("file:///srv/tool?x=1", "no query"),
    ("file:///srv/to%00ol", "NUL"),
    ("http://h/%ff%fe", "not UTF-8"),
])
def test_a_url_the_fetcher_would_not_fetch_is_refused_naming_the_field(value: str, says: str) -> None:
    message = refused(CommandURI(value, output_file="x"))
    assert message.startswith("task.uris[0].value:") and says in message, message


def test_an_overlong_url_and_too_many_uris_are_refused() -> None:
    long = "http://h/" + "a" * MAX_URI_LENGTH
    assert "at most 4096" in refused(CommandURI(long))
    many = tuple(CommandURI(f"http://h/f{i}") for i in range(MAX_URIS + 1))
    assert refused(*many).startswith("task.uris: 65 URIs, at most 64")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/etc/passwd", "x\0y", "n" * 256, "stdout", "stderr",
                                  "stdout.3", "stderr.12"])
def test_output_file_is_a_plain_name_and_never_the_tasks_output(name: str) -> None:
    assert refused(CommandURI("http://h/tool", output_file=name)).startswith("task.uris[0].output_file:")


def test_the_file_name_comes_from_the_url_unless_output_file_gives_one() -> None:
    assert file_name_of(CommandURI("http://h/dir/tool.sh?x=1")) == "tool.sh"
    assert file_name_of(CommandURI("http://h/dir/my%20tool")) == "my tool"
    assert file_name_of(CommandURI("http://h/dir/tool", output_file="t")) == "t"
    assert "give output_file" in refused(CommandURI("http://h/"))
    assert "give output_file" in refused(CommandURI("http://h/dir/.."))
    assert "give output_file" in refused(CommandURI("http://h/logs/stdout"))
    assert "give output_file" in refused(CommandURI("http://h/a%2Fb"))  # an encoded '/' is no plain name
    assert "give output_file" in refused(CommandURI("http://h/dir/"))


def test_extract_needs_an_archive_name_and_excludes_executable() -> None:
    for name in ("a.tar", "a.TAR.GZ", "a.tgz", "a.tar.bz2", "a.tbz2", "a.tar.xz", "a.txz"):
        assert archive_kind(name) == "tar", name
    assert archive_kind("a.zip") == "zip" and archive_kind(".zip") == "" and archive_kind("a.gz") == ""
    assert "cannot tell the archive type of 'data.bin'" in refused(CommandURI("http://h/data.bin", extract=True))
    check_task_info(task(CommandURI("http://h/download?id=3", extract=True, output_file="d.zip")), "task")
    assert refused(CommandURI("http://h/a.tgz", extract=True, executable=True)).startswith(
        "task.uris[0].executable:")


def test_two_kept_uris_may_not_land_on_one_name_but_archives_may_share_the_sandbox() -> None:
    message = refused(CommandURI("http://a/tool"), CommandURI("file:///srv/tool"))
    assert message == "task.uris[1]: its file 'tool' is also where uris[0] goes"
    check_task_info(task(CommandURI("http://a/x.tgz", extract=True), CommandURI("http://b/x.tgz", extract=True)),
                    "task")


def test_values_of_the_wrong_type_are_refused() -> None:
    assert "must be a CommandURI" in refused("http://h/x")  # type: ignore[arg-type]
    assert "extract: must be a bool" in refused(CommandURI("http://h/x.tgz", extract=1))  # type: ignore[arg-type]


def test_uris_count_toward_the_tasks_size() -> None:
    small = check_task_size(task(), "task")
    assert check_task_size(task(CommandURI("http://h/" + "a" * 1000)), "task") > small + 1000


def test_output_names_are_stdout_stderr_and_their_rotations() -> None:
    assert is_output_name("stdout") and is_output_name("stderr.1") and is_output_name("stdout.10")
    assert not is_output_name("stdout.txt") and not is_output_name("stdout.") and not is_output_name("my-stdout")
