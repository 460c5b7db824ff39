"""The command line: one parser for every mode, and main(), which imports only the module of the
mode it runs (a guest under TCG pays for every module it loads)."""

from __future__ import annotations

import argparse
import os
import signal

from .common import (
    DEFAULT_CONNECT_RETRIES,
    DEFAULT_MAX_THREADS,
    DEFAULT_TIMEOUT,
    Stop,
    base_result,
    describe_error,
    emit,
    non_negative_float,
    non_negative_int,
    on_signal,
    parse_size,
    parse_via,
    positive_int,
    receiver,
)

# Every module costs here: a guest under TCG imports one in tens of milliseconds. Two that argparse
# would pull in for nothing are kept out: the help formatter asks shutil for the terminal's width
# (shutil imports bz2, lzma and fnmatch; the agent has no terminal), and gettext's lookup of a
# translation imports locale (the agent's messages are never translated: guests have no catalogues;
# main() switches that off for its own process only).


def _untranslated() -> None:
    argparse._ = str  # type: ignore[attr-defined]
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]


class _Formatter(argparse.HelpFormatter):
    """argparse's help, as wide as $COLUMNS says (default 100)."""

    def __init__(self, prog: str) -> None:
        columns = os.environ.get("COLUMNS", "")
        super().__init__(prog, width=(int(columns) if columns.isdigit() else 100) - 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", formatter_class=_Formatter, description="MPTCP testbed workload agent "
                                     "(prints one JSON object on stdout; servers print 'ready' first)")
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    def common(p: argparse.ArgumentParser, server: bool) -> None:
        if server:
            p.add_argument("--bind", required=True, metavar="ADDR", help="address to listen on")
        else:
            p.add_argument("--connect", required=True, metavar="ADDR", help="server address")
        p.add_argument("--port", required=True, type=int, metavar="P")
        p.add_argument("--protocol", choices=("mptcp", "tcp"), default="mptcp",
                       help="mptcp opens IPPROTO_MPTCP sockets, falling back to TCP if refused (default)")
        p.add_argument("--timeout", type=non_negative_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"bound on the whole run, 0 = none (default {DEFAULT_TIMEOUT:g})")
        if not server:
            p.add_argument("--via", type=parse_via, default=None, metavar="KIND:ADDR:PORT",
                           help="go through a converter (RFC 8803, converter:ADDR:PORT) or a SOCKS5 proxy "
                                "(socks5:ADDR:PORT) to --connect")
            p.add_argument("--connect-retries", type=non_negative_int, default=DEFAULT_CONNECT_RETRIES,
                           metavar="N", help="retries on ECONNREFUSED, every 10 ms "
                           f"(default {DEFAULT_CONNECT_RETRIES})")

    def bulk(p: argparse.ArgumentParser, server: bool) -> None:
        common(p, server)
        p.add_argument("--direction", choices=("upload", "download"), default="upload",
                       help="upload: client -> server (default); download: server -> client")
        p.add_argument("--size", type=parse_size, required=not server, default=None, metavar="BYTES",
                       help="payload bytes" + (" (required for download)" if server else ""))
        p.add_argument("--seed", type=int, default=0, metavar="S", help="payload seed (default 0)")
        p.add_argument("--abort-after", type=parse_size, default=None, metavar="BYTES",
                       help="the transfer is aborted after BYTES of payload (less than --size; give the same "
                            "--abort-* options to both sides)")
        p.add_argument("--abort-side", choices=("client", "server"), default="client",
                       help="the side that aborts (default client)")
        p.add_argument("--abort-how", choices=("auto", "unread", "linger0", "both"), default="auto",
                       help="unread: close with payload unread (receiving side only); linger0: close with "
                            "SO_LINGER {1, 0}; both; auto (default): unread on the receiving side, else linger0")

    bulk(sub.add_parser("bulk-server", formatter_class=_Formatter, help="accept one bulk transfer"), True)
    bulk(sub.add_parser("bulk-client", formatter_class=_Formatter, help="run one bulk transfer"), False)

    p = sub.add_parser("rr-server", formatter_class=_Formatter, help="serve request/response exchanges until SIGTERM or timeout")
    common(p, True)
    p.add_argument("--response-size", type=parse_size, default=1000, metavar="BYTES",
                   help="response payload bytes (default 1000)")
    p.add_argument("--max-threads", type=positive_int, default=DEFAULT_MAX_THREADS, metavar="N",
                   help=f"connections served at once (default {DEFAULT_MAX_THREADS})")

    p = sub.add_parser("rr-client", formatter_class=_Formatter, help="run request/response exchanges")
    common(p, False)
    p.add_argument("--requests", type=positive_int, required=True, metavar="N")
    p.add_argument("--request-size", type=parse_size, required=True, metavar="BYTES")
    p.add_argument("--response-size", type=parse_size, required=True, metavar="BYTES")
    p.add_argument("--interval", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="spacing of request starts (default 0: back to back)")
    p.add_argument("--new-connection-per-request", action="store_true",
                   help="open a new connection for every request (timings include the handshake)")
    return parser


# mode -> (module, function): main() imports the one module the mode needs.
MODES = {"bulk-server": ("bulk", "run_bulk_server"), "bulk-client": ("bulk", "run_bulk_client"),
         "rr-server": ("rr", "run_rr_server"), "rr-client": ("rr", "run_rr_client")}


def main(argv: list[str] | None = None) -> int:
    _untranslated()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "bulk-server" and args.size is None:
        if args.direction == "download":
            parser.error("bulk-server --direction download needs --size")
        args.size = 0
    if args.mode.startswith("bulk") and args.abort_after is not None:
        if not 0 < args.abort_after < args.size:
            parser.error("--abort-after must be more than 0 and less than --size"
                         + (" (bulk-server needs --size to abort)" if not args.size else ""))
        if args.abort_how in ("unread", "both") and args.abort_side != receiver(args.direction):
            parser.error(f"--abort-how {args.abort_how} needs the receiving side to abort "
                         f"(--abort-side {receiver(args.direction)} for --direction {args.direction})")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    result: dict[str, object] | None = None
    try:
        try:
            module, function = MODES[args.mode]
            result = getattr(__import__(f"{__package__}.{module}", fromlist=[function]), function)(args)
        except (Exception, Stop) as exc:  # a bug, or a signal outside the modes' own handling
            result = base_result(args.mode, args.protocol)
            result["errors"] = [describe_error(exc)]
    except Stop as exc:  # a signal right after the mode returned
        if result is None:
            result = base_result(args.mode, args.protocol)
            result["errors"] = [describe_error(exc)]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    assert result is not None
    emit(result)
    return 1 if result.get("errors") else 0

