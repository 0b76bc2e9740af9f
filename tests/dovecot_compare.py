#!/usr/bin/env python3
"""Ask a throwaway Dovecot 2.3 what it answers for the fixture corpus.

sealpost's IMAP summaries (src/imap/summary.rs, src/imap/section.rs) aim to give the same bytes
as Dovecot for ENVELOPE, BODY, BODYSTRUCTURE, RFC822.SIZE and BODY[section]. This script
records Dovecot's answers as the oracle the Rust unit tests compare against.

Usage (as root, Dovecot installed at /usr/sbin/dovecot):

    python3 tests/dovecot_compare.py [--out tests/data/dovecot] [FIXTURE.eml ...]

It creates a temp dir with a dovecot.conf (own base_dir, log, a free 127.0.0.1 port, static
passdb/userdb, a Maildir), copies each fixture byte-exactly into Maildir/cur/ (APPEND would let
Dovecot rewrite line endings), starts `dovecot -F -c CONF`, fetches with a raw IMAP exchange
(imaplib for the login, exact response bytes for the fetches) and stops Dovecot again.

One output file per fixture, a sequence of records:

    <ITEM> <length>\n<length bytes>\n      value as Dovecot sent it (IMAP string syntax kept)
    <ITEM> NIL\n                            Dovecot answered NIL

ITEM is ENVELOPE, BODY, BODYSTRUCTURE, RFC822.SIZE or BODY[<section>] (for sections the value
is the decoded string content, not the IMAP literal syntax). Sections: every part number found
in the BODYSTRUCTURE, with .MIME, and .HEADER/.TEXT for message/rfc822 parts, plus the
top-level HEADER, TEXT, HEADER.FIELDS (FROM TO SUBJECT), HEADER.FIELDS.NOT (RECEIVED SUBJECT)
and a few part numbers that do not exist.
"""
import argparse
import glob
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CONF = """\
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
ssl = no
listen = 127.0.0.1
protocols = imap
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain
disable_plaintext_auth = no
mail_location = maildir:{tmp}/Maildir
passdb {{
  driver = static
  args = password=pw
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={tmp}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a tiny reader for IMAP values (enough for BODYSTRUCTURE) ---------------------------------

def parse_value(buf, i):
    """Parse one IMAP value at buf[i:]; return (value, next index). Lists become Python lists,
    strings bytes, NIL None, atoms/numbers bytes."""
    while buf[i:i + 1] == b" ":
        i += 1
    c = buf[i:i + 1]
    if c == b"(":
        out = []
        i += 1
        while True:
            while buf[i:i + 1] == b" ":
                i += 1
            if buf[i:i + 1] == b")":
                return out, i + 1
            v, i = parse_value(buf, i)
            out.append(v)
    if c == b'"':
        i += 1
        s = bytearray()
        while buf[i:i + 1] != b'"':
            if buf[i:i + 1] == b"\\":
                i += 1
            s += buf[i:i + 1]
            i += 1
        return bytes(s), i + 1
    if c == b"{":
        j = buf.index(b"}", i)
        n = int(buf[i + 1:j])
        start = j + 3  # "}\r\n"
        return buf[start:start + n], start + n
    j = i
    while j < len(buf) and buf[j:j + 1] not in (b" ", b")", b"("):
        j += 1
    atom = buf[i:j]
    return (None if atom.upper() == b"NIL" else atom), j


def part_paths(bs, prefix=()):
    """Yield (path, is_message_rfc822) for every part under a BODYSTRUCTURE value."""
    if isinstance(bs[0], list):  # multipart: children then subtype
        n = 0
        for child in bs:
            if not isinstance(child, list):
                break
            n += 1
            yield from part_paths(child, prefix + (n,))
        return
    is_msg = (bs[0] or b"").upper() == b"MESSAGE" and (bs[1] or b"").upper() == b"RFC822"
    if prefix:
        yield prefix, is_msg
    else:
        yield (1,), False
    if is_msg and len(bs) > 8 and isinstance(bs[8], list):
        inner = bs[8]
        if isinstance(inner[0], list):
            yield from part_paths(inner, prefix)
        else:
            # non-multipart body of the inner message is its part 1
            yield from ((prefix + p[len(prefix):], m) for p, m in part_paths(inner, prefix + (1,)))


# --- the IMAP exchange -------------------------------------------------------------------------

class Client:
    def __init__(self, port):
        self.imap = imaplib.IMAP4("127.0.0.1", port)
        self.imap.login("sealpost", "pw")
        typ, _ = self.imap.select("INBOX", readonly=True)
        assert typ == "OK"
        self.tag = 0

    def fetch_raw(self, seq, item):
        """Send FETCH and return the exact bytes of the untagged FETCH response(s)."""
        self.tag += 1
        tag = b"t%d" % self.tag
        self.imap.send(tag + b" FETCH %d (%s)\r\n" % (seq, item))
        out = bytearray()
        while True:
            line = self.imap.readline()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line)
                return bytes(out)
            out += line
            # literal continuation
            while line.endswith(b"}\r\n"):
                n = int(line[line.rindex(b"{") + 1:-3])
                out += self.imap.read(n)
                line = self.imap.readline()
                out += line

    def fetch_item(self, seq, item, key):
        """Return the raw value bytes following `key ` in the FETCH response."""
        resp = self.fetch_raw(seq, item)
        k = resp.index(key + b" ") + len(key) + 1
        _, end = parse_value(resp, k)
        return resp[k:end]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "data", "dovecot"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and log")
    ap.add_argument("fixtures", nargs="*")
    args = ap.parse_args()
    fixtures = args.fixtures or sorted(glob.glob(os.path.join(HERE, "data", "messages", "*.eml")))
    os.makedirs(args.out, exist_ok=True)

    tmp = tempfile.mkdtemp(prefix="sealpost-dovecot-")
    os.chmod(tmp, 0o755)
    nobody = pwd.getpwnam("nobody")
    for d in ("run", "state", "home", "Maildir/cur", "Maildir/new", "Maildir/tmp"):
        os.makedirs(os.path.join(tmp, d))
    for i, f in enumerate(fixtures):
        # maildir name: <unique>:2, ; sorted order = sequence order
        shutil.copyfile(f, os.path.join(tmp, "Maildir", "cur", "%010d.M1P1.sealpost:2," % (i + 1)))
    for root, dirs, files in os.walk(tmp):
        for d in dirs + files:
            p = os.path.join(root, d)
            if not p.startswith(os.path.join(tmp, "run")) and not p.startswith(os.path.join(tmp, "state")):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    conf = os.path.join(tmp, "dovecot.conf")
    with open(conf, "w") as fh:
        fh.write(CONF.format(tmp=tmp, uid=nobody.pw_uid, gid=nobody.pw_gid, port=port))
    proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", conf])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)  # waiting for an external daemon to listen; no event to wait on
        c = Client(port)
        # Dovecot assigns UIDs in maildir filename order; fetch by sequence number.
        for i, f in enumerate(fixtures):
            seq = i + 1
            records = []
            for item in (b"ENVELOPE", b"BODY", b"BODYSTRUCTURE", b"RFC822.SIZE"):
                records.append((item, c.fetch_item(seq, item, item)))
            bs, _ = parse_value(dict(records)[b"BODYSTRUCTURE"], 0)
            sections = [b"", b"HEADER", b"TEXT", b"HEADER.FIELDS (FROM TO SUBJECT)",
                        b"HEADER.FIELDS.NOT (RECEIVED SUBJECT)"]
            paths = list(part_paths(bs))
            for p, is_msg in paths:
                s = b".".join(b"%d" % n for n in p)
                sections += [s, s + b".MIME"]
                if is_msg:
                    sections += [s + b".HEADER", s + b".TEXT",
                                 s + b".HEADER.FIELDS (FROM SUBJECT)"]
            top = max((p[0] for p, _ in paths), default=1)
            sections += [b"%d" % (top + 1), b"%d.MIME" % (top + 1), b"1.1.1.1.1.1.1.1.1.1.1"]
            for s in sections:
                key = b"BODY[" + s + b"]"
                val, _ = parse_value(c.fetch_item(seq, b"BODY.PEEK[" + s + b"]", key), 0)
                records.append((key, val))
            name = os.path.splitext(os.path.basename(f))[0]
            with open(os.path.join(args.out, name + ".txt"), "wb") as fh:
                for k, v in records:
                    if v is None:
                        fh.write(k + b" NIL\n")
                    else:
                        fh.write(k + b" %d\n" % len(v) + v + b"\n")
            print(name, len(records), "records")
        c.imap.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if args.keep:
            print("kept", tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
