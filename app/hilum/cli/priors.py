"""``hilum priors``: the patient's other studies, ranked as the viewer ranks them (issue 15)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hilum.cli._common import open_archive, print_json
from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "priors",
        help="list the priors of a study: the same patient's other studies, most relevant first",
        description="List the other studies of the patient of STUDY_UID (a study in the local archive, or the "
        "Study Instance UID of an order): the same Patient ID and issuer, and every ID HL7 ADT merged with it. "
        "Ranked: same modality and body part first, then same modality, then others; most recent first. "
        "With --remote the peers of hilum.toml ([peers] by C-FIND, [dicomweb_sources] by QIDO-RS) are asked too.",
        epilog="example: hilum priors 1.2.840.113619.2.55.3 --remote --json",
    )
    p.add_argument("study_uid", metavar="STUDY_UID", help="Study Instance UID of the current study (or order)")
    p.add_argument("--remote", action="store_true", help="also ask the configured peers")
    p.add_argument(
        "--peer", action="append", default=[], metavar="NAME", help="ask only this peer (repeatable; implies --remote)"
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds each peer may take (default 10)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=run_priors)


def run_priors(args: argparse.Namespace) -> int:
    from hilum.cli._common import load
    from hilum.priors import describe_study, find_local_priors, rank
    from hilum.priors.finder import find_remote_priors
    from hilum.priors.remote import configured_peers

    if args.timeout <= 0:
        raise HilumError(f"--timeout must be more than 0 seconds, got {args.timeout:g}")
    uid = args.study_uid.strip()
    if not uid:
        raise HilumError("STUDY_UID is empty")
    cfg = load(args)
    remote = args.remote or bool(args.peer)
    peers: dict[str, Any] = {}
    if remote:
        try:
            peers = configured_peers(cfg, args.peer or None)
        except ValueError as exc:
            raise HilumError(str(exc)) from exc
        if not peers:
            raise HilumError("--remote: no peer in hilum.toml may be queried ([peers] or [dicomweb_sources])")
    errors: dict[str, str] = {}
    with open_archive(args, must_exist=True) as archive:
        current = describe_study(archive, uid)
        priors = find_local_priors(archive, uid)
        if remote:
            held = {p.study_uid for p in priors}
            found = find_remote_priors(archive, uid, peers, timeout=args.timeout, errors=errors, config=cfg)
            priors = rank(current, [*priors, *(p for p in found if p.study_uid not in held)])
    failed = remote and len(errors) == len(peers)
    if args.json:
        print_json(
            {
                "study_uid": uid,
                "patient_id": current["patient_id"],
                "issuer": current["issuer"],
                "current": {k: (list(v) if isinstance(v, tuple) else v) for k, v in current.items()},
                "priors": [p.as_dict() for p in priors],
                "errors": errors,
            }
        )
    else:
        for p in priors:
            where = "local" if p.local else f"on {p.source}"
            print(
                f"{p.score:5.2f}  {p.study_date or '--------'}  {'/'.join(p.modalities) or '-':8s}  "
                f"{'/'.join(p.body_parts) or '-':12s}  {p.description or '(no description)'}  [{where}]  "
                f"{p.reason}  {p.study_uid}"
            )
        print(
            f"{len(priors)} prior{'s' if len(priors) != 1 else ''} of patient {current['patient_id']}"
            + (f" (issuer {current['issuer']})" if current["issuer"] else "")
        )
    for name, why in errors.items():
        print(f"hilum: warning: peer {name}: {why}", file=sys.stderr)
    if failed:
        return 1
    return 3 if errors else 0
