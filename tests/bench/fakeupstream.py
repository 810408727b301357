#!/usr/bin/env python3
"""A scripted IMAP and POP3 upstream for the concurrency benchmark.

One asyncio process that holds tens of thousands of sessions cheaply (a real
Dovecot forks a process per IMAP session by default), so that what the
benchmark measures is the proxy's memory, not the upstream's. Loopback only.

  python3 fakeupstream.py --imap-port P --pop3-port Q [--tls CERT KEY]
                          [--message NAME=SIZE ...] [--ready FILE]

IMAP (RFC 3501 subset): CAPABILITY, LOGIN, SELECT/EXAMINE (one message),
NOOP, IDLE (RFC 2177) until DONE, LOGOUT. Anything else: BAD.
POP3 (RFC 1939 subset): CAPA, USER, PASS, STAT, LIST, UIDL, RETR, NOOP,
RSET, QUIT. Every password is accepted. A user's mailbox is the message
named after the user's prefix up to the first '-' or digit ("small7" ->
"small"), built once: text/plain, CRLF lines, exactly SIZE octets (no line
starts with a dot), COUNT times with distinct UIDLs. Big responses are written in 256 KiB pieces with
flow control, so the process never holds more than one copy.

--tls: implicit TLS (TLS from the first byte) on both ports.
--ready FILE: written once both ports listen (the parent waits for it).
"""
import argparse
import asyncio
import os
import resource
import signal
import ssl
import sys

CHUNK = 256 * 1024


def build_message(name, size):
    """A plain-text message of exactly size octets (CRLF lines), as it
    appears inside a RETR response (dot-stuffed; no line starts with '.'
    anyway) followed by the terminating dot line."""
    head = ("From: Bench Sender <sender@example.test>\r\n"
            "To: %s@example.test\r\n"
            "Subject: concurrency bench %s\r\n"
            "Message-ID: <%s.%d@bench.example.test>\r\n"
            "Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n" % (name, name, name, size)
            ).encode()
    line = b"The quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet.\r\n"
    body_len = max(0, size - len(head))
    reps = body_len // len(line) + 1
    body = (line * reps)[:body_len]
    if body_len >= 2:
        body = body[:-2] + b"\r\n"
    msg = head + body
    return msg


class Mailboxes:
    """specs: {name: (size, count)}; a mailbox is count copies of one
    message (each its own UIDL, so a proxy scans every one)."""

    def __init__(self, specs):
        self.msgs = {}
        for name, (size, count) in specs.items():
            raw = build_message(name, size)
            self.msgs[name] = (raw, memoryview(raw + b".\r\n"), count)

    def for_user(self, user):
        key = user.split("-")[0].rstrip("0123456789")
        return self.msgs.get(key) or self.msgs.get("default")


async def write_big(writer, mv):
    for off in range(0, len(mv), CHUNK):
        writer.write(mv[off:off + CHUNK])
        await writer.drain()


def msgno(arg, count):
    """The message number arg names (1..count), or 0."""
    return int(arg) if arg.isdigit() and 1 <= int(arg) <= count else 0


async def pop3_session(reader, writer, boxes):
    user = None
    msg = None
    try:
        writer.write(b"+OK fake POP3 ready\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            parts = line.decode("latin-1").strip().split()
            verb = parts[0].upper() if parts else ""
            if verb == "CAPA":
                writer.write(b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n")
            elif verb == "USER" and len(parts) > 1:
                user = parts[1]
                writer.write(b"+OK\r\n")
            elif verb == "PASS" and user is not None:
                msg = boxes.for_user(user)
                writer.write(b"+OK logged in\r\n")
            elif msg is None and verb != "QUIT":
                writer.write(b"-ERR log in first\r\n")
            elif verb == "STAT":
                writer.write(b"+OK %d %d\r\n" % (msg[2], msg[2] * len(msg[0])))
            elif verb in ("LIST", "UIDL"):
                size = len(msg[0])
                what = (lambda i: b"%d %d" % (i, size)) if verb == "LIST" else \
                    (lambda i: b"%d fake-%d-%d" % (i, size, i))
                if len(parts) > 1:
                    i = msgno(parts[1], msg[2])
                    writer.write(b"+OK %s\r\n" % what(i) if i else b"-ERR no such message\r\n")
                else:
                    writer.write(b"+OK %d messages\r\n" % msg[2] + b"".join(
                        what(i) + b"\r\n" for i in range(1, msg[2] + 1)) + b".\r\n")
            elif verb == "RETR" and len(parts) > 1 and msgno(parts[1], msg[2]):
                writer.write(b"+OK %d octets\r\n" % len(msg[0]))
                await write_big(writer, msg[1])
            elif verb in ("NOOP", "RSET"):
                writer.write(b"+OK\r\n")
            elif verb == "QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"-ERR unknown command\r\n")
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def imap_session(reader, writer, boxes):
    try:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] fake IMAP ready\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            parts = line.decode("latin-1").strip().split()
            if len(parts) < 2:
                writer.write(b"* BAD no tag\r\n")
                await writer.drain()
                continue
            tag, verb = parts[0].encode(), parts[1].upper()
            if verb == "CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\n%s OK done\r\n" % tag)
            elif verb == "LOGIN":
                writer.write(b"%s OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] logged in\r\n" % tag)
            elif verb in ("SELECT", "EXAMINE"):
                writer.write(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                             b"* 1 EXISTS\r\n* 0 RECENT\r\n"
                             b"* OK [UIDVALIDITY 1700000000] UIDs valid\r\n"
                             b"* OK [UIDNEXT 2] next\r\n"
                             b"%s OK [READ-WRITE] selected\r\n" % tag)
            elif verb == "NOOP":
                writer.write(b"%s OK done\r\n" % tag)
            elif verb == "IDLE":
                writer.write(b"+ idling\r\n")
                await writer.drain()
                done = await reader.readline()
                if not done:
                    break
                writer.write(b"%s OK IDLE terminated\r\n" % tag)
            elif verb == "LOGOUT":
                writer.write(b"* BYE logging out\r\n%s OK done\r\n" % tag)
                await writer.drain()
                break
            else:
                writer.write(b"%s BAD unsupported\r\n" % tag)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 65536)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main_async(args):
    specs = {"default": (10240, 1)}
    for m in args.message:
        name, size = m.split("=", 1)
        size, _, count = size.partition("x")
        specs[name] = (int(size), int(count or 1))
    boxes = Mailboxes(specs)
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
    srv_i = await asyncio.start_server(lambda r, w: imap_session(r, w, boxes), "127.0.0.1",
                                       args.imap_port, ssl=ctx, backlog=4096,
                                       ssl_handshake_timeout=120 if ctx else None)
    srv_p = await asyncio.start_server(lambda r, w: pop3_session(r, w, boxes), "127.0.0.1",
                                       args.pop3_port, ssl=ctx, backlog=4096,
                                       ssl_handshake_timeout=120 if ctx else None)
    if args.ready:
        with open(args.ready + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(args.ready + ".tmp", args.ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    srv_i.close()
    srv_p.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imap-port", type=int, required=True)
    ap.add_argument("--pop3-port", type=int, required=True)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--message", action="append", default=[],
                    help="NAME=SIZE[xCOUNT]: the mailbox of users named NAME...")
    ap.add_argument("--ready")
    args = ap.parse_args()
    raise_nofile()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
