"""netctl's view of etcd: the few operations the fleet needs, on etcd3gw (the v3 API through
etcd's JSON gateway; docs/fleet.md says why this client).

Reads go through transactions with no comparison: one round trip returns the keys and the
store's revision they were read at, which is where a watch then starts.  Every failure of
etcd (unreachable, timed out, refused, unauthenticated) is raised as a FleetError naming the
endpoint: no traceback for what an operator can fix.

Connection settings come from options or from the environment: NETCTL_ETCD (the URL),
NETCTL_ETCD_CA, NETCTL_ETCD_CERT, NETCTL_ETCD_KEY (TLS), NETCTL_ETCD_USER and
NETCTL_ETCD_PASSWORD (etcd authentication; the password only from the environment or a
file, never on a command line where `ps` shows it).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .keys import FleetError, parse_url

ENV = {"url": "NETCTL_ETCD", "ca": "NETCTL_ETCD_CA", "cert": "NETCTL_ETCD_CERT",
       "key": "NETCTL_ETCD_KEY", "user": "NETCTL_ETCD_USER",
       "password": "NETCTL_ETCD_PASSWORD", "password_file": "NETCTL_ETCD_PASSWORD_FILE"}


@dataclass(frozen=True)
class Endpoint:
    """Where etcd is and how to log in.  ``timeout``: seconds for one request."""

    url: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = 5.0

    @classmethod
    def from_options(cls, url: str | None, ca: str | None = None, cert: str | None = None,
                     key: str | None = None, user: str | None = None,
                     password_file: str | None = None, timeout: float = 5.0) -> Endpoint:
        """Options first, then NETCTL_ETCD_* variables."""
        env = os.environ.get
        url = url or env(ENV["url"])
        if not url:
            raise FleetError("no etcd endpoint: give --etcd URL or set NETCTL_ETCD")
        user = user or env(ENV["user"])
        password = env(ENV["password"])
        password_file = password_file or env(ENV["password_file"])
        if password_file:
            try:
                with open(password_file) as f:
                    password = f.read().rstrip("\n")
            except OSError as exc:
                raise FleetError(f"etcd password file {password_file}: {exc.strerror}") \
                    from None
        if user and password is None:
            raise FleetError(f"etcd user {user!r} has no password: set NETCTL_ETCD_PASSWORD "
                             "or give --etcd-password-file")
        cert, key = cert or env(ENV["cert"]), key or env(ENV["key"])
        if bool(cert) != bool(key):
            raise FleetError("a client certificate needs its key (--etcd-cert with "
                             "--etcd-key)")
        endpoint = cls(url, ca or env(ENV["ca"]), cert, key, user, password, timeout)
        for one in endpoint.urls:   # checked now, not at the first request
            parse_url(one)
        return endpoint

    @property
    def urls(self) -> tuple[str, ...]:
        """The cluster's members, in the order they are tried (``url``: comma-separated)."""
        return tuple(u.strip() for u in self.url.split(",") if u.strip()) or (self.url,)


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


