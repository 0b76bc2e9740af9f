#!/usr/bin/python3
"""Stand-in for a provider's SMTP submission server, used by integration tests.

Run with Debian's interpreter (python3-aiosmtpd 1.4.3 lives in its dist-packages):

    /usr/bin/python3 tests/smtp_relay.py --maildir DIR --cert CERT.pem --key KEY.pem \
        --user USER --password PASS [--implicit-tls] [--reject ADDR]... \
        [--hold-once ADDR]... [--slow-final ADDR]... [--full ADDR]... [--port N]
        [--final-reply ADDR=double|bare|refuse]... [--busy ADDR]... [--odd-rcpt ADDR]...
        [--slow-hello SECONDS]
        [--one-ehlo-over-tls]

stdout carries only these lines (each flushed), so a test can drive it line by line:

    READY <port>
    HOLDING <addr>
    DELIVERED <mail_from> <rcpt1>,<rcpt2>,... <path-of-file-in-DIR/new>

(in each address '%' is written %25, ',' %2C and a blank %20, so that the line splits cleanly)

A held RCPT waits until the client goes away, or until the line `RELEASE <addr>` arrives on
stdin; it is then answered 451 (a temporary failure), so a test decides when the hold ends.

Everything else (aiosmtpd's own logging) goes to stderr.
"""

import argparse
import asyncio
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def emit(line):
    # The test reads stdout as a protocol; unflushed lines would stall it.
    print(line, flush=True)


class Maildir:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self._seq = itertools.count()
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    def deliver(self, data):
        # Standard Maildir discipline: a reader scanning new/ must never see a
        # partially written message, so write in tmp/ and rename atomically.
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._seq)}.{self._host}"
        tmp = os.path.join(self.root, "tmp", name)
        new = os.path.join(self.root, "new", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, new)
        return new


class RelayHandler:
    def __init__(self, maildir, reject, hold_once, slow_final=(), full=(), one_ehlo=False,
                 final_replies=(), busy=(), odd=()):
        self.maildir = maildir
        # These answer RCPT with 354, a reply that does not fit RCPT.
        self.odd = {a.lower() for a in odd}
        # These answer RCPT with 421 (a provider's rate limit: the server closes the session).
        self.busy = {a.lower() for a in busy}
        # How the final "." of a message to these is answered, instead of "250 2.0.0 OK":
        # "double" (two replies, the second one extra), "bare" ("250" without text, as RFC 5321
        # section 4.2 allows) or "refuse" (554, nothing delivered).
        self.final_replies = {a.lower(): how for a, how in final_replies}
        # Answers 503 to a second EHLO over TLS, as some servers refuse a repeated EHLO.
        self.one_ehlo = one_ehlo
        # These answer RCPT with 552 (mailbox full).
        self.full = {a.lower() for a in full}
        # Messages to these take 6 s to answer the final "." (a busy relay).
        self.slow_final = {a.lower() for a in slow_final}
        self.reject = {a.lower() for a in reject}
        # Addresses still waiting for their one held RCPT; shared by all
        # connections because "first time" is over the server's whole life.
        self.hold_pending = {a.lower() for a in hold_once}
        # Set by a RELEASE line on stdin (see watch_releases).
        self.released = {a.lower(): asyncio.Event() for a in hold_once}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if self.one_ehlo and session.ssl is not None:
            if getattr(session, "ehlo_over_tls", False):
                return ["503 5.5.1 Error: duplicate EHLO"]
            session.ehlo_over_tls = True
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        key = address.lower()
        if key in self.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if key in self.full:
            return f"552 5.2.2 <{address}>: Mailbox full"
        if key in self.busy:
            return "421 4.7.0 rate limited, closing connection"
        if key in self.odd:
            # Recorded, but answered as if it were DATA: a reply out of step with the command.
            envelope.rcpt_tos.append(address)
            return "354 go ahead"
        if key in self.hold_pending:
            self.hold_pending.discard(key)
            emit(f"HOLDING {address}")
            # Simulates a server that hangs mid-transaction, until the test releases it.
            # When the client goes away first, aiosmtpd cancels this task, and the
            # CancelledError just ends the session.
            await self.released[key].wait()
            return f"451 4.3.0 <{address}>: held, try again later"
        # With a handle_RCPT hook in place aiosmtpd leaves recording to us.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        how = next((self.final_replies[r.lower()] for r in envelope.rcpt_tos
                    if r.lower() in self.final_replies), None)
        if how in ("refuse", "double-data"):
            return "554 5.7.1 content rejected"
        # original_content is the exact bytes after dot-unstuffing, CRLFs intact.
        path = self.maildir.deliver(envelope.original_content)
        if any(r.lower() in self.slow_final for r in envelope.rcpt_tos):
            await asyncio.sleep(6)
        sender = envelope.mail_from or "<>"
        options = ",".join(o.upper() for o in envelope.mail_options) or "-"
        rcpts = ",".join(r.replace("%", "%25").replace(",", "%2C").replace(" ", "%20")
                         for r in envelope.rcpt_tos)
        emit(f"DELIVERED {sender} {rcpts} {path} {options}")
        if how == "double":
            return "250 2.0.0 OK: queued\r\n250 2.0.0 and a reply too many"
        if how == "bare":
            return "250"
        return "250 2.0.0 OK: queued"


def make_authenticator(user, password):
    expected = LoginPassword(user.encode(), password.encode())

    def authenticate(server, session, envelope, mechanism, auth_data):
        # success=False with handled=False makes aiosmtpd answer
        # "535 5.7.8 Authentication credentials invalid".
        ok = isinstance(auth_data, LoginPassword) and auth_data == expected
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticate


