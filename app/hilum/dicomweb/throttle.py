"""Slowing down password guessing on the DICOMweb server: per-address and per-user lockout.

Every password check costs an argon2id hash (~64 MiB, tens of milliseconds),
and before this module 200 wrong passwords in a row all got a quick 401.
:class:`LoginThrottle` keeps, in memory, three failure counters —
per client address, per user name, per (user name, address) pair — and
refuses password attempts (HTTP 429 with ``Retry-After``, no hash computed)
while a counter is locked.

Policy (the settings are ``[web] login_*``, see :mod:`.settings`):

* **Address.**  After ``login_address_failures`` (20) wrong passwords from
  one address — for any user names, existing or not — that address is
  locked for ``login_lockout_seconds`` (10 s); each further failure after the
  lock ends doubles the lock, up to ``login_lockout_max_seconds`` (15 min).
  IPv6 addresses count per /64 network, since one host usually owns a whole
  /64.  This limit is what stops one machine from spraying guesses over
  many accounts — and from locking many accounts: at most
  ``address_failures / user_failures`` (4) users can be locked from one
  address before the address itself is locked, and from then on it gets
  one attempt per lock period (at most one per 15 minutes in the end).
* **User.**  After ``login_user_failures`` (5) wrong passwords for one user
  name, from anywhere, the name is locked with the same doubling schedule.
  This stops guessing against one account from many addresses.
* **Trusted addresses.**  An address from which the user logged in
  successfully within ``login_trust_days`` (30 days) is not subject to the
  user's global lock; there only the failures from that address count
  (the (user, address) counter, same threshold).  So an attacker elsewhere
  who locks an account does not lock out its owner at their usual
  workstation — the denial of service that plain per-account lockout
  invites (OWASP Authentication Cheat Sheet, "Account Lockout") — while
  guessing from that address is still throttled.
* **Success** clears the (user, address) counter and marks the address
  trusted for the user.  It does not clear the address counter or the
  global user counter: with HTTP Basic every request of a working client is
  a successful login, and letting those reset the counters would hand an
  attacker at another address (or one holding a valid low-privilege
  account) a fresh batch of guesses each time.  Counters are forgotten
  after ``login_reset_seconds`` (15 min) without a failure, as Keycloak's
  "Failure Reset Time" does.
* Attempts refused while locked do not count (no password was checked) and
  do not extend the lock.  Locks are temporary; there is no permanent
  lockout, so nobody is locked out forever by someone else.
* Bearer tokens are not throttled: they are 256-bit random strings checked
  with one SHA-256 (no argon2), not guessable.

Comparable designs: Keycloak's brute force detection (temporary lockout,
"Wait Increment" doubling to "Max Wait", "Failure Reset Time"); OWASP's
advice to combine per-account and per-source limits and to let known
devices through.  State is in memory (a restart forgets it; several nodes
behind one database keep separate counters) and bounded: each table holds
at most ``max_entries`` keys, the least recently failed dropped first.

The clock is injectable (``clock``, seconds, monotonic) so tests advance
time instead of sleeping.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]
#: User names are at most 64 characters (hilum.archive.users); longer ones count under their first 64,
#: so that the tables' memory does not grow with the size of what a client sends.
MAX_NAME = 64


@dataclass(frozen=True)
class ThrottlePolicy:
    """The thresholds and periods of :class:`LoginThrottle` (see the module's docstring)."""

    user_failures: int = 5
    address_failures: int = 20
    lockout_seconds: float = 10.0
    lockout_max_seconds: float = 900.0
    reset_seconds: float = 900.0
    trust_seconds: float = 30 * 86400.0
    max_entries: int = 10000

    @classmethod
    def from_settings(cls, settings: Any) -> ThrottlePolicy:
        """From ``[web]`` settings (:class:`hilum.dicomweb.settings.WebSettings`)."""
        return cls(user_failures=settings.login_user_failures, address_failures=settings.login_address_failures,
                   lockout_seconds=settings.login_lockout_seconds,
                   lockout_max_seconds=settings.login_lockout_max_seconds,
                   reset_seconds=settings.login_reset_seconds, trust_seconds=settings.login_trust_days * 86400.0)


@dataclass
class Refusal:
    """A locked attempt: seconds until it may be tried again, and what is locked (``address`` or ``user``)."""

    retry_after: float
    scope: str

    @property
    def retry_after_header(self) -> str:
        """The ``Retry-After`` value (RFC 9110 10.2.3): whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0
    until: float = 0.0


class _Table:
    """Failure counters by key, at most ``size`` of them (least recently failed dropped first)."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[Hashable, _Count] = OrderedDict()

    def get(self, key: Hashable, now: float, reset: float) -> _Count | None:
        c = self.items.get(key)
        if c is not None and now >= c.until and now - c.last >= reset:
            del self.items[key]  # quiet long enough: forgotten
            return None
        return c

    def fail(self, key: Hashable, now: float, policy: ThrottlePolicy, limit: int) -> _Count:
        c = self.get(key, now, policy.reset_seconds) or _Count()
        c.failures += 1
        c.last = now
        if c.failures >= limit:
            doublings = min(c.failures - limit, 40)
            c.until = now + min(policy.lockout_seconds * (2.0 ** doublings), policy.lockout_max_seconds)
        self.items[key] = c
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return c


def address_key(host: str) -> str:
    """The key an address counts under: IPv4 as is, IPv6 by its /64 network (IPv4-mapped as IPv4)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """Per-address and per-user lockout of password attempts (thread-safe; see the module's docstring)."""

    def __init__(self, policy: ThrottlePolicy | None = None, *, clock: Clock = time.monotonic):
        self.policy = policy or ThrottlePolicy()
        self.clock = clock
        size = self.policy.max_entries
        self._addresses = _Table(size)
        self._users = _Table(size)
        self._pairs = _Table(size)
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def _is_trusted(self, name: str, addr: str, now: float) -> bool:
        at = self._trusted.get((name, addr))
        return at is not None and now - at < self.policy.trust_seconds

    def check(self, name: str, host: str) -> Refusal | None:
        """None when a password for ``name`` from ``host`` may be checked now, else the :class:`Refusal`."""
        name = name[:MAX_NAME]
        addr = address_key(host)
        p = self.policy
        with self._lock:
            now = self.clock()
            a = self._addresses.get(addr, now, p.reset_seconds)
            if a is not None and a.until > now:
                return Refusal(a.until - now, "address")
            if self._is_trusted(name, addr, now):
                u = self._pairs.get((name, addr), now, p.reset_seconds)
            else:
                u = self._users.get(name, now, p.reset_seconds)
            if u is not None and u.until > now:
                return Refusal(u.until - now, "user")
        return None

    def failure(self, name: str, host: str) -> Refusal | None:
        """Count a wrong password; returns the lock this failure started, if any (for logging)."""
        name = name[:MAX_NAME]
        addr = address_key(host)
        p = self.policy
        with self._lock:
            now = self.clock()
            a = self._addresses.fail(addr, now, p, p.address_failures)
            u = self._users.fail(name, now, p, p.user_failures)
            pair = self._pairs.fail((name, addr), now, p, p.user_failures)
            if a.until > now:
                return Refusal(a.until - now, "address")
            governing = pair if self._is_trusted(name, addr, now) else u
            if governing.until > now:
                return Refusal(governing.until - now, "user")
        return None

    def success(self, name: str, host: str) -> None:
        """A right password: clear the (user, address) counter and trust the address for this user."""
        name = name[:MAX_NAME]
        addr = address_key(host)
        with self._lock:
            now = self.clock()
            self._pairs.items.pop((name, addr), None)
            self._trusted[(name, addr)] = now
            self._trusted.move_to_end((name, addr))
            while len(self._trusted) > self.policy.max_entries:
                self._trusted.popitem(last=False)
