#!/usr/bin/env python3
"""Binds another key's encryption subkey into a key, as its owner can without the other's
secrets: a subkey binding signature (RFC 4880 §5.2.1, type 0x18) over the other's public
subkey packet, made by the key's own primary key through its gpg-agent (PKSIGN).

Usage: graft_subkey.py HOME KEYGRIP OWN.gpg OTHER.gpg EXPIRE_SECS OUT.gpg

HOME and KEYGRIP: the GnuPG home holding the secret of the primary key of OWN.gpg (an ed25519
key, as `future-default` makes it), and that key's keygrip. OWN.gpg and OTHER.gpg: binary
exports of the two public keys. EXPIRE_SECS: 0 for a binding that never expires, else the
subkey's expiry after its creation (1: expired already). OUT.gpg: OWN.gpg with the other's
first subkey bound in, to import. Used by tests/outgoing.rs.
"""
import hashlib
import re
import struct
import subprocess
import sys
import time


def packets(data):
    """(tag, body, whole packet) for each packet of a key block (definite lengths only)."""
    at, out = 0, []
    while at < len(data):
        first = data[at]
        assert first & 0x80, "not a packet"
        if first & 0x40:
            tag, o = first & 0x3F, data[at + 1]
            if o < 192:
                length, header = o, 2
            elif o < 224:
                length, header = ((o - 192) << 8) + data[at + 2] + 192, 3
            elif o == 255:
                length, header = struct.unpack(">I", data[at + 2:at + 6])[0], 6
            else:
                raise ValueError("partial length in a key block")
        else:
            tag, kind = (first >> 2) & 0x0F, first & 3
            if kind == 0:
                length, header = data[at + 1], 2
            elif kind == 1:
                length, header = struct.unpack(">H", data[at + 1:at + 3])[0], 3
            elif kind == 2:
                length, header = struct.unpack(">I", data[at + 1:at + 5])[0], 5
            else:
                raise ValueError("indeterminate length in a key block")
        out.append((tag, data[at + header:at + header + length], data[at:at + header + length]))
        at += header + length
    return out


def new_packet(tag, body):
    n = len(body)
    if n < 192:
        header = bytes([0xC0 | tag, n])
    elif n < 8384:
        header = bytes([0xC0 | tag, ((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        header = bytes([0xC0 | tag, 255]) + struct.pack(">I", n)
    return header + body


def subpacket(kind, body):
    body = bytes([kind]) + body
    return bytes([len(body)]) + body


def mpi(value):
    value = value.lstrip(b"\x00")
    return struct.pack(">H", len(value) * 8 - (8 - value[0].bit_length())) + value


def main():
    home, grip, own_path, other_path, expire, out_path = sys.argv[1:7]
    own = packets(open(own_path, "rb").read())
    other = packets(open(other_path, "rb").read())
    primary = next(body for tag, body, _ in own if tag == 6)
    grafted = next(body for tag, body, _ in other if tag == 14)
    fingerprint = hashlib.sha1(b"\x99" + struct.pack(">H", len(primary)) + primary).digest()
    hashed = (
        subpacket(2, struct.pack(">I", int(time.time())))
        + subpacket(27, bytes([0x0C]))  # encrypt communications and storage
        + subpacket(33, b"\x04" + fingerprint)
    )
    if int(expire):
        hashed += subpacket(9, struct.pack(">I", int(expire)))
    # Version 4, subkey binding, EdDSA, SHA-256.
    signed = bytes([4, 0x18, 22, 8]) + struct.pack(">H", len(hashed)) + hashed
    digest = hashlib.sha256()
    digest.update(b"\x99" + struct.pack(">H", len(primary)) + primary)
    digest.update(b"\x99" + struct.pack(">H", len(grafted)) + grafted)
    digest.update(signed + b"\x04\xff" + struct.pack(">I", len(signed)))
    digest = digest.digest()
    answer = subprocess.run(
        ["gpg-connect-agent", "--homedir", home, f"SIGKEY {grip}",
         f"SETHASH --hash=sha256 {digest.hex()}", "PKSIGN", "/bye"],
        capture_output=True, check=True,
    ).stdout
    data = b"".join(line[2:] for line in answer.split(b"\n") if line.startswith(b"D "))
    data = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)

    def value(name):
        start = data.index(b"(1:" + name) + 3 + len(name)
        size = re.match(rb"(\d+):", data[start:])
        at = start + len(size.group(0))
        return data[at:at + int(size.group(1))]

    unhashed = subpacket(16, fingerprint[-8:])
    signature = (signed + struct.pack(">H", len(unhashed)) + unhashed + digest[:2]
                 + mpi(value(b"r")) + mpi(value(b"s")))
    block = b"".join(whole for _, _, whole in own)
    open(out_path, "wb").write(block + new_packet(14, grafted) + new_packet(2, signature))


if __name__ == "__main__":
    main()
