"""Helpers for the fault-injection suite (test_faults.py; not a test file).

- FakePop3 / FakeImap: programmable upstream servers on 127.0.0.1 for the
  faults a real server will not make on cue (a close in the middle of a
  literal or a multi-line answer, a stall, junk, absurd sizes). Each serves
  a small fixed mailbox; a fault is armed per command with arm().
- Others: a concurrent normal session (POP3 and IMAP through the proxy to
  Dovecot, compared byte for byte with Dovecot's own answer) that runs for
  the whole of a fault.
- NsMailmoat: a mailmoat started in a private mount namespace with its
  quarantine directory on a small tmpfs (disk full, read-only), which goes
  away with the process.
- sanitizer_reports(): the AddressSanitizer / LeakSanitizer / UBSan
  reports in a mailmoat log.
"""

import os
import re
import socket
import subprocess
import threading
import time

from itbase import mh

STALL_SECONDS = 120       # a stalled fake answers nothing for this long


def fake_message(tag, lines=60, width=40):
    """A plain message (CRLF) of about lines * width octets."""
    head = (b"From: Fake Server <fake@example.test>\r\nTo: x@example.test\r\n"
            b"Subject: %s\r\nMessage-ID: <%s@fake.example>\r\n\r\n" % (tag, tag))
    return head + b"".join((b"%s line %05d " % (tag, i)).ljust(width, b"x") + b"\r\n"
                           for i in range(lines))


# ---------------------------------------------------------------------------
# scripted upstreams

