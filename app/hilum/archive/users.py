"""Users, roles and API tokens of the node's web services (DICOMweb).

The DICOMweb server (PS3.18) authenticates with HTTP Basic (RFC 7617) or a
bearer token (RFC 6750) and authorises by role:

* ``admin`` — read, write (STOW-RS) and administration;
* ``radiologist`` — read and write;
* ``viewer`` — read only (QIDO-RS, WADO-RS, WADO-URI).

Passwords are stored as argon2id hashes (argon2-cffi's defaults, RFC 9106);
tokens are random 256-bit strings of which only the SHA-256 is stored, so a
copy of the index leaks neither.  Changing a password or removing a user
revokes every token of that user (a leaked token must not outlive the
password change that follows the leak).

An argon2id check costs ~64 MiB and tens of milliseconds (argon2-cffi's
defaults): at most ``max_concurrent_hashes`` run at once in one store (a
semaphore; a caller waits at most ``hash_wait`` seconds for a slot, then
gets :class:`LoginBusy`), so forty parallel guesses cannot make the process
allocate forty times 64 MiB.  Throttling repeated failures is the web
layer's job (:mod:`hilum.dicomweb.throttle`).  The tables live in the index database next
to the archive's (migration ``0003_users``), reached through the archive's
SQLAlchemy engine: the archive stays the only layer with SQL.

Links to one study (:class:`StudyLinks`): a time-limited, read-only grant to
one study, carried in a URL (``hilum users link``, the workstation's "Copy
link").  The link is a token signed with HMAC-SHA256 (RFC 2104) under a key
kept in the data folder (``web-link.key``, mode 0600): nothing is stored per
link, the expiry is inside the signed part, and rotating the key
(``hilum users link --revoke-all``) revokes every link at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import (
    Engine,
    delete,
    func,
    insert,
    select,
    update,
)

from hilum.archive.db import write_begin
from hilum.archive.schema import api_tokens, users
from hilum.errors import HilumError

log = logging.getLogger(__name__)

ROLES = ("admin", "radiologist", "viewer")
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "write", "admin"}),
    "radiologist": frozenset({"read", "write"}),
    "viewer": frozenset({"read"}),
}
MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "hlm_"
_NAME_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")

# The tables live in the one schema module (hilum.archive.schema), with every other table.


class UserError(HilumError):
    """A user operation that cannot be done (unknown user, duplicate name, bad role or password)."""


class LoginBusy(HilumError):
    """Every password-hashing slot stayed busy for ``hash_wait`` seconds: try again shortly."""


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated principal: name and role (see :data:`PERMISSIONS`)."""

    name: str
    role: str
    created_at: datetime | None = None

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


