#!/usr/bin/env python3
"""A scripted IMAP client for sealpost's integration tests (python3 standard library only).

    python3 tests/imap/client.py --host 127.0.0.1 --port P --user U --password W
        [--starttls --cafile F | --tls --cafile F] [--servername NAME] [--no-login] SCRIPT.json

imaplib opens the connection (plain, implicit TLS or STARTTLS, verified against --cafile) and
logs in with LOGIN the way a stock client does; every step after that is sent and read here,
byte for byte, so literals stay exact (imaplib's own append() rewrites line endings) and the
order of untagged responses is kept. SCRIPT.json ("-" reads stdin) is a JSON list of steps:

    {"cmd": "select", "mailbox": "INBOX"}          also "examine"
    {"cmd": "append", "mailbox": "INBOX", "file": "path" | "data_b64": "...",
     "flags": "(\\Seen)", "date": "01-Jan-2024 12:00:00 +0000"}   flags and date optional
    {"cmd": "raw", "line": "UID FETCH 1:* (FLAGS)"}  the line after the tag, no CRLF
    {"cmd": "login", "user": "u", "password": "p"}  with --no-login
    {"cmd": "fetch_all", "mailbox": "INBOX"}        EXAMINE, then every message in UID order
    {"cmd": "logout"}

Output (stdout, one JSON object):

    {"greeting": <status>, "login": <status> | null, "steps": [<result>, ...]}

    <result>  = {"cmd": ..., "untagged": [<untagged>...], "tagged": <status>}
    <status>  = {"status": "OK", "code": [tokens] | null, "text": "..."}
    <untagged>= {"raw": "...", "status": ...} for OK/NO/BAD/BYE/PREAUTH (fields as <status>)
              | {"raw": "...", "data": [tokens]} for everything else (FETCH, LIST, ...)

Tokens: atoms are JSON strings (flags keep their backslash: "\\Seen"; a section such as
"BODY[HEADER.FIELDS (SUBJECT)]" is one atom), all-digit atoms are numbers, NIL is null,
quoted strings and literals are strings (so a server's choice between them does not show),
parenthesised lists are arrays. Bytes are carried as latin-1 (one code point per byte, so
nothing is lost); "raw" is the response as received, literals inlined.

fetch_all adds "messages": [{"uid", "size", "flags", "internaldate", "envelope", "body",
"bodystructure", "raw_b64"}] where raw_b64 is BODY.PEEK[] in base64. It leaves the mailbox
selected read-only.

A NO or BAD is a result, not an error: the exit status is 0 unless the connection or the
protocol broke (then 2, with the reason on stderr). After a failed login the steps are skipped.
"""

import argparse
import base64
import imaplib
import json
import socket
import ssl
import sys

TIMEOUT = 30


class ProtocolError(Exception):
    pass


# --- connection -----------------------------------------------------------------------------


def connector(connect_host, context):
    """imaplib classes that connect to connect_host while self.host (what TLS verifies and
    what imaplib's starttls() passes as server_hostname) stays the --servername."""

    class Plain(imaplib.IMAP4):
        def _create_socket(self, timeout):
            return socket.create_connection((connect_host, self.port), timeout)

    class Implicit(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout):
            sock = socket.create_connection((connect_host, self.port), timeout)
            return context.wrap_socket(sock, server_hostname=self.host)

    return Plain, Implicit


def connect(args):
    context = None
    if args.tls or args.starttls:
        context = ssl.create_default_context(cafile=args.cafile)
    plain, implicit = connector(args.host, context)
    servername = args.servername or args.host
    if args.tls:
        imap = implicit(servername, args.port, ssl_context=context, timeout=TIMEOUT)
    else:
        imap = plain(servername, args.port, timeout=TIMEOUT)
        if args.starttls:
            imap.starttls(ssl_context=context)
    return imap


# --- response parsing -----------------------------------------------------------------------


def read_response(imap):
    """One whole response (line plus any literals and continuation lines) as bytes, and
    whether it ended in a literal-free line."""
    data = b""
    while True:
        line = imap.readline()
        if not line:
            raise ProtocolError("connection closed by server")
        data += line
        body = line.rstrip(b"\r\n")
        if body.endswith(b"}") and b"{" in body:
            count = body[body.rindex(b"{") + 1 : -1].rstrip(b"+")
            if count.isdigit():
                want = int(count)
                chunk = b""
                while len(chunk) < want:
                    more = imap.read(want - len(chunk))
                    if not more:
                        raise ProtocolError("connection closed inside a literal")
                    chunk += more
                data += chunk
                continue
        return data