class Store:
    """One etcd client, on one member of the cluster at a time: a request the member does
    not answer is tried on the next one (``Endpoint.urls``, in turn), and only when none
    answers is etcd unreachable.  Thread-safe enough for the agent: one thread talks,
    watches call back on the client's own threads."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._auth_lock = threading.Lock()
        self._urls = endpoint.urls
        for url in self._urls:
            protocol, _, _ = parse_url(url)
            if protocol == "http" and (endpoint.ca or endpoint.cert):
                raise FleetError(f"--etcd {url}: TLS options need an https:// URL")
        self._at = 0
        self.client = self._client(self._urls[0])
        if endpoint.user:
            self._call("log in", self._authenticate)   # on the first member that answers

    @property
    def url(self) -> str:
        """The member this client talks to now."""
        return self._urls[self._at]

    def _client(self, url: str) -> Any:
        import etcd3gw

        protocol, host, port = parse_url(url)
        e = self.endpoint
        # api_path: etcd 3.4 serves the gateway at /v3/; naming it saves a /version request
        # per client (etcd3gw would otherwise discover it).
        client = etcd3gw.Etcd3Client(
            host=host, port=port, protocol=protocol, ca_cert=e.ca, cert_cert=e.cert,
            cert_key=e.key, timeout=e.timeout, api_path="/v3/")
        # Nothing from the environment: requests would let REQUESTS_CA_BUNDLE or
        # CURL_CA_BUNDLE override the CA given here, and send etcd's traffic through an
        # HTTP(S)_PROXY meant for the outside world.
        client.session.trust_env = False
        return client

    def _switch(self, at: int) -> None:
        """Talk to member ``at`` from now on (logged in there: tokens are per member)."""
        if at != self._at:
            self.client.session.close()
            self._at = at
            self.client = self._client(self._urls[at])
        if self.endpoint.user:
            self._authenticate()

    # -- errors and authentication ------------------------------------------------------
    def _authenticate(self) -> None:
        with self._auth_lock, self._errors("log in"):
            self.client.session.headers.pop("Authorization", None)
            reply = self.client.post(self.client.get_url("/auth/authenticate"),
                                     json={"name": self.endpoint.user,
                                           "password": self.endpoint.password})
            self.client.session.headers["Authorization"] = reply["token"]

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        import requests
        from etcd3gw import exceptions as ex

        try:
            yield
        except (ex.ConnectionFailedError, ex.ConnectionTimeoutError,
                requests.RequestException) as exc:
            raise Unreachable(f"etcd at {self.url} unreachable ({what}): "
                              f"{_brief(exc)}") from None
        except ex.Etcd3Exception as exc:
            raise FleetError(f"etcd at {self.url} refused to {what}: "
                             f"{_brief(exc)}") from None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` (which reads ``self.client`` when called) on this member, or, when it does
        not answer, on each other member in turn; unreachable when none answers."""
        tried: list[str] = []
        for step in range(len(self._urls)):
            at = (self._at + step) % len(self._urls)
            try:
                if step:
                    self._switch(at)
                return self._call_here(what, fn)
            except Unreachable as exc:
                tried.append(str(exc).removeprefix("etcd at "))
        if len(tried) == 1:
            raise Unreachable(f"etcd at {tried[0]}")
        raise Unreachable("etcd unreachable at every member: " + "; ".join(tried))

    def _call_here(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with etcd's errors as FleetErrors; an expired token is renewed once."""
        from etcd3gw import exceptions as ex

        try:
            with self._errors(what):
                try:
                    return fn()
                except ex.Etcd3Exception as exc:
                    if not (self.endpoint.user and "token" in str(exc).lower()):
                        raise
            # simple tokens expire after a few idle minutes: log in again, once
        except FleetError:
            raise
        self._authenticate()
        with self._errors(what):
            return fn()

    # -- reads ----------------------------------------------------------------------------
    def read(self, keys: tuple[str, ...] = (), prefixes: tuple[str, ...] = ()
             ) -> tuple[int, dict[str, KV]]:
        """(the store's revision, every key found among ``keys`` and under ``prefixes``),
        read in one transaction, so all at the same revision."""
        ranges = [{"request_range": {"key": _b64(k)}} for k in keys]
        ranges += [{"request_range": {"key": _b64(p), "range_end": _range_end(p)}}
                   for p in prefixes]
        reply = self._call("read", lambda: self.client.transaction(
            {"compare": [], "success": ranges, "failure": []}))
        found: dict[str, KV] = {}
        for response in reply.get("responses", []):
            for kv in response.get("response_range", {}).get("kvs", []):
                item = KV(_unb64(kv["key"]).decode(), _unb64(kv.get("value", "")),
                          int(kv.get("mod_revision", 0)), int(kv.get("create_revision", 0)),
                          int(kv.get("lease", 0)))
                found[item.key] = item
        return int(reply["header"]["revision"]), found

    def get(self, key: str) -> KV | None:
        return self.read(keys=(key,))[1].get(key)

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: str, value: str | bytes, lease: int | None = None) -> None:
        self.txn([], [put_op(key, value, lease)])

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> bool:
        """A transaction; True when the comparisons held (``success`` ran)."""
        reply = self._call("write", lambda: self.client.transaction(
            {"compare": compare, "success": success, "failure": failure or []}))
        return bool(reply.get("succeeded"))

    # -- leases ---------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return int(self._call("grant a lease", lambda: self.client.lease(ttl)).id)

    def keepalive(self, lease: int) -> int:
        """The lease's renewed TTL, or -1 when it has expired."""
        from etcd3gw.lease import Lease

        return int(self._call("keep a lease alive", lambda: Lease(lease, self.client).refresh()))

    def revoke(self, lease: int) -> None:
        from etcd3gw.lease import Lease

        self._call("revoke a lease", lambda: Lease(lease, self.client).revoke())

    def lease_age(self, lease: int) -> float | None:
        """Seconds since the lease was last kept alive (granted TTL less the TTL left), or
        None when it has expired."""
        reply = self._call("read a lease", lambda: self.client.post(
            self.client.get_url("/kv/lease/timetolive"), json={"ID": lease}))
        ttl, granted = int(reply.get("TTL", -1)), int(reply.get("grantedTTL", 0))
        return None if ttl < 0 else float(max(0, granted - ttl))

    # -- watches --------------------------------------------------------------------------
    def watch(self, key: str, start_revision: int, callback: Callable[[dict[str, Any]], None]
              ) -> Callable[[], None]:
        """Call ``callback`` for each change of ``key`` from ``start_revision`` on (on the
        client's thread); returns the function that cancels the watch.  A watch that ends
        (etcd gone, or its revision compacted: the gateway cancels it) says nothing: the
        agent's periodic check finds out (netctl/fleet/agent.py)."""
        from etcd3gw.watch import Watcher

        watcher = self._call("watch", lambda: Watcher(self.client, key, callback,  # type: ignore[arg-type]
                                                      start_revision=start_revision))
        return watcher.stop

    def close(self) -> None:
        self.client.session.close()


class Unreachable(FleetError):
    """etcd did not answer (connection refused, reset or timed out)."""


def _brief(exc: BaseException) -> str:
    from etcd3gw import exceptions as ex

    if isinstance(exc, ex.ConnectionTimeoutError):
        return "timed out"
    detail = getattr(exc, "detail_text", None)
    if detail:
        try:
            reply = json.loads(detail)
            detail = reply.get("message") or reply.get("error") or detail
        except (ValueError, AttributeError):
            pass
    text = " ".join(f"{detail or ''} {exc}".split())
    tls = re.search(r"SSLError\(.*?\[SSL[^\]]*\] ([^(']+)", text)
    if tls:
        return f"TLS: {tls.group(1).strip()}"
    if "Max retries exceeded" in text or "Connection refused" in text:
        return "connection refused" if "refused" in text else "no connection"
    if "timed out" in text.lower():
        return "timed out"
    return text[:300] or type(exc).__name__


# -- transaction pieces ---------------------------------------------------------------------

def put_op(key: str, value: str | bytes, lease: int | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def same_mod(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last written at ``revision`` (0: it does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}


def same_create(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was created at ``revision`` (0: it does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": revision}