ANONYMOUS_READER = User(name="anonymous", role="viewer")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written in UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """Validate a user name: 1-64 of ``A-Z a-z 0-9 . _ @ + -`` (no ``:``, which Basic auth splits on)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"invalid user name {name!r}: use 1-64 letters, digits or . _ @ + -")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if "\n" in password or "\r" in password or "\x00" in password:
        raise UserError("password must not contain line breaks or NUL")
    return password


class UserStore:
    """Users and tokens in the index database (thread-safe).

    Successful argon2 verifications are remembered for a short while, keyed
    by the stored hash and a SHA-256 of the password, so that HTTP Basic on
    every request does not pay ~50 ms of argon2 each time; a password change
    or a removal changes/removes the stored hash and so takes effect at once.
    """

    VERIFY_CACHE_SIZE = 256
    VERIFY_CACHE_SECONDS = 300.0
    MAX_CONCURRENT_HASHES = 2
    HASH_WAIT_SECONDS = 5.0

    def __init__(self, engine: Engine, *, hasher: PasswordHasher | None = None,
                 max_concurrent_hashes: int = MAX_CONCURRENT_HASHES, hash_wait: float = HASH_WAIT_SECONDS):
        if max_concurrent_hashes < 1:
            raise ValueError(f"max_concurrent_hashes must be at least 1, got {max_concurrent_hashes}")
        self.engine = engine
        self.hasher = hasher or PasswordHasher()
        self.max_concurrent_hashes = max_concurrent_hashes
        self.hash_wait = hash_wait
        self._hash_slots = threading.BoundedSemaphore(max_concurrent_hashes)
        self._dummy: str | None = None
        self._verified: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, archive: Any, **kwargs: Any) -> UserStore:
        """The user store of an :class:`hilum.archive.Archive` (same database); ``kwargs`` as for the constructor."""
        return cls(archive.engine, **kwargs)

    @contextmanager
    def _hashing(self) -> Iterator[None]:
        """One of the ``max_concurrent_hashes`` slots for an argon2 computation (:class:`LoginBusy` after waiting)."""
        if not self._hash_slots.acquire(timeout=self.hash_wait):
            raise LoginBusy(f"all {self.max_concurrent_hashes} password-hashing slots busy for {self.hash_wait:g} s")
        try:
            yield
        finally:
            self._hash_slots.release()

    def _hash(self, password: str) -> str:
        with self._hashing():
            return self.hasher.hash(password)

    # ----------------------------------------------------------------- users

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    def list(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users.c.name, users.c.role, users.c.created_at).order_by(users.c.name)).all()
        return [User(r.name, r.role, _aware(r.created_at)) for r in rows]

    def get(self, name: str) -> User | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(users.c.name, users.c.role, users.c.created_at).where(users.c.name == name)).first()
        return None if r is None else User(r.name, r.role, _aware(r.created_at))

    def add(self, name: str, role: str, password: str) -> User:
        check_name(name)
        check_role(role)
        check_password(password)
        digest = self._hash(password)
        now = _now()
        with write_begin(self.engine) as conn:
            if conn.execute(select(users.c.pk).where(users.c.name == name)).first() is not None:
                raise UserError(f"user {name!r} already exists")
            conn.execute(insert(users).values(name=name, role=role, password_hash=digest, created_at=now,
                                              updated_at=now))
        log.info("user %s added with role %s", name, role)
        return User(name, role, now)

    def remove(self, name: str) -> None:
        with write_begin(self.engine) as conn:
            pk = conn.execute(select(users.c.pk).where(users.c.name == name)).scalar()
            if pk is None:
                raise UserError(f"no user {name!r}")
            conn.execute(delete(api_tokens).where(api_tokens.c.user_fk == pk))
            conn.execute(delete(users).where(users.c.pk == pk))
        log.info("user %s removed", name)

    def set_password(self, name: str, password: str) -> int:
        """Set a new password and revoke every token of the user (in one transaction); returns how many."""
        check_password(password)
        digest = self._hash(password)
        revoked = self._store_hash(name, digest, revoke_tokens=True)
        log.info("password of user %s changed; %d token(s) revoked", name, revoked)
        return revoked

    def _store_hash(self, name: str, digest: str, *, revoke_tokens: bool) -> int:
        with write_begin(self.engine) as conn:
            pk = conn.execute(select(users.c.pk).where(users.c.name == name)).scalar()
            if pk is None:
                raise UserError(f"no user {name!r}")
            conn.execute(update(users).where(users.c.pk == pk).values(password_hash=digest, updated_at=_now()))
            if not revoke_tokens:
                return 0
            return int(conn.execute(delete(api_tokens).where(api_tokens.c.user_fk == pk)).rowcount or 0)

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        with write_begin(self.engine) as conn:
            res = conn.execute(update(users).where(users.c.name == name).values(role=role, updated_at=_now()))
            if not res.rowcount:
                raise UserError(f"no user {name!r}")
        log.info("role of user %s set to %s", name, role)

    def _login_row(self, name: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(users.c.name, users.c.role, users.c.password_hash, users.c.created_at)
                                .where(users.c.name == name)).first()

    def _cached(self, row: Any, password: str) -> tuple[tuple[str, str, str], User | None]:
        key = (row.name, row.password_hash, hashlib.sha256(password.encode("utf-8")).hexdigest())
        now = time.monotonic()
        with self._lock:
            seen = self._verified.get(key)
            if seen is not None and now - seen < self.VERIFY_CACHE_SECONDS:
                self._verified.move_to_end(key)
                return key, User(row.name, row.role, _aware(row.created_at))
        return key, None

    def cached_login(self, name: str, password: str) -> User | None:
        """The user when this password was verified recently (no argon2 computed), else None.

        None does not mean the password is wrong: call :meth:`authenticate`.
        """
        row = self._login_row(name)
        return None if row is None else self._cached(row, password)[1]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is right, else None (same work for unknown names).

        Raises :class:`LoginBusy` when no hashing slot frees up in time.
        """
        row = self._login_row(name)
        if row is None:
            with self._hashing():
                if self._dummy is None:
                    self._dummy = self.hasher.hash(secrets.token_hex(16))
                try:  # spend the same time as for a real user: no user enumeration by timing
                    self.hasher.verify(self._dummy, password)
                except (VerificationError, InvalidHashError):
                    pass
            return None
        key, user = self._cached(row, password)
        if user is not None:
            return user
        try:
            with self._hashing():
                self.hasher.verify(row.password_hash, password)
        except VerifyMismatchError:
            return None
        except (VerificationError, InvalidHashError):
            log.warning("stored password hash of user %s is unusable", name)
            return None
        now = time.monotonic()
        if self.hasher.check_needs_rehash(row.password_hash):
            try:  # same password, stronger parameters: the user's tokens stay valid
                self._store_hash(name, self._hash(password), revoke_tokens=False)
            except (UserError, LoginBusy):
                pass
        else:
            with self._lock:
                self._verified[key] = now
                while len(self._verified) > self.VERIFY_CACHE_SIZE:
                    self._verified.popitem(last=False)
        return User(row.name, row.role, _aware(row.created_at))

    # ---------------------------------------------------------------- tokens

    def issue_token(self, name: str, *, ttl: timedelta | None = timedelta(hours=12), label: str = "") -> str:
        """A new bearer token for ``name`` (shown once; only its SHA-256 is stored).

        ``ttl=None`` makes a token that does not expire (for scripts); revoke
        it with :meth:`revoke_tokens`.
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        with write_begin(self.engine) as conn:
            pk = conn.execute(select(users.c.pk).where(users.c.name == name)).scalar()
            if pk is None:
                raise UserError(f"no user {name!r}")
            conn.execute(insert(api_tokens).values(
                user_fk=pk, token_hash=_token_digest(token), label=label[:64], created_at=now,
                expires_at=None if ttl is None else now + ttl))
            # Expired tokens are of no use to anyone: drop them while here.
            conn.execute(delete(api_tokens).where(api_tokens.c.expires_at.is_not(None),
                                                  api_tokens.c.expires_at < now))
        return token

    def verify_token(self, token: str) -> User | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = _token_digest(token)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users.c.name, users.c.role, users.c.created_at, api_tokens.c.token_hash,
                       api_tokens.c.expires_at)
                .select_from(api_tokens.join(users, api_tokens.c.user_fk == users.c.pk))
                .where(api_tokens.c.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        expires = _aware(row.expires_at)
        if expires is not None and expires < _now():
            return None
        return User(row.name, row.role, _aware(row.created_at))

    def revoke_token(self, token: str) -> bool:
        """Revoke one token (a signed-out web session); True when it existed."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return False
        with write_begin(self.engine) as conn:
            return bool(conn.execute(delete(api_tokens).where(api_tokens.c.token_hash == _token_digest(token)))
                        .rowcount)

    def revoke_tokens(self, name: str) -> int:
        """Revoke every token of ``name``; returns how many there were."""
        with write_begin(self.engine) as conn:
            pk = conn.execute(select(users.c.pk).where(users.c.name == name)).scalar()
            if pk is None:
                raise UserError(f"no user {name!r}")
            return int(conn.execute(delete(api_tokens).where(api_tokens.c.user_fk == pk)).rowcount or 0)


