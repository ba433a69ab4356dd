"""``hilum prefetch``: what prefetch of priors does — its rules, its cache, its jobs; or one run by hand."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from hilum.cli._common import open_archive, print_json
from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "prefetch",
        help="prefetch of priors: status, or fetch a patient's priors now",
        description="Prefetch brings a patient's relevant priors from the peers before the radiologist opens the "
        "case (rules in hilum.toml [prefetch]). 'status' shows the rules, the cache of fetched priors and the "
        "recent jobs of the running node; 'run' fetches the priors of one study/order or patient now.",
    )
    sub = p.add_subparsers(dest="prefetch_verb", metavar="ACTION")
    sub.required = True
    st = sub.add_parser(
        "status",
        help="rules, cache use and recent jobs",
        description="Show the [prefetch] rules, the prefetched studies held (the LRU cache) and "
        "the jobs the running node last recorded.",
    )
    st.add_argument("--json", action="store_true", help="JSON output")
    st.add_argument("--jobs", type=int, default=20, metavar="N", help="show the last N jobs (default 20)")
    st.set_defaults(handler=run_status)
    run = sub.add_parser(
        "run",
        help="fetch the priors of a study/order or a patient now",
        description="Fetch the relevant priors (by the [prefetch] rules) of the patient of "
        "--study (a study or an order's Study Instance UID) or of --patient, and wait. C-MOVE "
        "peers send to this node's AE title: a node must be running on this data folder.",
        epilog="example: hilum prefetch run --patient MRN0042 --json",
    )
    who = run.add_mutually_exclusive_group()
    who.add_argument("--study", metavar="UID", help="Study Instance UID of the current study or order")
    who.add_argument("--patient", metavar="ID", help="Patient ID")
    run.add_argument("--issuer", default="", metavar="ISSUER", help="Issuer of Patient ID (with --patient)")
    run.add_argument("--wait", type=float, default=600.0, metavar="S", help="give up after S seconds (default 600)")
    run.add_argument("--json", action="store_true", help="JSON output")
    run.set_defaults(handler=run_now)


def _mb(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB"


def _when(ts: Any) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _job_line(j: dict[str, Any]) -> str:
    who = j.get("patient_id", "") + (f" ({j['issuer']})" if j.get("issuer") else "")
    return (
        f"#{j.get('id')}  {_when(j.get('created'))}  {j.get('trigger', ''):8s}  {j.get('state', ''):7s}  "
        f"{who}  {j.get('message', '')}"
    )


def run_status(args: argparse.Namespace) -> int:
    from hilum.cli._common import load
    from hilum.priors.prefetch import read_status

    if args.jobs < 0:
        raise HilumError(f"--jobs must be 0 or more, got {args.jobs}")
    cfg = load(args)
    with open_archive(args, must_exist=True) as archive:
        status = read_status(archive, cfg)
    status["jobs"] = status["jobs"][-args.jobs :] if args.jobs else []
    if args.json:
        print_json(status)
        return 0
    rules = status["rules"]
    print(f"prefetch: {'enabled' if status['enabled'] else 'disabled'} (hilum.toml [prefetch])")
    print(
        f"  rules: at most {rules['max_priors']} prior(s), "
        + (f"at most {rules['max_age_years']:g} years old, " if rules["max_age_years"] else "any age, ")
        + (f"modalities {', '.join(rules['modalities'])}" if rules["modalities"] else "same modality")
        + (", same body part" if rules["same_body_part"] else "")
        + f"; peers: {', '.join(status['peers']) or 'none'}"
    )
    cache = status["cache"]
    limit = _mb(cache["limit_bytes"]) if cache["limit_bytes"] else "no limit"
    print(
        f"  cache: {cache['studies']} prefetched stud{'y' if cache['studies'] == 1 else 'ies'}, "
        f"{_mb(cache['bytes'])} of {limit}"
    )
    print(
        f"  jobs: {len(status['jobs'])} recent"
        + (f" (recorded {_when(status['jobs_saved_at'])})" if status.get("jobs_saved_at") else "")
    )
    for j in status["jobs"]:
        print("  " + _job_line(j))
    return 0


def run_now(args: argparse.Namespace) -> int:
    from hilum.cli._common import load
    from hilum.priors.prefetch import Prefetcher

    if args.wait <= 0:
        raise HilumError(f"--wait must be more than 0 seconds, got {args.wait:g}")
    if not (args.study or args.patient or "").strip():
        raise HilumError("say whose priors to fetch: --study UID or --patient ID")
    cfg = load(args)
    with open_archive(args, must_exist=True) as archive:
        try:
            prefetcher = Prefetcher(archive, cfg)
        except ValueError as exc:
            raise HilumError(str(exc)) from exc
        if not prefetcher.peers:
            raise HilumError("no peer to fetch from: hilum.toml has no queryable [peers] or [dicomweb_sources]")
        if args.study:
            job = prefetcher.for_study(args.study.strip(), trigger="manual")
            if job is None:
                raise HilumError("the study has no Patient ID: its priors cannot be found")
        else:
            job = prefetcher.enqueue(args.patient.strip(), args.issuer.strip(), trigger="manual")
        prefetcher.start(listen=False)
        start = time.monotonic()
        try:
            done = prefetcher.wait_idle(args.wait)
        finally:
            prefetcher.stop(timeout=5)
        final = prefetcher.job(job.id) or job
    if args.json:
        print_json(final.as_dict())
    else:
        print(_job_line(final.as_dict()) + f"  ({time.monotonic() - start:.1f} s)")
        for line in final.errors:
            print(f"  {line}")
    if not done:
        raise HilumError(f"prefetch did not finish within {args.wait:g} s")
    return 0 if final.state == "done" else 1
