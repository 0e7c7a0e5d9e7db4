"""Authentication and authorization at the API edge: a thin shell around `control_plane.core.acl`.

`Guard` answers "who is calling?" from the verified client certificate (its kind) and the bearer token
(its principal), then applies the pure decisions of `core.acl`. It is used twice:

- as a server interceptor, before any servicer runs: the certificate's kind must be allowed to call the
  method, and a token must name a principal where one is needed (default deny: a servicer that forgot
  to check is still behind this);
- by the servicers, for the checks that need the request or the state (roles, users, which framework a
  call names, which operator action a method is).

Refusals are `Unauthenticated` / `PermissionDenied` from the core's error tree, mapped to status codes in
`api.errors` like every other error. A refused call proposes nothing, so it changes nothing.

Without TLS and without an ACL (`--insecure-dev`), `Guard.open()` allows everything.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from control_plane.api.errors import abort_with
from control_plane.core.acl import ANY, Acl, Caller, authenticate, parse_acl
from control_plane.core.errors import InvalidRequest, TesseraError, Unauthenticated
from control_plane.tls import bearer_token, peer_kind

log = logging.getLogger(__name__)


class AclFileError(Exception):
    """An ACL file that cannot be read or is malformed; the message names the file and the key."""


def load_acl(path: Path | str) -> Acl:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise AclFileError(f"--acl: cannot read {path} ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AclFileError(f"--acl: {path} is not valid TOML ({exc})") from exc
    try:
        acl = parse_acl(doc)
    except InvalidRequest as exc:
        raise AclFileError(f"--acl: {path}: {exc.message}") from exc
    # an explicit opt-in, said out loud at every load and reload: such a principal's tasks may run as root
    for grant in acl.grants:
        if ANY in grant.users:
            log.warning("ACL %s: principal %r may run tasks as any user, root included (users = [\"*\"])",
                        path, grant.principal)
    return acl


class Guard:
    def __init__(self, acl: Acl | None, *, tls: bool) -> None:
        if acl is not None and not tls:
            # the certificate is what tells a master from an agent or a framework
            raise ValueError("an ACL needs TLS")
        self.acl = acl
        self.tls = tls

    @staticmethod
    def open() -> Guard:
        return Guard(None, tls=False)

    def replace_acl(self, acl: Acl) -> None:
        """Swap in a reloaded ACL (one attribute store: every later call sees the new one)."""
        if self.acl is None:
            raise ValueError("this guard runs without an ACL")
        self.acl = acl

    @property
    def enforcing(self) -> bool:
        return self.tls or self.acl is not None

    def caller(self, context: grpc.ServicerContext, method: str) -> Caller:
        """The caller of `method` ("Service/Method" or a full gRPC method name); raises the core's errors."""
        kind = None
        if self.tls:
            kind = peer_kind(context)
            if kind is None:
                raise Unauthenticated("the client certificate names no single tessera kind (urn:tessera:kind:...)")
        return authenticate(self.acl, kind, method, bearer_token(context) if self.acl is not None else None)

    def interceptor(self) -> grpc.ServerInterceptor:
        return _GuardInterceptor(self)


class _GuardInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not self.guard.enforcing:
            return handler
        method = details.method
        guard = self.guard

        def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    guard.caller(context, method)
                except TesseraError as exc:
                    abort_with(context, exc)
                return behavior(request, context)  # a stream's iterator is returned unstarted
            return guarded

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream), handler.request_deserializer, handler.response_serializer)
