"""Image references: the distribution grammar with Docker's normalisation, and the reasons for refusals."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tessera.control_plane.core.images import ImageReference, parse_image_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.35", "docker.io", "library/busybox", "1.35", None),
    ("library/busybox:1.35", "docker.io", "library/busybox", "1.35", None),
    ("tools/busybox", "docker.io", "tools/busybox", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/tools/x:1", "docker.io", "tools/x", "1", None),
    ("127.0.0.1:5000/tools/busybox:1.35", "127.0.0.1:5000", "tools/busybox", "1.35", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app", "localhost:5000", "app", "latest", None),
    ("registry.example.com/a/b/c:v1", "registry.example.com", "a/b/c", "v1", None),
    ("Registry.Example.COM/app", "Registry.Example.COM", "app", "latest", None),
    ("Host/app", "Host", "app", "latest", None),  # an upper-case first component is a host (Docker's rule)
    ("[::1]:5000/app:v", "[::1]:5000", "app", "v", None),
    ("[2001:db8::1]/app", "[2001:db8::1]", "app", "latest", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),  # no '/': a name and a tag
    (f"busybox@{D}", "docker.io", "library/busybox", None, D),
    (f"127.0.0.1:5000/tools/busybox:1.35@{D}", "127.0.0.1:5000", "tools/busybox", "1.35", D),
    ("a.b/x_y/z__w/q-r/s--t/u.v:T_a.g-1", "a.b", "x_y/z__w/q-r/s--t/u.v", "T_a.g-1", None),
    ("my-registry/app", "docker.io", "my-registry/app", "latest", None),  # no '.', ':' : a path, not a host
    ("x1/y:_tag", "docker.io", "x1/y", "_tag", None),
    ("a-b.c-d:65535/x", "a-b.c-d:65535", "x", "latest", None),
])
def test_valid_references_normalise_like_docker(text: str, registry: str, repository: str,
                                                tag: str | None, digest: str | None) -> None:
    ref = parse_image_reference(text)
    assert ref == ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)
    assert parse_image_reference(str(ref)) == ref  # the canonical text round-trips


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    (" busybox", "whitespace"),
    ("busy box", "whitespace"),
    ("busybox\n", "whitespace"),
    ("busybox:\t1", "whitespace"),
    ("bü/x", "non-ASCII"),
    ("Busybox", "must be lower-case"),
    ("tools/BusyBox:1", "must be lower-case"),
    ("127.0.0.1:5000/Tools/busybox", "must be lower-case"),
    ("busybox:", "tag after ':' is empty"),
    ("busybox:1.35!", "tag '1.35!'"),
    ("busybox:.hidden", "starts with '.'"),
    ("busybox:-x", "starts with '.' or '-'"),
    ("busybox:" + "a" * 129, "more than 128"),
    ("busybox@", "digest after '@' is empty"),
    ("busybox@sha256:abc", "64 lower-case hex"),
    ("busybox@sha256:" + "AB" * 32, "64 lower-case hex"),
    ("busybox@sha256:" + "ab" * 33, "64 lower-case hex"),
    ("busybox@sha512:" + "ab" * 64, "only sha256"),
    ("busybox@" + "ab" * 32, "has no algorithm"),
    (f"busybox@{D}@{D}", "more than one '@'"),
    (":1.35", "no repository name"),
    (f"@{D}", "no repository name"),
    ("/busybox", "empty path component"),
    ("tools//busybox", "empty path component"),
    ("tools/busybox/", "empty path component"),
    ("127.0.0.1:5000/", "repository name is empty"),
    ("tools/-busybox", "component '-busybox'"),
    ("tools/busybox_", "component 'busybox_'"),
    ("tools/busy...box", "component 'busy...box'"),
    ("tools/busy___box", "component 'busy___box'"),
    ("tools/busy+box", "component 'busy+box'"),
    ("-bad.host/app", "not a valid host name"),
    ("bad-.host/app", "not a valid host name"),
    ("bad..host/app", "not a valid host name"),
    ("host_name.com/app", "not a valid host name"),
    ("127.0.0.1:port/app", "not a number"),
    ("127.0.0.1:0/app", "outside 1..65535"),
    ("127.0.0.1:65536/app", "outside 1..65535"),
    (":5000/app", "no host name"),
    ("[::1/app", "bracketed IPv6"),
    ("[zz::1]:5000/app", "bracketed IPv6"),
    ("[1:2:3:4:5:6:7:8:9]/app", "bracketed IPv6"),
    ("[::1]x/app", "not a number"),
    ("a" * 64, "64 hex digits"),
    ("0123456789abcdef" * 4 + ":v1", "64 hex digits"),
    ("a" * 250, "docker.io/library/" + "a" * 250 + " is longer than 255"),
    ("a/" * 128 + "a", "more than 255"),
])
def test_invalid_references_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_image_reference(text)
    assert message in str(caught.value), str(caught.value)


def test_a_64_hex_repository_with_a_registry_is_a_name() -> None:
    ref = parse_image_reference("r.io/" + "a" * 64)
    assert ref.repository == "a" * 64


@pytest.mark.parametrize(("text", "transport"), [
    ("busybox", "docker://docker.io/library/busybox:latest"),
    ("127.0.0.1:5000/tools/busybox:1.35", "docker://127.0.0.1:5000/tools/busybox:1.35"),
    (f"127.0.0.1:5000/tools/busybox@{D}", f"docker://127.0.0.1:5000/tools/busybox@{D}"),
    # skopeo takes no tag and digest together; the digest decides, as it does for Docker
    (f"127.0.0.1:5000/tools/busybox:1.35@{D}", f"docker://127.0.0.1:5000/tools/busybox@{D}"),
    ("[::1]:5000/app:v", "docker://[::1]:5000/app:v"),
])
def test_transport_name_is_what_skopeo_takes(text: str, transport: str) -> None:
    assert parse_image_reference(text).transport_name() == transport


@pytest.mark.parametrize(("text", "loopback"), [
    ("127.0.0.1:5000/a", True),
    ("127.1.2.3/a", True),
    ("127.255.255.255:1/a", True),
    ("localhost/a", True),
    ("localhost:5000/a", True),
    ("LOCALHOST:5000/a", True),
    ("[::1]:5000/a", True),
    ("[0:0:0:0:0:0:0:1]/a", True),
    ("[::ffff:127.0.0.1]:5000/a", True),
    ("[::ffff:10.0.0.1]:5000/a", False),
    ("[::2]/a", False),
    ("128.0.0.1/a", False),
    ("10.0.0.1:5000/a", False),
    ("127.0.0.1.nip.io/a", False),
    ("localhost.example.com/a", False),
    ("busybox", False),
    ("127.0.0.256/a", False),  # not an address: a host name, so not loopback
])
def test_loopback_registries_follow_dockers_rule(text: str, loopback: bool) -> None:
    assert parse_image_reference(text).is_loopback_registry is loopback


def test_parts_of_a_reference() -> None:
    ref = parse_image_reference(f"[::1]:5000/tools/busybox:1.35@{D}")
    assert ref.name == "[::1]:5000/tools/busybox"
    assert ref.host == "::1"
    assert str(ref) == f"[::1]:5000/tools/busybox:1.35@{D}"
    assert parse_image_reference("127.0.0.1:5000/x").host == "127.0.0.1"
    assert parse_image_reference("x").host == "docker.io"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        ref = parse_image_reference(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert parse_image_reference(str(ref)) == ref


_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,2}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(host=st.sampled_from(["", "127.0.0.1:5000/", "r.example.com/", "localhost/", "[::1]:1/"]),
       path=st.lists(_component, min_size=1, max_size=3),
       tag=st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
       digest=st.none() | st.from_regex(r"[a-f0-9]{64}", fullmatch=True).map(lambda h: "sha256:" + h))
def test_grammar_conforming_references_parse(host: str, path: list[str], tag: str | None,
                                             digest: str | None) -> None:
    assume(host or "." not in path[0])  # a first component with a '.' names a registry (Docker's rule)
    text = host + "/".join(path) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_image_reference(text)
    assert ref.repository.endswith("/".join(path))
    assert ref.digest == digest
    assert ref.tag == (tag or (None if digest else "latest"))
