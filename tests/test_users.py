"""Users, roles and tokens of the web services (``hilum.archive.users``) and ``hilum users``."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from hilum.archive import Archive
from hilum.archive.users import ROLES, LoginBusy, UserError, UserStore, api_tokens, users
from hilum.cli import main

# argon2id with small costs keeps these tests fast; the defaults are covered by the CLI test.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def store(archive: Archive) -> UserStore:
    return UserStore(archive.engine, hasher=FAST)


def test_add_authenticate_and_roles(store: UserStore, archive: Archive) -> None:
    store.add("ada", "admin", "long enough 1")
    store.add("rita", "radiologist", "long enough 2")
    store.add("vic", "viewer", "long enough 3")
    assert [(u.name, u.role) for u in store.list()] == [("ada", "admin"), ("rita", "radiologist"), ("vic", "viewer")]
    assert store.count() == 3
    ada = store.authenticate("ada", "long enough 1")
    assert ada is not None and ada.can("admin") and ada.can("write") and ada.can("read")
    rita = store.authenticate("rita", "long enough 2")
    assert rita is not None and rita.can("write") and not rita.can("admin")
    vic = store.authenticate("vic", "long enough 3")
    assert vic is not None and vic.can("read") and not vic.can("write")
    assert store.authenticate("vic", "long enough 1") is None
    assert store.authenticate("nobody", "long enough 1") is None
    # only an argon2id hash is stored, never the password
    with archive.engine.connect() as conn:
        hashes = conn.execute(select(users.c.password_hash)).scalars().all()
    assert all(h.startswith("$argon2id$") for h in hashes)
    assert not any("long enough" in h for h in hashes)


def test_bad_input_is_refused(store: UserStore) -> None:
    with pytest.raises(UserError):
        store.add("with:colon", "viewer", "long enough")
    with pytest.raises(UserError):
        store.add("", "viewer", "long enough")
    with pytest.raises(UserError):
        store.add("bob", "superuser", "long enough")
    with pytest.raises(UserError):
        store.add("bob", "viewer", "short")
    store.add("bob", "viewer", "long enough")
    with pytest.raises(UserError):
        store.add("bob", "admin", "long enough")
    with pytest.raises(UserError):
        store.remove("alice")
    with pytest.raises(UserError):
        store.set_password("alice", "long enough")
    assert store.list()[0].role == "viewer"


def test_password_change_and_removal_take_effect_at_once(store: UserStore) -> None:
    store.add("bob", "viewer", "first password")
    assert store.authenticate("bob", "first password") is not None  # now cached
    store.set_password("bob", "second password")
    assert store.authenticate("bob", "first password") is None
    assert store.authenticate("bob", "second password") is not None
    store.set_role("bob", "radiologist")
    assert store.authenticate("bob", "second password").role == "radiologist"  # type: ignore[union-attr]
    store.remove("bob")
    assert store.authenticate("bob", "second password") is None
    assert store.get("bob") is None


def test_tokens(store: UserStore, archive: Archive) -> None:
    store.add("rita", "radiologist", "long enough")
    token = store.issue_token("rita", ttl=timedelta(hours=1), label="test")
    assert token.startswith("hlm_") and len(token) > 40
    user = store.verify_token(token)
    assert user is not None and user.name == "rita" and user.role == "radiologist"
    with archive.engine.connect() as conn:
        stored = conn.execute(select(api_tokens.c.token_hash)).scalars().all()
    assert token not in stored and len(stored[0]) == 64  # only the SHA-256
    assert store.verify_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify_token("not a token") is None
    expired = store.issue_token("rita", ttl=timedelta(seconds=-1))
    assert store.verify_token(expired) is None
    forever = store.issue_token("rita", ttl=None)
    assert store.verify_token(forever) is not None
    assert store.revoke_tokens("rita") >= 2
    assert store.verify_token(token) is None and store.verify_token(forever) is None
    with pytest.raises(UserError):
        store.issue_token("nobody")
    t2 = store.issue_token("rita")
    store.remove("rita")
    assert store.verify_token(t2) is None


def test_roles_constant() -> None:
    assert ROLES == ("admin", "radiologist", "viewer")


def test_cli(data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return main(["users", "--data", str(data_dir), *args])

    assert run("add", "alice", "--role", "radiologist", "--password-stdin", stdin="s3cret-pass\n") == 0
    assert run("add", "alice", "--role", "viewer", "--password-stdin", stdin="s3cret-pass\n") == 1
    assert "already exists" in capsys.readouterr().err
    assert run("add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n") == 1
    assert run("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["name"], u["role"]) for u in listed] == [("alice", "radiologist")]
    assert run("token", "alice", "--hours", "2") == 0
    token = capsys.readouterr().out.strip()
    with Archive(data_dir) as archive:
        assert UserStore.of(archive).verify_token(token).name == "alice"  # type: ignore[union-attr]
    assert run("passwd", "alice", "--password-stdin", stdin="an0ther-pass\n") == 0
    with Archive(data_dir) as archive:
        assert UserStore.of(archive).authenticate("alice", "an0ther-pass") is not None
    assert run("revoke", "alice") == 0
    assert run("remove", "alice") == 0
    assert run("remove", "alice") == 1
    assert run("list") == 0
    assert "no users" in capsys.readouterr().out


def test_password_change_revokes_tokens_but_a_rehash_does_not(archive: Archive) -> None:
    store = UserStore(archive.engine, hasher=FAST)
    store.add("rita", "radiologist", "first password")
    tokens = [store.issue_token("rita"), store.issue_token("rita", ttl=None)]
    # A login that upgrades the stored hash to stronger parameters keeps the tokens.
    stronger = UserStore(archive.engine, hasher=PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert stronger.authenticate("rita", "first password") is not None
    with archive.engine.connect() as conn:
        assert "m=2048" in conn.execute(select(users.c.password_hash)).scalar_one()
    assert all(store.verify_token(t) is not None for t in tokens)
    # A password change revokes every token, in the same transaction.
    assert store.set_password("rita", "second password") == 2
    assert all(store.verify_token(t) is None for t in tokens)
    assert store.set_password("rita", "third password") == 0


def test_concurrent_password_hashes_are_bounded(archive: Archive) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    class SlowHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - argon2's name
            entered.release()
            release.wait(30)
            return super().verify(hash, password)

    store = UserStore(archive.engine, hasher=SlowHasher(time_cost=1, memory_cost=1024, parallelism=1),
                      max_concurrent_hashes=2, hash_wait=0.2)
    store.add("ann", "viewer", "long enough")
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(store.authenticate, "ann", "long enough") for _ in range(2)]
        assert entered.acquire(timeout=30) and entered.acquire(timeout=30)  # both slots taken
        with pytest.raises(LoginBusy):
            store.authenticate("ann", "wrong password")  # a third waits hash_wait, then gives up
        with pytest.raises(LoginBusy):
            store.authenticate("nobody", "wrong password")  # unknown names hash too (timing), same bound
        release.set()
        assert all(f.result(timeout=30) is not None for f in busy)
    assert store.cached_login("ann", "long enough") is not None  # verified: cached, no hash needed
    assert store.cached_login("ann", "wrong password") is None
    with pytest.raises(ValueError):
        UserStore(archive.engine, max_concurrent_hashes=0)


def test_cli_passwd_revokes_tokens(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
    assert main(["users", "--data", str(data_dir), "add", "alice", "--role", "viewer", "--password-stdin"]) == 0
    with Archive(data_dir) as archive:
        token = UserStore.of(archive).issue_token("alice")
    monkeypatch.setattr("sys.stdin", io.StringIO("an0ther-pass\n"))
    assert main(["users", "--data", str(data_dir), "passwd", "alice", "--password-stdin"]) == 0
    assert "1 token(s) revoked" in capsys.readouterr().out
    with Archive(data_dir) as archive:
        assert UserStore.of(archive).verify_token(token) is None
