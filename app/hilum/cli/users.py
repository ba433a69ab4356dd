"""``hilum users``: the accounts of the node's web services (DICOMweb).

::

    hilum users add NAME --role admin|radiologist|viewer [--password-stdin]
    hilum users list [--json]
    hilum users remove NAME
    hilum users passwd NAME [--password-stdin]
    hilum users role NAME ROLE
    hilum users token NAME [--hours N | --no-expiry] [--label TEXT]
    hilum users revoke NAME
    hilum users link STUDY_UID [--minutes N] [--json]
    hilum users link --revoke-all

Without ``--password-stdin`` the password is asked twice on the terminal.
Passwords are stored as argon2id hashes (:mod:`hilum.archive.users`).
``passwd`` and ``remove`` revoke every bearer token of the user: a token
issued before a password change is refused after it.

``link`` prints a time-limited, read-only link to one study for the web
viewer (``/viewer/link/…``; default lifetime ``[web] link_minutes``): its
holder opens that study in the browser and reads nothing else.  Links are
signed, not stored: ``--revoke-all`` changes the signing key, which revokes
every link issued so far.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import timedelta
from typing import Any

from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "users",
        help="manage the users of the web services (DICOMweb)",
        description="Add, list and remove the users of the DICOMweb server; change passwords and roles; "
        "issue and revoke bearer tokens. Roles: admin (read, write, admin), radiologist (read, write), "
        "viewer (read only).",
    )
    p.add_argument("--data", metavar="DIR", help="data folder (default: HILUM_DATA or the platform's)")
    sub = p.add_subparsers(dest="users_command", metavar="COMMAND", required=True)

    add = sub.add_parser("add", help="add a user")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=("admin", "radiologist", "viewer"))
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    ls = sub.add_parser("list", help="list users")
    ls.add_argument("--json", action="store_true", help="print JSON")

    rm = sub.add_parser("remove", help="remove a user and their tokens")
    rm.add_argument("name", metavar="NAME")

    pw = sub.add_parser("passwd", help="change a user's password (revokes the user's tokens)")
    pw.add_argument("name", metavar="NAME")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    role = sub.add_parser("role", help="change a user's role")
    role.add_argument("name", metavar="NAME")
    role.add_argument("role", choices=("admin", "radiologist", "viewer"))

    tok = sub.add_parser("token", help="issue a bearer token for a user (printed once)")
    tok.add_argument("name", metavar="NAME")
    life = tok.add_mutually_exclusive_group()
    life.add_argument("--hours", type=float, default=24 * 30, help="lifetime in hours (default 720)")
    life.add_argument("--no-expiry", action="store_true", help="a token that does not expire")
    tok.add_argument("--label", default="cli", help="a note stored with the token")

    rv = sub.add_parser("revoke", help="revoke every token of a user")
    rv.add_argument("name", metavar="NAME")

    ln = sub.add_parser("link", help="print a time-limited, read-only link to one study (web viewer)",
                        description="A link that opens one study in the node's web viewer, read only, until it "
                        "expires. The URL uses [web] public_url, else the node's bind address and web port.")
    ln.add_argument("study", metavar="STUDY_UID", nargs="?", help="Study Instance UID")
    ln.add_argument("--minutes", type=float, default=None, help="lifetime in minutes (default [web] link_minutes)")
    ln.add_argument("--issuer", default="cli", help="who the link is from (shown in the node's log)")
    ln.add_argument("--json", action="store_true", help="print JSON: url, token, study, expires")
    ln.add_argument("--revoke-all", action="store_true", help="revoke every link issued so far (new signing key)")

    p.set_defaults(handler=run_users)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        text = sys.stdin.readline()
        if not text:
            raise HilumError("no password on standard input")
        return text.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise HilumError("no terminal to ask the password on: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise HilumError("the passwords differ")
    return first


def run_users(args: argparse.Namespace) -> int:
    from hilum.archive import Archive
    from hilum.archive.users import UserStore
    from hilum.config import load_config

    cfg = load_config(args.data)
    if args.users_command == "link":
        return _run_link(args, cfg)
    archive = Archive.from_config(cfg)
    try:
        store = UserStore.of(archive)
        cmd = args.users_command
        if cmd == "list":
            return _users_command(args, store)
        try:
            code = _users_command(args, store)
        except Exception as exc:
            _audit_user_change(archive, args, 8, str(exc))
            raise
        _audit_user_change(archive, args)
        return code
    finally:
        archive.close()


_CHANGES = {"add": ("C", "User security Attributes Changed", "user {name} added ({role})"),
            "remove": ("D", "User security Attributes Changed", "user {name} removed"),
            "passwd": ("U", "User security Attributes Changed", "password of {name} changed"),
            "role": ("U", "Security Roles Changed", "role of {name} set to {role}"),
            "token": ("C", "User security Attributes Changed", "API token issued to {name}"),
            "revoke": ("U", "User security Attributes Changed", "tokens of {name} revoked")}


def _audit_user_change(archive: object, args: argparse.Namespace, outcome: int = 0, why: str = "") -> None:
    """``hilum users add|remove|passwd|role|token|revoke``: one "Security Alert" event (PS3.15 A.5.3.11)."""
    from hilum.archive.audit import os_user

    action, kind, text = _CHANGES[args.users_command]
    detail = text.format(name=args.name, role=getattr(args, "role", ""))
    archive.audit("Security Alert", action=action, outcome=outcome, event_type=kind,  # type: ignore[attr-defined]
                  user=os_user(), detail=detail + (f": failed ({why})" if why else ""))


def _audit_link(cfg: Any, study: str, detail: str) -> None:
    """``hilum users link``: access to a study granted (or every grant revoked): "Security Alert"."""
    from hilum.archive import Archive
    from hilum.archive.audit import os_user

    with Archive.from_config(cfg) as archive:
        archive.audit("Security Alert", action="C" if study else "D", event_type="User security Attributes Changed",
                      user=os_user(), study_uids=(study,) if study else (), detail=detail)


def _users_command(args: argparse.Namespace, store: Any) -> int:
    cmd = args.users_command
    if cmd == "add":
        password = _read_password(args.password_stdin)
        store.add(args.name, args.role, password)
        print(f"added {args.name} ({args.role})")
    elif cmd == "list":
        found = store.list()
        if args.json:
            print(json.dumps([{"name": u.name, "role": u.role,
                               "created": u.created_at.isoformat() if u.created_at else None} for u in found]))
        elif not found:
            print("no users (see [web] anonymous in hilum.toml for what that allows)")
        else:
            width = max(len(u.name) for u in found)
            for u in found:
                print(f"{u.name:<{width}}  {u.role}")
    elif cmd == "remove":
        store.remove(args.name)
        print(f"removed {args.name}")
    elif cmd == "passwd":
        password = _read_password(args.password_stdin)
        revoked = store.set_password(args.name, password)
        print(f"password of {args.name} changed; {revoked} token(s) revoked")
    elif cmd == "role":
        store.set_role(args.name, args.role)
        print(f"{args.name} is now {args.role}")
    elif cmd == "token":
        if not args.no_expiry and args.hours <= 0:
            raise HilumError("--hours must be positive")
        ttl = None if args.no_expiry else timedelta(hours=args.hours)
        print(store.issue_token(args.name, ttl=ttl, label=args.label))
    elif cmd == "revoke":
        n = store.revoke_tokens(args.name)
        print(f"revoked {n} token(s) of {args.name}")
    return 0


def _run_link(args: argparse.Namespace, cfg: object) -> int:
    from hilum.archive.users import StudyLinks
    from hilum.dicomweb.settings import WebSettings
    from hilum.dicomweb.viewer import link_url, node_base_url

    links = StudyLinks(cfg.data_dir)  # type: ignore[attr-defined]
    if args.revoke_all:
        if args.study:
            raise HilumError("--revoke-all takes no study")
        links.rotate()
        _audit_link(cfg, "", "every web viewer link revoked (key rotated)")
        print("every link issued so far is revoked")
        return 0
    if not args.study:
        raise HilumError("name the study: hilum users link STUDY_UID [--minutes N]")
    settings = WebSettings.from_config(cfg)
    minutes = settings.link_minutes if args.minutes is None else args.minutes
    if not minutes > 0:
        raise HilumError("--minutes must be positive")
    token = links.issue(args.study, minutes=minutes, issuer=args.issuer)
    grant = links.verify(token)
    assert grant is not None
    _audit_link(cfg, args.study, f"read-only web viewer link issued for {minutes:g} min (issuer {args.issuer})")
    url = link_url(node_base_url(cfg.bind, cfg.web_port, settings), token)  # type: ignore[attr-defined]
    if args.json:
        print(json.dumps({"url": url, "token": token, "study": args.study,
                          "expires": grant.expires_at.isoformat()}))
    else:
        print(url)
        print(f"read only, study {args.study}, until {grant.expires_at:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    return 0