ATOM_END = b' ()"{\r\n]'


def tokens(data, pos=0, until=None):
    """Parses IMAP data items from data[pos:]; stops at `until` (b")" or b"]") or at the end.
    Returns (list, position after the stop byte)."""
    out = []
    n = len(data)
    while pos < n:
        c = data[pos : pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif until is not None and c == until:
            return out, pos + 1
        elif c == b"(":
            inner, pos = tokens(data, pos + 1, b")")
            out.append(inner)
        elif c == b'"':
            pos += 1
            s = bytearray()
            while True:
                if pos >= n:
                    raise ProtocolError("unterminated quoted string")
                ch = data[pos]
                if ch == 0x5C:  # backslash quotes the next byte
                    s.append(data[pos + 1])
                    pos += 2
                elif ch == 0x22:
                    pos += 1
                    break
                else:
                    s.append(ch)
                    pos += 1
            out.append(bytes(s).decode("latin-1"))
        elif c == b"{":
            close = data.index(b"}", pos)
            count = int(data[pos + 1 : close].rstrip(b"+"))
            start = data.index(b"\n", close) + 1
            out.append(data[start : start + count].decode("latin-1"))
            pos = start + count
        else:
            start = pos
            while pos < n and data[pos : pos + 1] not in ATOM_END:
                if data[pos : pos + 1] == b"[":  # a section: BODY[HEADER.FIELDS (A B)]
                    pos = data.index(b"]", pos)
                pos += 1
            if pos == start:
                raise ProtocolError("unexpected byte %r at %d" % (c, pos))
            atom = data[start:pos].decode("latin-1")
            if atom.isdigit():
                out.append(int(atom))
            elif atom.upper() == "NIL":
                out.append(None)
            else:
                out.append(atom)
    if until is not None:
        raise ProtocolError("missing %r" % until)
    return out, pos


def status(text):
    """'OK [CODE args] human text' -> {"status", "code", "text"}."""
    word, _, rest = text.partition(b" ")
    code = None
    if rest.startswith(b"["):
        code, end = tokens(rest, 1, b"]")
        rest = rest[end:].lstrip(b" ")
    return {
        "status": word.decode("latin-1").upper(),
        "code": code,
        "text": rest.rstrip(b"\r\n").decode("latin-1"),
    }


STATUS_WORDS = {b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"}


def untagged(data):
    body = data[2:]
    item = {"raw": data.rstrip(b"\r\n").decode("latin-1")}
    if body.split(b" ", 1)[0].upper().rstrip(b"\r\n") in STATUS_WORDS:
        item.update(status(body))
    else:
        try:
            item["data"] = tokens(body)[0]
        except (ProtocolError, ValueError, IndexError) as e:
            item["data"] = None
            item["error"] = str(e)
    return item


# --- commands -------------------------------------------------------------------------------


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Session:
    def __init__(self, imap):
        self.imap = imap
        self.counter = 0

    def tag(self):
        self.counter += 1
        return b"S%04d" % self.counter

    def command(self, line, literal=None):
        """Sends `TAG line`; with a literal, line must end in {n} and the bytes follow the
        server's continuation. Returns (untagged list, tagged status)."""
        tag = self.tag()
        self.imap.send(tag + b" " + line + b"\r\n")
        seen = []
        while True:
            data = read_response(self.imap)
            if data.startswith(b"+"):
                if literal is None:
                    raise ProtocolError("unexpected continuation: %r" % data)
                self.imap.send(literal + b"\r\n")
                literal = None
            elif data.startswith(b"* "):
                seen.append(untagged(data))
            elif data.startswith(tag + b" "):
                return seen, status(data[len(tag) + 1 :])
            else:
                raise ProtocolError("unexpected response: %r" % data[:200])


def step_result(cmd, seen, tagged, **extra):
    result = {"cmd": cmd, "untagged": seen, "tagged": tagged}
    result.update(extra)
    return result


def fetch_items(data):
    """['FETCH', [k, v, k, v...]] of one untagged FETCH -> {k.upper(): v}."""
    pairs = data[2] if len(data) > 2 else []
    return {
        str(pairs[i]).upper(): pairs[i + 1] for i in range(0, len(pairs) - 1, 2)
    }


def fetch_all(session, mailbox):
    seen, tagged = session.command(b"EXAMINE " + quote(mailbox).encode("utf-8"))
    if tagged["status"] != "OK":
        return step_result("fetch_all", seen, tagged, messages=[])
    exists = 0
    for u in seen:
        d = u.get("data")
        if d and len(d) >= 2 and isinstance(d[0], int) and str(d[1]).upper() == "EXISTS":
            exists = d[0]
    if exists == 0:
        return step_result("fetch_all", seen, tagged, messages=[])
    items = b"(UID RFC822.SIZE FLAGS INTERNALDATE ENVELOPE BODY BODYSTRUCTURE BODY.PEEK[])"
    more, tagged = session.command(b"UID FETCH 1:* " + items)
    seen += more
    messages = {}
    for u in more:
        d = u.get("data")
        if not (d and len(d) >= 3 and str(d[1]).upper() == "FETCH"):
            continue
        f = fetch_items(d)
        if "UID" not in f:
            continue
        m = messages.setdefault(f["UID"], {"uid": f["UID"]})
        for key, name in [
            ("RFC822.SIZE", "size"),
            ("FLAGS", "flags"),
            ("INTERNALDATE", "internaldate"),
            ("ENVELOPE", "envelope"),
            ("BODY", "body"),
            ("BODYSTRUCTURE", "bodystructure"),
        ]:
            if key in f:
                m[name] = f[key]
        if "BODY[]" in f and f["BODY[]"] is not None:
            raw = f["BODY[]"].encode("latin-1")
            m["raw_b64"] = base64.b64encode(raw).decode("ascii")
    ordered = [messages[k] for k in sorted(messages)]
    # The per-message view is what callers compare; keep the transcript short.
    return step_result("fetch_all", seen[: len(seen) - len(more)], tagged, messages=ordered)


def run_step(session, step):
    cmd = step.get("cmd")
    if cmd in ("select", "examine"):
        line = cmd.upper().encode() + b" " + quote(step["mailbox"]).encode("utf-8")
        return step_result(cmd, *session.command(line))
    if cmd == "append":
        if "file" in step:
            with open(step["file"], "rb") as f:
                message = f.read()
        else:
            message = base64.b64decode(step["data_b64"])
        line = b"APPEND " + quote(step["mailbox"]).encode("utf-8")
        if step.get("flags"):
            line += b" " + step["flags"].encode("latin-1")
        if step.get("date"):
            line += b" " + quote(step["date"]).encode("latin-1")
        line += b" {%d}" % len(message)
        return step_result(cmd, *session.command(line, literal=message))
    if cmd == "raw":
        return step_result(cmd, *session.command(step["line"].encode("latin-1")))
    if cmd == "login":
        line = "LOGIN %s %s" % (quote(step["user"]), quote(step["password"]))
        return step_result(cmd, *session.command(line.encode("utf-8")))
    if cmd == "logout":
        return step_result(cmd, *session.command(b"LOGOUT"))
    if cmd == "fetch_all":
        return fetch_all(session, step["mailbox"])
    raise ProtocolError("unknown step: %r" % (step,))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--no-login", action="store_true", help="the script logs in itself")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tls", action="store_true", help="implicit TLS (IMAPS)")
    mode.add_argument("--starttls", action="store_true")
    p.add_argument("--cafile", help="trust anchor for --tls/--starttls")
    p.add_argument("--servername", help="name the certificate must carry (default --host)")
    p.add_argument("script", help='JSON list of steps, or "-" for stdin')
    args = p.parse_args()
    if (args.tls or args.starttls) and not args.cafile:
        p.error("--tls and --starttls need --cafile")
    if not args.no_login and (args.user is None or args.password is None):
        p.error("--user and --password are needed unless --no-login")

    if args.script == "-":
        steps = json.load(sys.stdin)
    else:
        with open(args.script, "rb") as f:
            steps = json.load(f)

    try:
        imap = connect(args)
        out = {"greeting": status(imap.welcome[2:]), "login": None, "steps": []}
        if not args.no_login:
            try:
                typ, data = imap.login(args.user, args.password)
                text = data[0].decode("latin-1") if data and data[0] else ""
                out["login"] = {"status": typ, "code": None, "text": text}
            except imaplib.IMAP4.error as e:
                out["login"] = {"status": "NO", "code": None, "text": str(e)}
        session = Session(imap)
        logged_out = False
        if out["login"] is None or out["login"]["status"] == "OK":
            for step in steps:
                result = run_step(session, step)
                out["steps"].append(result)
                if step.get("cmd") == "logout":
                    logged_out = True
                    break
        if not logged_out:
            session.command(b"LOGOUT")
        imap.shutdown()
    except (OSError, ProtocolError, imaplib.IMAP4.error, ValueError, KeyError) as e:
        print("client.py: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, indent=1, ensure_ascii=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
