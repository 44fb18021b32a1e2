"""The alert commands of ``jointcal-ap``: ``alerts send|get|consume|info`` and
``registry serve`` (see ``docs/alerts.md``)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["add_commands"]

EXAMPLES_ALERTS = textwrap.dedent("""\
    examples:
      1. Send every archived alert to Kafka through our schema registry:
         jointcal-ap alerts send out/alert-archive --bootstrap 127.0.0.1:9092 \\
             --topic alerts --registry http://127.0.0.1:8081
      2. Send again only what the broker never acknowledged:
         jointcal-ap alerts send out/alert-archive --bootstrap 127.0.0.1:9092 \\
             --topic alerts --registry http://127.0.0.1:8081 --resend-unsent
      3. One alert as JSON, every alert of an object, a cutout as FITS:
         jointcal-ap alerts get out/alert-archive --id 1234567
         jointcal-ap alerts get out/alert-archive --object 42
         jointcal-ap alerts get out/alert-archive --id 1234567 --cutout difference --out d.fits
      4. The example consumer (as a community broker would run it):
         jointcal-ap alerts consume --bootstrap 127.0.0.1:9092 --topic alerts \\
             --registry http://127.0.0.1:8081 --filter "snr > 10" --out bright.parquet
    """)

EXAMPLES_REGISTRY = textwrap.dedent("""\
    examples:
      1. Serve the schema registry on loopback, state in registry.db:
         jointcal-ap registry serve --host 127.0.0.1 --port 8081 --db registry.db
      2. Ask it, as any Confluent client would:
         curl http://127.0.0.1:8081/subjects
    """)


def _data_errors() -> tuple[type[BaseException], ...]:
    from jointcal_ap.alerts.archive import ArchiveError
    from jointcal_ap.alerts.filters import FilterError
    from jointcal_ap.alerts.kafka import DeliveryError
    from jointcal_ap.alerts.serialize import SerializationError

    return (ArchiveError, DeliveryError, FilterError, SerializationError, OSError)


def _handler(func: Any) -> Any:
    """Wrap a handler with the project's exit codes (imports the error types lazily)."""

    def run(args: argparse.Namespace) -> int:
        return command(data_errors=_data_errors())(func)(args)

    return run


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``alerts`` and ``registry`` to the ``jointcal-ap`` parser (argparse only)."""
    raw = argparse.RawDescriptionHelpFormatter
    alerts = sub.add_parser("alerts", help="send, query and consume alerts",
                            formatter_class=raw, epilog=EXAMPLES_ALERTS)
    asub = alerts.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND")

    send = asub.add_parser("send", help="send archived alerts to Kafka (Confluent wire format)",
                           parents=[common], formatter_class=raw, epilog=EXAMPLES_ALERTS)
    send.add_argument("archive", help="the alert archive directory")
    send.add_argument("--bootstrap", required=True, help="broker host:port")
    send.add_argument("--topic", required=True, help="the alert topic")
    send.add_argument("--registry", required=True, help="schema registry URL")
    send.add_argument("--subject", default=None, help="registry subject (default TOPIC-value)")
    send.add_argument("--resend-unsent", action="store_true",
                      help="send only the alerts the broker has not acknowledged")
    send.add_argument("--verify", action="store_true",
                      help="first check that the broker still holds every alert recorded as "
                           "sent (e.g. after a broker restart); lost ones count as unsent")
    send.add_argument("--timeout", type=float, default=30.0,
                      help="seconds to wait for each alert's acknowledgement (default 30)")
    send.add_argument("--max-message-bytes", type=int, default=None,
                      help="the broker's message limit (default 1048588, Kafka's)")
    send.set_defaults(handler=_handler(_send))

    get = asub.add_parser("get", help="alerts from the archive as JSON, or a cutout as FITS",
                          parents=[common], formatter_class=raw, epilog=EXAMPLES_ALERTS)
    get.add_argument("archive", help="the alert archive directory")
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, help="a diaSourceId")
    which.add_argument("--object", type=int, help="a diaObjectId (all its alerts)")
    get.add_argument("--cutout", choices=("difference", "science", "template"), default=None,
                     help="write this cutout of the alert (--id) as FITS to --out")
    get.add_argument("--out", default=None, help="output file (default: stdout for JSON)")
    get.set_defaults(handler=_handler(_get))

    consume = asub.add_parser("consume", help="the example consumer: filter alerts to Parquet",
                              parents=[common], formatter_class=raw, epilog=EXAMPLES_ALERTS)
    consume.add_argument("--bootstrap", required=True, help="broker host:port")
    consume.add_argument("--topic", required=True, help="the alert topic")
    consume.add_argument("--registry", required=True, help="schema registry URL")
    consume.add_argument("--group", default="jointcal-ap-example", help="consumer group id")
    consume.add_argument("--filter", default=None,
                         help='filter expression over diaSource fields, e.g. "snr > 10"')
    consume.add_argument("--out", required=True, help="output Parquet file")
    consume.add_argument("--idle-timeout", type=float, default=10.0,
                         help="stop after this many seconds without a message (default 10)")
    consume.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    consume.set_defaults(handler=_handler(_consume))

    info = asub.add_parser("info", help="counts of an archive by delivery state",
                           parents=[common], formatter_class=raw, epilog=EXAMPLES_ALERTS)
    info.add_argument("archive", help="the alert archive directory")
    info.set_defaults(handler=_handler(_info))

    registry = sub.add_parser("registry", help="our Confluent-compatible schema registry",
                              formatter_class=raw, epilog=EXAMPLES_REGISTRY)
    rsub = registry.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    serve = rsub.add_parser("serve", help="serve the registry (HTTP, until interrupted)",
                            parents=[common], formatter_class=raw, epilog=EXAMPLES_REGISTRY)
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    serve.add_argument("--db", required=True, help="the SQLite store (created if missing)")
    serve.set_defaults(handler=_handler(_serve))


def _open_archive(path: str) -> Any:
    from pathlib import Path

    from jointcal_ap.alerts.archive import AlertArchive

    if not (Path(path) / "index.sqlite3").is_file():
        raise FileNotFoundError(f"{path} is not an alert archive (no index.sqlite3)")
    return AlertArchive(path)


def _send(args: argparse.Namespace) -> int:
    from jointcal_ap.alerts.kafka import DEFAULT_MAX_MESSAGE_BYTES, send_archive

    with _open_archive(args.archive) as archive:
        report = send_archive(archive, args.bootstrap, args.topic, args.registry,
                              resend_unsent=args.resend_unsent, verify=args.verify,
                              subject=args.subject,
                              delivery_timeout=args.timeout,
                              max_message_bytes=args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
                              progress=not getattr(args, "no_progress", False)
                              and sys.stderr.isatty())
    print(json.dumps({"sent": report.sent, "acknowledged": report.acknowledged,
                      "failed": len(report.failed)}))
    for ident, reason in report.failed[:20]:
        print(f"jointcal-ap: alert {ident} not delivered: {reason}", file=sys.stderr)
    if report.failed:
        print(f"jointcal-ap: error: {len(report.failed)} alert(s) not delivered; they stay in "
              f"the archive: rerun with --resend-unsent", file=sys.stderr)
        return 1
    return 0


def _get(args: argparse.Namespace) -> int:
    from jointcal_ap.alerts.archive import alert_json
    from jointcal_ap.atomic import write_bytes, write_text

    with _open_archive(args.archive) as archive:
        if args.id is not None:
            alert = archive.get(args.id)
            if alert is None:
                raise FileNotFoundError(f"no alert with diaSourceId {args.id} in {args.archive}")
            alerts = [alert]
        else:
            alerts = archive.by_object(args.object)
            if not alerts:
                raise FileNotFoundError(f"no alert of diaObjectId {args.object} in {args.archive}")
    if args.cutout:
        if args.id is None or not args.out:
            raise UsageError("--cutout needs --id and --out")
        data = alerts[0][f"cutout{args.cutout.capitalize()}"]
        if data is None:
            raise FileNotFoundError(f"alert {args.id} has no {args.cutout} cutout")
        write_bytes(args.out, data)
        return 0
    text = alert_json(alerts[0] if args.id is not None else alerts) + "\n"
    if args.out:
        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def _consume(args: argparse.Namespace) -> int:
    from jointcal_ap.alerts.kafka import consume_alerts

    summary = consume_alerts(args.bootstrap, args.topic, args.registry, args.out,
                             group_id=args.group, filter_expression=args.filter,
                             idle_timeout=args.idle_timeout, max_messages=args.max_messages)
    print(json.dumps({"messages": summary.messages, "duplicates": summary.duplicates,
                      "kept": summary.kept, "out": str(summary.out)}))
    return 0


def _info(args: argparse.Namespace) -> int:
    with _open_archive(args.archive) as archive:
        print(json.dumps(archive.describe(), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from jointcal_ap.alerts.registry import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"jointcal-ap: warning: serving on {args.host}, not loopback", file=sys.stderr)
    serve(args.db, args.host, args.port)
    return 0
