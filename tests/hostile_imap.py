#!/usr/bin/python3
"""An upstream IMAP server that misbehaves, for the sync tests: what Dovecot cannot be made
to do. Plain text on 127.0.0.1 (the sync allows tls = "none" to loopback), any login.

    /usr/bin/python3 tests/hostile_imap.py SCENARIO

stdout carries one line, `READY <port>`; the server stops when stdin closes. The line
`SERVE` on stdin ends a refusal (refuse2, break2); `ADD` puts a message at the next UID;
`DROP <uid>` expunges one.

INBOX holds three small messages at UIDs 1, 2 and 3, except:

    uidmax     the third is at UID 4294967295, the highest UID there can be
    hugesize   RFC822.SIZE says 4294967295 for each; the FETCH of UID 2 sends 10 bytes of
               its literal and then nothing
    liesize    RFC822.SIZE says 100 for each; UID 2 is 40 MB
    refuse2    a FETCH of UID 2 leaves it out and is answered NO, until SERVE
    refuse2all the same, and UID SEARCH answers every UID, whatever was asked
    break2     a FETCH of UID 2 sends 10 bytes of it and closes the connection, until SERVE
    stray      a FETCH of sizes also answers for UID 1000, which the mailbox does not hold
    weird      EXAMINE answers an untagged response of no known kind, with a literal, and a
               FETCH of UID 2 another one before the message
"""

import re
import socket
import sys
import threading

SCENARIO = sys.argv[1]
REFUSING = threading.Event()
if SCENARIO.startswith("refuse2") or SCENARIO == "break2":
    REFUSING.set()
LAST = 4294967295 if SCENARIO == "uidmax" else 3
BIG = 40 * 1024 * 1024


def message(uid):
    text = (
        f"From: a@example.org\r\nTo: bob@example.org\r\nSubject: msg {uid}\r\n"
        f"Message-ID: <m{uid}@example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
        f"body {uid}\r\n"
    ).encode()
    if SCENARIO == "liesize" and uid == 2:
        text += b"x" * BIG
    return text


MESSAGES = {uid: message(uid) for uid in (1, 2, LAST)}


def uids_in(text):
    """The UIDs of MESSAGES a sequence set names."""
    out = []
    last = max(MESSAGES)
    for part in text.split(","):
        low, _, high = part.partition(":")
        low = int(low)
        high = low if not high else (last if high == "*" else int(high))
        low, high = min(low, high), max(low, high)
        out += [u for u in sorted(MESSAGES) if low <= u <= high]
    return sorted(set(out))


def serve(conn):
    lines = conn.makefile("rb")
    conn.sendall(b"* OK [CAPABILITY IMAP4rev1] hostile\r\n")
    while True:
        line = lines.readline()
        if not line:
            return
        words = line.decode(errors="replace").rstrip("\r\n").split(" ", 2)
        tag, command = words[0], (words[1].upper() if len(words) > 1 else "")
        rest = words[2] if len(words) > 2 else ""
        if command == "UID":
            sub, _, rest = rest.partition(" ")
            command = "UID " + sub.upper()
        if command == "CAPABILITY":
            conn.sendall(b"* CAPABILITY IMAP4rev1\r\n" + tag.encode() + b" OK done\r\n")
        elif command in ("LOGIN", "NOOP", "LOGOUT", "CLOSE", "UNSELECT"):
            conn.sendall(tag.encode() + b" OK done\r\n")
            if command == "LOGOUT":
                return
        elif command == "LIST":
            conn.sendall(b'* LIST () "/" "INBOX"\r\n' + tag.encode() + b" OK done\r\n")
        elif command in ("EXAMINE", "SELECT"):
            if "INBOX" not in rest.upper():
                conn.sendall(tag.encode() + b" NO [NONEXISTENT] no such mailbox\r\n")
                continue
            uidnext = min(max(MESSAGES) + 1, 4294967295)
            weird = "* XWEIRD (foo bar) {3}\r\nabc\r\n" if SCENARIO == "weird" else ""
            head = (
                f"* {len(MESSAGES)} EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n{weird}"
                f"* OK [UIDNEXT {uidnext}] x\r\n{tag} OK [READ-ONLY] done\r\n"
            )
            conn.sendall(head.encode())
        elif command == "UID SEARCH":
            wanted = re.search(r"UID (\S+)", rest)
            found = uids_in(wanted.group(1)) if wanted else sorted(MESSAGES)
            if SCENARIO == "refuse2all":
                found = sorted(MESSAGES)
            found = " ".join(str(u) for u in found)
            conn.sendall(f"* SEARCH {found}\r\n{tag} OK done\r\n".encode())
        elif command == "UID FETCH":
            fetch(conn, tag, rest)
        else:
            conn.sendall(tag.encode() + b" BAD not here\r\n")


def fetch(conn, tag, rest):
    uid_set, _, items = rest.partition(" ")
    uids = uids_in(uid_set)
    for seq, uid in enumerate(uids, 1):
        body = MESSAGES[uid]
        if "BODY" not in items.upper():
            size = {"hugesize": 4294967295, "liesize": 100}.get(SCENARIO, len(body))
            conn.sendall(f"* {seq} FETCH (UID {uid} RFC822.SIZE {size})\r\n".encode())
            if SCENARIO == "stray" and seq == len(uids):
                conn.sendall(f"* {seq} FETCH (UID 1000 RFC822.SIZE 100)\r\n".encode())
            continue
        head = (
            f'* {seq} FETCH (UID {uid} FLAGS () INTERNALDATE "01-Jan-2024 00:00:00 +0000" '
            f"BODY[] {{{len(body)}}}\r\n"
        ).encode()
        if REFUSING.is_set() and uid == 2 and SCENARIO == "break2":
            conn.sendall(head + body[:10])
            conn.shutdown(socket.SHUT_RDWR)
            return
        if REFUSING.is_set() and uid == 2:
            continue
        if SCENARIO == "weird" and uid == 2:
            conn.sendall(f"* {seq} XNONSENSE stuff\r\n".encode())
        if SCENARIO == "hugesize" and uid == 2:
            conn.sendall(head + body[:10])
            threading.Event().wait()
        conn.sendall(head + body + b")\r\n")
    if REFUSING.is_set() and 2 in uids and "BODY" in items.upper():
        conn.sendall(tag.encode() + b" NO [UNAVAILABLE] message 2 cannot be read now\r\n")
        return
    conn.sendall(tag.encode() + b" OK done\r\n")


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    print(f"READY {listener.getsockname()[1]}", flush=True)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "SERVE":
            REFUSING.clear()
        elif line.strip() == "ADD":
            uid = max(MESSAGES) + 1
            MESSAGES[uid] = message(uid)
        elif line.startswith("DROP "):
            MESSAGES.pop(int(line.split()[1]), None)


if __name__ == "__main__":
    main()
