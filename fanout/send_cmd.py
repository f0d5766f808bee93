"""`fanout send`: its arguments; the signing and posting are fanout/send.py's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bus import defaults


def cmd_send(args: argparse.Namespace) -> int:
    from fanout.send import send_file, send_sample

    secret = args.secret or os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",")[0].strip()
    secret = secret or defaults.DEV_WEBHOOK_SECRET
    if args.file:
        if args.event_type or args.id or args.object:
            print("fanout send: --file sends the file as is; give no EVENT_TYPE, --id or --object with it",
                  file=sys.stderr)
            return 2
        return send_file(Path(args.file), url=args.url, secret=secret)
    if not args.event_type:
        print("fanout send: give an EVENT_TYPE (e.g. checkout.session.completed) or --file PAYLOAD.json",
              file=sys.stderr)
        return 2
    return send_sample(args.event_type, url=args.url, secret=secret, event_id=args.id, objects=args.object)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("send", help="sign and POST a realistic sample event (or a payload from a file)")
    p.add_argument("event_type", nargs="?", metavar="EVENT_TYPE",
                   help="the sample to send, e.g. checkout.session.completed (not with --file)")
    p.add_argument("--file", help="send this JSON payload instead, signed as is (its id must start with evt_)")
    p.add_argument("--url", default=f"http://{defaults.HOST}:{defaults.PORT}{defaults.WEBHOOK_PATH}",
                   help="the ingress's webhook URL (default %(default)s)")
    p.add_argument("--secret", help="default: first of $STRIPE_WEBHOOK_SECRET, else the dev secret")
    p.add_argument("--id", help="event id to use (send it twice to see deduplication)")
    p.add_argument("--object", action="append", default=[], metavar="KIND=ID",
                   help="pin an object's id so several sends describe the same object, "
                        "e.g. customer=cus_123 (repeatable)")
    p.set_defaults(func=cmd_send)