class _FakeServer:
    """Accepts connections on a free loopback port; _serve(conn) per
    connection in its own thread. arm(key, mode, count=1) makes the next
    count commands matching key misbehave as mode (see the subclasses);
    seen records every command line received."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((mh.HOST, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.conns = []
        self.faults = {}
        self.seen = []
        self.fired = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, key, mode, count=1):
        with self.lock:
            self.faults[key] = [mode, count]

    def disarm(self):
        with self.lock:
            self.faults.clear()

    def _fault(self, key):
        with self.lock:
            f = self.faults.get(key)
            if not f or f[1] <= 0:
                return None
            f[1] -= 1
            self.fired.append((key, f[0]))
            return f[0]

    def close(self):
        self.stop_ev.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            conn.settimeout(STALL_SECONDS + 60)
            self._serve(conn, conn.makefile("rb"))
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _greet(self, conn, status, greeting):
        """Sends the greeting, or its armed fault (silent, junk, overlong).
        False when the session ends there (stalled)."""
        g = self._fault("greeting")
        if g == "silent":
            self._stall()
            return False
        if g == "junk":
            conn.sendall(b"\x00\xff\x13junk\x00\r\r\n" * 64)
        elif g == "overlong":
            conn.sendall(status + b" " + b"G" * (4 << 20))
            self._stall()
            return False
        conn.sendall(greeting)
        return True

    def _stall(self):
        self.stop_ev.wait(STALL_SECONDS)

    @staticmethod
    def _drop(conn):
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()

    def _flood(self, conn, unit, limit=12 << 20):
        """Sends unit over and over (up to limit octets) until the peer
        stops taking it: an answer without end."""
        sent = 0
        conn.settimeout(20)
        try:
            while sent < limit and not self.stop_ev.is_set():
                conn.sendall(unit)
                sent += len(unit)
        except OSError:
            pass
        return sent


class FakePop3(_FakeServer):
    """A POP3 server (RFC 1939) with messages 1..n (self.msgs). Faults are
    keyed by the command's verb and argument ("RETR 2", "LIST", "greeting").
    Modes:
      drop_mid       status line and half of the multi-line body, then close
      stall_mid      status line and half of the body, then nothing
      drop_status    the status line only, then close
      silent         no answer at all
      overlong       a 4 MiB status line without an end
      junk           binary junk with NULs and bare CRs instead of an answer
      nul_body       the message with NULs and bare CRs inside, terminated
      long_line      the message with one 2 MiB line inside, terminated
      no_end         the body without the terminating dot line, then close
      endless        a multi-line answer of 12 MiB without its end, then close
      bad_status     "?? what" instead of +OK/-ERR
    """

    def __init__(self, msgs):
        self.msgs = list(msgs)
        super().__init__()

    def _body(self, conn, m, mode):
        half = m[:len(m) // 2]
        if mode == "drop_mid":
            conn.sendall(half)
            self._drop(conn)
            return False
        if mode == "stall_mid":
            conn.sendall(half)
            self._stall()
            return False
        if mode == "no_end":
            conn.sendall(m)
            self._drop(conn)
            return False
        if mode == "nul_body":
            conn.sendall(m + b"binary\x00junk\rhere\x00\x00\xff\xfe\r\n.\r\n")
            return True
        if mode == "long_line":
            conn.sendall(m + b"L" * (2 << 20) + b"\r\n.\r\n")
            return True
        if mode == "endless":
            self._flood(conn, b"endless line of an answer that never ends 0123456789\r\n")
            self._drop(conn)
            return False
        conn.sendall(m + b".\r\n")
        return True

    def _serve(self, conn, f):
        if not self._greet(conn, b"+OK", b"+OK fake POP3 ready <1896.697170952@fake.example>\r\n"):
            return
        while not self.stop_ev.is_set():
            line = f.readline(1 << 16)
            if not line:
                return
            self.seen.append(line)
            w = line.strip().split()
            verb = w[0].upper().decode("latin-1") if w else ""
            arg = int(w[1]) if len(w) > 1 and w[1].isdigit() else None
            key = verb if arg is None else "%s %d" % (verb, arg)
            mode = self._fault(key)
            if mode == "silent":
                self._stall()
                return
            if mode == "overlong":
                conn.sendall(b"+OK " + b"S" * (4 << 20))
                self._stall()
                return
            if mode == "junk":
                conn.sendall(b"\x00\xff\xfe\x00junk\rjunk\x00" * 4096 + b"\r\n")
                continue
            if mode == "bad_status":
                conn.sendall(b"?? what\r\n")
                continue
            if mode == "drop_status":
                conn.sendall(b"+OK\r\n")
                self._drop(conn)
                return
            if verb == "CAPA":
                conn.sendall(b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nPIPELINING\r\n.\r\n")
            elif verb in ("USER", "PASS", "APOP", "NOOP", "RSET", "DELE"):
                conn.sendall(b"+OK\r\n")
            elif verb == "STAT":
                conn.sendall(b"+OK %d %d\r\n" % (len(self.msgs), sum(len(m) for m in self.msgs)))
            elif verb in ("LIST", "UIDL") and arg is None:
                body = b"".join(b"%d %s\r\n" % (i, (b"%d" % len(m)) if verb == "LIST"
                                                 else b"fake-%d" % i)
                                for i, m in enumerate(self.msgs, 1))
                conn.sendall(b"+OK\r\n")
                if not self._body(conn, body, mode):
                    return
            elif verb in ("LIST", "UIDL") and arg is not None and 1 <= arg <= len(self.msgs):
                v = (b"%d" % len(self.msgs[arg - 1])) if verb == "LIST" else b"fake-%d" % arg
                conn.sendall(b"+OK %d %s\r\n" % (arg, v))
            elif verb in ("RETR", "TOP") and arg is not None and 1 <= arg <= len(self.msgs):
                m = self.msgs[arg - 1]
                conn.sendall(b"+OK %d octets\r\n" % len(m))
                if not self._body(conn, m, mode):
                    return
            elif verb == "QUIT":
                conn.sendall(b"+OK bye\r\n")
                return
            else:
                conn.sendall(b"-ERR unknown command\r\n")


_IMAP_CMD = re.compile(rb"^(\S+) (UID )?(\S+)(?: (.*))?$", re.I | re.S)
_LIT_END = re.compile(rb"\{(\d+)\+?\}$")


class FakeImap(_FakeServer):
    """An IMAP4rev1 server with one mailbox INBOX holding self.msgs (UID =
    sequence number). Faults are keyed by "fetch UID" (any FETCH that
    returns the content of that message, the proxy's own pre-scan
    included), "select", "noop", "login" and "greeting". Modes:
      drop_mid     the literal's size and half of its bytes, then close
      stall_mid    the literal's size and half of its bytes, then nothing
      silent       no answer at all
      short_lit    a literal that announces 10 MiB, 1000 octets, then close
      huge_lit     a literal of {99999999999999999999}
      big_lit      a literal of 2^40 octets announced, a flood of bytes
      junk         binary junk with NULs instead of an answer (then the answer)
      overlong     an untagged line of 4 MiB without an end
      bad_tag      the tagged answer under an unknown tag, then silence
      bogus_fetch  "* 1 FETCH (UID 1 BODY[] {5}\\r\\nab" + ")))))" nonsense
    """

    def __init__(self, msgs):
        self.msgs = list(msgs)
        super().__init__()

    def _lit(self, conn, seq, m, mode, tag):
        head = b"* %d FETCH (UID %d BODY[] " % (seq, seq)
        if mode == "drop_mid":
            conn.sendall(head + b"{%d}\r\n" % len(m) + m[:len(m) // 2])
            self._drop(conn)
            return False
        if mode == "stall_mid":
            conn.sendall(head + b"{%d}\r\n" % len(m) + m[:len(m) // 2])
            self._stall()
            return False
        if mode == "short_lit":
            conn.sendall(head + b"{10485760}\r\n" + m[:1000])
            self._drop(conn)
            return False
        if mode == "huge_lit":
            conn.sendall(head + b"{99999999999999999999}\r\n" + m)
            self._stall()
            return False
        if mode == "big_lit":
            conn.sendall(head + b"{1099511627776}\r\n")
            self._flood(conn, b"x" * 65536)
            self._drop(conn)
            return False
        if mode == "bogus_fetch":
            conn.sendall(head + b"{5}\r\nab" + b")))))((( NIL {3}\r\n\r\n" + b"\r\n")
            conn.sendall(tag + b" OK done\r\n")
            return True
        conn.sendall(head + b"{%d}\r\n" % len(m) + m + b")\r\n")
        return True

    @staticmethod
    def _uids(setspec, n):
        out = []
        for part in setspec.split(b","):
            a, _, b = part.partition(b":")
            lo = n if a == b"*" else int(a)
            hi = lo if not b else (n if b == b"*" else int(b))
            lo, hi = min(lo, hi), max(lo, hi)
            out += [u for u in range(lo, hi + 1) if 1 <= u <= n]
        return out

    def _serve(self, conn, f):
        if not self._greet(conn, b"* OK",
                           b"* OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS] fake IMAP ready\r\n"):
            return
        while not self.stop_ev.is_set():
            line = f.readline(1 << 16)
            if not line:
                return
            # a literal in a command (LOGIN {n}): read its bytes too
            while True:
                m = _LIT_END.search(line.rstrip(b"\r\n"))
                if not m:
                    break
                if not line.rstrip(b"\r\n").endswith(b"+}"):
                    conn.sendall(b"+ go ahead\r\n")
                line += f.read(int(m.group(1)))
                line += f.readline(1 << 16)
            self.seen.append(line)
            m = _IMAP_CMD.match(line.rstrip(b"\r\n"))
            if not m:
                conn.sendall(b"* BAD what\r\n")
                continue
            tag, uid, verb, args = m.group(1), m.group(2), m.group(3).upper(), m.group(4) or b""
            if verb in (b"LOGIN", b"SELECT", b"EXAMINE", b"NOOP"):
                mode = self._fault(verb.decode().lower() if verb != b"EXAMINE" else "select")
                if mode == "silent":
                    self._stall()
                    return
                if mode == "junk":
                    conn.sendall(b"* \x00\xff\xfe\x00junk\rjunk\x00" * 4096 + b"\r\n")
                if mode == "overlong":
                    conn.sendall(b"* OK " + b"U" * (4 << 20))
                    self._stall()
                    return
                if mode == "bad_tag":
                    conn.sendall(b"zz999 OK not yours\r\n")
                    self._stall()
                    return
            if verb == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS\r\n%s OK done\r\n" % tag)
            elif verb == b"LOGIN":
                conn.sendall(b"%s OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS] logged in\r\n" % tag)
            elif verb in (b"SELECT", b"EXAMINE"):
                n = len(self.msgs)
                conn.sendall(b"* FLAGS (\\Seen \\Deleted)\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                             b"* OK [UIDVALIDITY 1234] ok\r\n* OK [UIDNEXT %d] ok\r\n"
                             b"%s OK [%s] done\r\n"
                             % (n, n + 1, tag, b"READ-ONLY" if verb == b"EXAMINE" else b"READ-WRITE"))
            elif verb == b"FETCH":
                sp = args.split(b" ", 1)
                items = sp[1].upper() if len(sp) > 1 else b""
                content = any(k in items for k in (b"BODY[", b"BODY.PEEK[", b"RFC822", b"BINARY"))
                ok = True
                for u in self._uids(sp[0], len(self.msgs)):
                    mm = self.msgs[u - 1]
                    if content:
                        mode = self._fault("fetch %d" % u)
                        if mode == "silent":
                            self._stall()
                            return
                        if mode == "junk":
                            conn.sendall(b"* \x00\xff\xfe\x00junk\rjunk\x00" * 4096 + b"\r\n")
                        if mode == "overlong":
                            conn.sendall(b"* %d FETCH (UID %d X " % (u, u) + b"U" * (4 << 20))
                            self._stall()
                            return
                        if not self._lit(conn, u, mm, mode, tag):
                            return
                        if mode == "bogus_fetch":
                            ok = False
                            break
                    else:
                        conn.sendall(b"* %d FETCH (UID %d RFC822.SIZE %d FLAGS ())\r\n"
                                     % (u, u, len(mm)))
                if ok:
                    conn.sendall(b"%s OK done\r\n" % tag)
            elif verb == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n%s OK done\r\n" % tag)
                return
            elif verb in (b"NOOP", b"CHECK", b"ID", b"ENABLE"):
                conn.sendall(b"%s OK done\r\n" % tag)
            else:
                conn.sendall(b"%s BAD unknown command\r\n" % tag)


# ---------------------------------------------------------------------------
# the other sessions

class Others:
    """A normal POP3 and a normal IMAP session, through the proxy's
    Dovecot-facing listeners (pop3_port, imap_port), run over and over in a
    thread while a fault happens: every one must complete and match
    Dovecot's own answer byte for byte (ref_pop3: the RETR list of
    mh.fetch_all_raw; ref_imap: {uid: message}). A context manager: its
    exit waits for min_rounds whole rounds and raises AssertionError when
    one failed."""

    def __init__(self, pop3_port, imap_port, user, password, ref_pop3, ref_imap,
                 min_rounds=1):
        self.args = (pop3_port, imap_port, user, password)
        self.ref_pop3, self.ref_imap = ref_pop3, ref_imap
        self.min_rounds = min_rounds
        self.stop_ev = threading.Event()
        self.rounds = 0
        self.errors = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        # finish at least min_rounds whole rounds, then the one running
        deadline = time.monotonic() + 180
        while self.rounds < self.min_rounds and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop_ev.set()
        self.thread.join(180)
        if exc[0] is None:
            if self.errors:
                raise AssertionError("a concurrent normal session failed during the fault: %s"
                                     % self.errors[0])
            if self.rounds < self.min_rounds:
                raise AssertionError("no concurrent normal session completed")
        return False

    def _round(self):
        pop3_port, imap_port, user, password = self.args
        if pop3_port:
            got = mh.fetch_all_raw(pop3_port, user, password)
            if got["RETR"] != self.ref_pop3:
                raise AssertionError("POP3 session through the proxy differs from Dovecot's")
        if imap_port:
            with mh.RawImap(imap_port, timeout=60) as c:
                c.login(user, password)
                st, _ = c.command("EXAMINE INBOX")
                if mh.imap_status(st) != "OK":
                    raise AssertionError("EXAMINE: %r" % st)
                st, unt = c.command("UID FETCH 1:* (UID BODY.PEEK[])")
                if mh.imap_status(st) != "OK":
                    raise AssertionError("UID FETCH: %r" % st)
                got = {}
                for r in unt:
                    p = mh.parse_fetch(r)
                    if p and "BODY[]" in p[1]:
                        got[int(p[1]["UID"])] = p[1]["BODY[]"]
                if got != self.ref_imap:
                    raise AssertionError("IMAP session through the proxy differs from Dovecot's")
                c.command("LOGOUT")

    def _loop(self):
        while not self.stop_ev.is_set():
            try:
                self._round()
            except Exception as ex:  # reported at exit
                self.errors.append(repr(ex))
                return
            self.rounds += 1


# ---------------------------------------------------------------------------
# sanitizers

_SAN = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
                  r"SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer)")


def sanitizer_reports(text):
    """The sanitizer report lines in a log text ([] when there are none)."""
    return [l for l in text.splitlines() if _SAN.search(l)]


def cpu_seconds(pid):
    """User + system CPU time of a process so far (seconds)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