# --------------------------------------------------------------------- links to one study

LINK_PREFIX = "hlk_"
LINK_KEY_FILE = "web-link.key"
MAX_LINK_LENGTH = 600
_LINK_CONTEXT = b"hilum-study-link-v1."
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True, slots=True)
class StudyLink:
    """What a valid link grants: reading ``study_uid`` until ``expires_at``; ``issuer`` is informative."""

    study_uid: str
    expires_at: datetime
    issuer: str = ""

    @property
    def user(self) -> User:
        """The read-only principal the web services see for the holder of this link."""
        return User(name=f"link:{self.issuer or '?'}", role="viewer")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StudyLinks:
    """Signed, time-limited, read-only links to one study (see the module's docstring).

    ``data_dir`` holds the signing key (created with mode 0600 on first use).
    Nodes that share one index (PostgreSQL) and should accept each other's
    links share this key file too.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, clock: Any = None):
        self.key_path = Path(data_dir) / LINK_KEY_FILE
        self._clock = clock or _now
        self._key: bytes | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _load_key(self) -> bytes:
        # Read again when the file changed: ``hilum users link --revoke-all`` in another process revokes at once.
        try:
            st = self.key_path.stat()
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if self._key is None or stamp is None or stamp != self._stamp:
                self._key = self._read_or_create()
                st = self.key_path.stat()
                self._stamp = (st.st_ino, st.st_mtime_ns)
            return self._key

    def _read_or_create(self) -> bytes:
        try:
            key = self.key_path.read_bytes()
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile
            return self.key_path.read_bytes()
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key

    def rotate(self) -> None:
        """A new signing key: every link issued so far stops working."""
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_path.with_name(self.key_path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.key_path)
        with self._lock:
            self._key = None
        log.info("study link key rotated: every earlier link is revoked")

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._load_key(), _LINK_CONTEXT + payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, study_uid: str, *, minutes: float = 24 * 60, issuer: str = "") -> str:
        """A link token for ``study_uid`` valid ``minutes`` from now (read only, that study only)."""
        if not isinstance(study_uid, str) or len(study_uid) > 64 or not _UID_RE.match(study_uid):
            raise UserError(f"invalid Study Instance UID {study_uid!r}")
        if not minutes > 0 or minutes == float("inf"):
            raise UserError("a link's lifetime must be a positive number of minutes")
        expires = int((self._clock() + timedelta(minutes=minutes)).timestamp())
        body = {"s": study_uid, "e": expires, "i": issuer[:64], "n": secrets.token_urlsafe(6)}  # n: each link new
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{LINK_PREFIX}{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> StudyLink | None:
        """The grant of a valid, unexpired link; None for anything else (never raises)."""
        if not isinstance(token, str) or not token.startswith(LINK_PREFIX) or len(token) > MAX_LINK_LENGTH:
            return None
        payload, sep, sig = token[len(LINK_PREFIX):].partition(".")
        if not sep or not payload or not sig:
            return None
        try:
            if not hmac.compare_digest(self._sign(payload), sig):
                return None
            body = json.loads(_unb64(payload))
            study, expires, issuer = body["s"], body["e"], body.get("i", "")
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
            return None
        if not isinstance(study, str) or not isinstance(expires, int) or not isinstance(issuer, str):
            return None
        when = datetime.fromtimestamp(expires, UTC)
        if when <= self._clock():
            return None
        return StudyLink(study, when, issuer)
