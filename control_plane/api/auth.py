"""Authentication and authorization at the API edge: a thin shell around `tessera.control_plane.core.acl`.

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

The interceptor also applies the per-peer and per-principal limits of `core.limits` (only when the
guard enforces: an insecure development master has no certificates or principals to count by):

- calls per second per principal (`RateLimiter`), refused with RESOURCE_EXHAUSTED;
- concurrent streams per client certificate and per principal, and of everyone together, below the
  server's thread pool (`StreamSlots`): a stream holds a pool thread for its whole life, so streams
  opened without any token (an agent certificate's `Health.Watch`es) cannot take the threads an
  operator's unary call needs. A slot is released when the call terminates (`context.add_callback`).

A handler is re-wrapped keeping what gRPC reads from its behaviour: `experimental_non_blocking` (a
behaviour that answers through `send_response_callback` and returns at once, as `Health.Watch` does) and
`experimental_thread_pool`. Dropping them made every `Health.Watch` hold a pool thread until the client
went away.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from tessera.control_plane.api.errors import abort_with
from tessera.control_plane.core.acl import ANY, Acl, Caller, authenticate, parse_acl
from tessera.control_plane.core.errors import InvalidRequest, TesseraError, Unauthenticated
from tessera.control_plane.core.limits import MasterLimits, RateLimiter, StreamSlots, stream_caps
from tessera.control_plane.tls import bearer_token, peer_kind

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


def reload_acl(guard: Guard, path: Path | str) -> None:
    """SIGHUP on a master or an agent: `path` loaded again into `guard`; a file that does not load leaves the
    previous ACL in force (both said in the log)."""
    try:
        acl = load_acl(path)
    except AclFileError as exc:
        log.error("ACL not reloaded, the previous one stays in force: %s", exc)
        return
    guard.replace_acl(acl)
    log.info("ACL reloaded from %s: %d principal(s)", path, len(acl.grants))


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

    def interceptor(self, *, pool_threads: int = 256, limits: MasterLimits | None = None,
                    count_streams: bool = False) -> grpc.ServerInterceptor:
        """The server interceptor; `pool_threads` is the gRPC pool size the stream caps are derived from.
        `count_streams`: cap streams even when the guard does not enforce (an agent's file service, whose
        follows must never take every thread, secured or not)."""
        return _GuardInterceptor(self, pool_threads, limits or MasterLimits(), count_streams)


def peer_key(context: grpc.ServicerContext) -> str:
    """Who the peer is, for counting its streams: its verified client certificate (a digest of it), else
    its address without the port."""
    certs = context.auth_context().get("x509_pem_cert", ())
    if certs:
        return "cert:" + hashlib.sha256(certs[0]).hexdigest()[:32]
    peer = context.peer() or ""
    return "addr:" + peer.rsplit(":", 1)[0]


def _keeping_flags(original: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    for flag in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(original, flag):
            setattr(wrapper, flag, getattr(original, flag))
    return wrapper


class _GuardInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, guard: Guard, pool_threads: int, limits: MasterLimits, count_streams: bool = False) -> None:
        self.guard = guard
        self.count_streams = count_streams
        self.slots = StreamSlots(stream_caps(pool_threads, limits))
        self.rates = RateLimiter(limits.requests_per_second, limits.request_burst)
        self.lock = threading.Lock()

    def _admit(self, context: grpc.ServicerContext, method: str, stream: bool) -> None:
        """Authenticate, then count the call against the caller's limits; raises the core's errors."""
        caller = self.guard.caller(context, method)
        principal = caller.principal
        with self.lock:
            if principal is not None:
                self.rates.take(principal, time.monotonic())
            if not stream:
                return
            peer = peer_key(context)
            self.slots.acquire(peer, principal)

        def release() -> None:
            with self.lock:
                self.slots.release(peer, principal)

        if not context.add_callback(release):  # already terminated: nothing will call it
            release()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not (self.guard.enforcing or self.count_streams):
            return handler
        method = details.method
        stream = bool(handler.request_streaming or handler.response_streaming)

        def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> Any:
                try:
                    self._admit(context, method, stream)
                except TesseraError as exc:
                    abort_with(context, exc)
                # a stream's iterator is returned unstarted; a non-blocking one gets its callback
                return behavior(request, context, *args, **kwargs)
            return _keeping_flags(behavior, guarded)

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
