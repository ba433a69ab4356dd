"""``hilum worklist``: ask a peer's Modality Worklist (PS3.4 K), like ``findscu -W``."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments

    p = subparsers.add_parser(
        "worklist", help="query a peer's Modality Worklist (MWL C-FIND)",
        description="Ask a Modality Worklist SCP for scheduled procedure steps. Keys: -k Keyword=value with the "
        "matching rules of C-FIND (wildcards, date ranges); scheduled-step keys (Modality, ScheduledStationAETitle, "
        "ScheduledProcedureStepStartDate, ...) go into the step item by themselves. The usual return keys are "
        "asked for too unless --only-keys.",
        epilog="example: hilum worklist ris.local 104 -aec RIS -k Modality=CT -k ScheduledProcedureStepStartDate=20260301")
    add_peer_arguments(p)
    p.add_argument("-k", "--key", action="append", default=[], metavar="KEY[=VALUE]", help="matching or return key")
    p.add_argument("--only-keys", action="store_true", help="ask only for the -k keys")
    p.set_defaults(handler=run_worklist)


def run_worklist(args: argparse.Namespace) -> int:
    from hilum.dimse.cliargs import target_from_args
    from hilum.dimse.scu import WORKLIST_DEFAULT_KEYS, dataset_to_dict, iter_worklist, parse_keys

    target = target_from_args(args)
    keys = {} if args.only_keys else {k: "" for k in WORKLIST_DEFAULT_KEYS}
    keys.update(parse_keys(args.key))
    keys.pop("QueryRetrieveLevel", None)
    rows = [dataset_to_dict(ds) for ds in iter_worklist(target, keys)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    for i, row in enumerate(rows, 1):
        step = (row.get("ScheduledProcedureStepSequence") or [{}])[0]
        print(f"{i:4d}  {row.get('AccessionNumber', '')}  {row.get('PatientID', '')}  {row.get('PatientName', '')}  "
              f"{step.get('Modality', '')}  {step.get('ScheduledStationAETitle', '')}  "
              f"{step.get('ScheduledProcedureStepStartDate', '')} {step.get('ScheduledProcedureStepStartTime', '')}  "
              f"{step.get('ScheduledProcedureStepStatus', '')}  {row.get('RequestedProcedureDescription', '')}")
    print(f"{len(rows)} scheduled step{'s' if len(rows) != 1 else ''} from {target}")
    return 0