# ---------------------------------------------------------------------------
# a quarantine on a small tmpfs

def mount_namespaces_work():
    """Whether unshare -m and a tmpfs mount work here (root, no seccomp)."""
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class NsMailmoat(mh.Mailmoat):
    """A mailmoat in its own mount namespace whose quarantine directory is a
    tmpfs of tmpfs_size (created before the daemon starts, gone with it).
    The test sees the directory as self.qpath (through /proc/PID/root) and
    changes the mount with ns_run()."""

    def __init__(self, workdir, upstreams, tmpfs_size="4m", **cfg):
        self.tmpfs_size = tmpfs_size
        super().__init__(workdir, upstreams, **cfg)
        os.makedirs(self.quarantine_dir, exist_ok=True)

    def start(self, timeout=30.0, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self._log = open(self.log_path, "ab")
        script = ('mount -t tmpfs -o size=%s,mode=0700 mailmoat-quarantine "$1" && '
                  'shift && exec "$@"' % self.tmpfs_size)
        # under MAILMOAT_WRAPPER (valgrind) the daemon runs wrapped here too
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
             self.quarantine_dir] + self.wrapper + [self.binary, "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=e)
        if self.wrapper:
            timeout *= mh.WRAPPER_SLOWDOWN
        try:
            for p in self.ports:
                mh.wait_port(p, timeout, self.proc, what="mailmoat")
        except RuntimeError as ex:
            self.stop()
            raise RuntimeError("%s\n--- mailmoat log ---\n%s" % (ex, self.log_text()[-4000:]))
        return self

    @property
    def qpath(self):
        """The quarantine directory as the daemon sees it."""
        return "/proc/%d/root%s" % (self.proc.pid, self.quarantine_dir)

    def ns_run(self, *cmd):
        """Runs cmd in the daemon's mount namespace (nsenter)."""
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--"] + list(cmd),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)

    def fill(self):
        """Fills the tmpfs: returns the filler's path."""
        path = os.path.join(self.qpath, "filler")
        with open(path, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        return path

    def quarantine(self):
        out = []
        for fn in sorted(os.listdir(self.qpath)):
            if fn.endswith(".json"):
                qid = fn[:-5]
                out.append((qid, os.path.join(self.qpath, qid + ".eml"),
                            os.path.join(self.qpath, fn), None))
        return out