class DoubleDataSMTP(SMTP):
    """Answers DATA twice ("354" and another "354") for a message to one of `addresses`, so
    that the client that takes the second for its answer to the final dot is one behind."""

    addresses = set()

    async def push(self, status):
        if status.startswith("354") and any(
                r.lower() in self.addresses for r in self.envelope.rcpt_tos):
            status += "\r\n354 and once more"
        await super().push(status)


class SlowHelloSMTP(SMTP):
    """Takes `delay` seconds before its greeting and before its reply to each EHLO, as a
    server that delays its greeting on purpose (postscreen, greet_pause) and is slow to EHLO."""

    delay = 0.0

    async def push(self, status):
        if status.startswith("220 ") and not status.startswith("220 Ready"):
            await asyncio.sleep(self.delay)
        await super().push(status)

    async def smtp_EHLO(self, hostname):
        await asyncio.sleep(self.delay)
        await super().smtp_EHLO(hostname)


class InjectingSMTP(SMTP):
    """Answers STARTTLS with its 220 and, in the same plaintext write, a reply of its own: what
    a man in the middle adds to have a client take it as the relay's answer to its first
    command over TLS (STARTTLS response injection, RFC 3207 section 6)."""

    async def push(self, status):
        if status == "220 Ready to start TLS":
            status += "\r\n250 2.0.0 injected in plain text"
        await super().push(status)


async def serve(args):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    final_replies = [spec.split("=", 1) for spec in args.final_reply]
    handler = RelayHandler(Maildir(args.maildir), args.reject, args.hold_once, args.slow_final,
                           args.full, args.one_ehlo_over_tls, final_replies, args.busy,
                           args.odd_rcpt)
    authenticator = make_authenticator(args.user, args.password)

    def factory():
        if args.plain:
            # A loopback listener as Postfix's re-injection one is: no TLS, no AUTH.
            return SMTP(handler, hostname="localhost", enable_SMTPUTF8=args.smtputf8)
        common = dict(
            hostname="localhost",  # skips a per-connection getfqdn() DNS lookup
            auth_required=True,
            authenticator=authenticator,  # built-in PLAIN and LOGIN both use it
            enable_SMTPUTF8=args.smtputf8,
        )
        if args.implicit_tls:
            # The socket is TLS from the first byte, but aiosmtpd only knows
            # about TLS it negotiated itself via STARTTLS, so auth_require_tls
            # would refuse AUTH forever. Every connection is encrypted here.
            return SMTP(handler, auth_require_tls=False, **common)
        DoubleDataSMTP.addresses = {a.lower() for a, how in final_replies if how == "double-data"}
        SlowHelloSMTP.delay = args.slow_hello
        smtp = (InjectingSMTP if args.inject_after_starttls
                else DoubleDataSMTP if DoubleDataSMTP.addresses
                else SlowHelloSMTP if args.slow_hello else SMTP)
        return smtp(handler, tls_context=tls, require_starttls=True,
                    auth_require_tls=True, **common)

    loop = asyncio.get_running_loop()
    watch_releases(loop, handler)
    server = await loop.create_server(
        factory, "127.0.0.1", args.port, ssl=tls if args.implicit_tls else None)
    emit(f"READY {server.sockets[0].getsockname()[1]}")

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    # Held sessions never finish on their own; asyncio.run() cancels them.


def watch_releases(loop, handler):
    """Reads `RELEASE <addr>` lines from stdin (a thread: stdin may be a pipe or a terminal)."""

    def read():
        for line in sys.stdin:
            words = line.split()
            if len(words) == 2 and words[0] == "RELEASE":
                event = handler.released.get(words[1].lower())
                if event is not None:
                    loop.call_soon_threadsafe(event.set)

    threading.Thread(target=read, daemon=True).start()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--maildir", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--reject", action="append", default=[], metavar="ADDR")
    p.add_argument("--hold-once", action="append", default=[], metavar="ADDR")
    p.add_argument("--slow-final", action="append", default=[], metavar="ADDR")
    p.add_argument("--full", action="append", default=[], metavar="ADDR")
    p.add_argument("--odd-rcpt", action="append", default=[], metavar="ADDR",
                   help="answer RCPT to ADDR with 354")
    p.add_argument("--slow-hello", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long before the greeting and before each EHLO reply")
    p.add_argument("--busy", action="append", default=[], metavar="ADDR",
                   help="answer RCPT to ADDR with 421 (rate limited)")
    p.add_argument("--final-reply", action="append", default=[], metavar="ADDR=HOW",
                   help="answer the final dot of a message to ADDR: double, bare or refuse; "
                        "double-data: answer its DATA twice, then refuse it")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--inject-after-starttls", action="store_true")
    p.add_argument("--smtputf8", action="store_true", help="announce SMTPUTF8 (RFC 6531)")
    p.add_argument("--plain", action="store_true",
                   help="no TLS and no AUTH (a loopback re-injection listener)")
    p.add_argument("--one-ehlo-over-tls", action="store_true",
                   help="answer 503 to a second EHLO over TLS")
    args = p.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="smtp_relay: %(levelname)s %(message)s")
    # aiosmtpd 1.4 warns on every connection about things that are fine here:
    # "AUTH without TLS" under implicit TLS (see factory) and its own use of
    # the deprecated Session.login_data after each login. Keep stderr readable.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    noise = ("auth_require_tls == False", "Session.login_data is deprecated")
    logging.getLogger("mail.log").addFilter(
        lambda r: not any(n in r.getMessage() for n in noise))

    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
