#!/usr/bin/env python3
"""Load soak: mixed POP3 and IMAP clients through one mailmoat for a while.

  soak.py [--seconds N]        (default: $MAILMOAT_SOAK_SECONDS, else 300)

Starts its own Dovecot (loopback, free ports, users soak1..soakN) and one
mailmoat with a POP3 and an IMAP listener in front of it (the binary from
$MAILMOAT_BIN: run it with a sanitizer build, as ctest's it_soak does), then
for the given time runs, with moderate CPU use (2-core CI):

  - POP3 clients (raw, so every byte is kept): LIST/UIDL, RETR all, some
    TOP, again in later sessions (re-downloads), and sessions that DELE a
    share of the messages and QUIT (the mailboxes stay near a target size);
  - IMAP clients (imaplib): full syncs `UID FETCH 1:* (UID RFC822.SIZE
    BODY.PEEK[])`, Thunderbird-style 64 KiB partial fetches, IDLE until a
    new message arrives, APPEND of clean and of malicious messages, STORE
    \\Deleted + EXPUNGE;
  - now and then curl (POP3 and IMAP URLs) as a third client;
  - a delivery thread that writes new messages into the maildirs all the
    time (clean ones of mixed sizes: 1 KiB .. 6 MiB, Japanese, dot lines,
    HTML; about one in six malicious: EICAR as an attachment, inline, in a
    zip, in a forwarded message, under ISO-2022-JP headers, clam.zip from
    clamav-testfiles).

Asserts (any failure: exit status 1, the failures listed):
  - zero protocol errors: every response is what the server would give
    directly. Each POP3 session's UIDL/LIST is compared with a direct
    Dovecot session opened right after it (same messages, same sizes; only
    new deliveries may follow), each IMAP session's UID list likewise.
    Every clean message arrives byte-identical to what was delivered; every
    malicious one is replaced by the notice (marked Subject, the original's
    Message-ID, an X-Mailmoat-Quarantine-Id; POP3: padded to the LIST size);
    a malicious APPEND is refused with NO and not stored.
  - every malicious message that went through the proxy is in the
    quarantine exactly once per (message, user, upstream): the ID.json files
    are counted by sha256; each notice names that one entry, and the same
    message always gets the same id, whichever session fetched it.
  - RSS flat: mailmoat's VmRSS is sampled every few seconds; the median of
    the last quarter of the run (after a warm-up) may exceed the median of
    the first quarter by at most RSS_SLACK_FRACTION plus RSS_SLACK_KIB (see
    below for why that much).
  - no AddressSanitizer / UndefinedBehaviorSanitizer / LeakSanitizer report
    in mailmoat's output, and exit status 0 on SIGTERM at the end.
Prints a summary (sessions, messages, bytes, quarantined, RSS samples).
"""

import argparse
import collections
import hashlib
import imaplib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("MAILMOAT_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "deploy", "lib"))

import mmharness as mh  # noqa: E402

imaplib._MAXLINE = 1 << 20
imaplib.Commands.setdefault("IDLE", ("AUTH", "SELECTED"))

NOTICE_MARK = "[mailmoat:"
NOTICE_PAD_ABOVE = 8192      # originals bigger than any notice: padded to equal
USERS = {"soak%d" % i: "Soak-pw-%d!x" % i for i in range(1, 5)}
TARGET_MAILBOX = 24          # messages per user the deleting sessions keep near
# RSS: the last-quarter median may exceed the first-quarter median (both
# after the warm-up) by this fraction plus this many KiB. Why that much:
# the sampled figure is noisy by design of the load - at any moment 0 to 8
# sessions hold a message in memory (spool.memory_limit 4 MiB each, bigger
# ones spill to a file), so two samples differ by up to ~32 MiB with no leak
# at all; the medians of whole quarters damp that, but glibc's and ASan's
# allocators keep freed chunks and grow their arenas in steps of several
# MiB, and ASan's own quarantine (capped below at 64 MiB, filled during the
# warm-up) recycles in bursts. A leak of one message copy or one session
# struct per session (hundreds of sessions a minute) grows far past 10% +
# 24 MiB in a 5-minute run, and a 30-minute run leaves six times the room
# to see it.
RSS_SLACK_FRACTION = 0.10
RSS_SLACK_KIB = 24 << 10
RSS_PERIOD = 3.0
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer",
                   "WARNING: AddressSanitizer")


def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def sha(data):
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------ the mail ----

def _random_text(rnd, size):
    words = ["mail", "proxy", "invoice", "meeting", "report", "quarterly", "lunch", "budget",
             "release", "schedule", "please", "review", "attached", "thanks", "regards"]
    out, n = [], 0
    while n < size:
        line = " ".join(rnd.choice(words) for _ in range(rnd.randint(6, 14)))
        if rnd.random() < 0.05:
            line = "." + line            # dot-stuffing on the wire
        out.append(line)
        n += len(line) + 1
    return "\n".join(out) + "\n"


def msg_sized(rnd, to, n, size):
    """A clean multipart message of about size bytes: text plus a random
    binary attachment in base64 (or text only when small)."""
    b = "=_soak_%d_%d" % (n, rnd.randint(0, 1 << 30))
    head = mh._headers("Soak Sender <soak@example.test>", to, "Soak %d (%d bytes)" % (n, size),
                       mh._msgid("soak"), n, ['Content-Type: multipart/mixed; boundary="%s"' % b])
    text = _random_text(rnd, min(size, 4000))
    body = "\n--%s\nContent-Type: text/plain; charset=us-ascii\n\n%s\n" % (b, text)
    rest = size - len(head) - len(body)
    if rest > 200:
        raw = rnd.randbytes(rest * 3 // 4)
        body += mh._attachment(b, "data.bin", "application/octet-stream", raw)
    body += "--%s--\n" % b
    return (head + body).encode("ascii")


CLEAN_KINDS = [
    (30, lambda r, to, n: mh.msg_plain(to=to, n=n, body=_random_text(r, r.randint(200, 3000)))),
    (15, lambda r, to, n: msg_sized(r, to, n, r.randint(5 << 10, 40 << 10))),
    (8, lambda r, to, n: msg_sized(r, to, n, r.randint(100 << 10, 1 << 20))),
    (2, lambda r, to, n: msg_sized(r, to, n, r.randint(3 << 20, 6 << 20))),
    (6, lambda r, to, n: mh.msg_japanese_iso2022jp(to=to, n=n)),
    (6, lambda r, to, n: mh.msg_japanese_utf8(to=to, n=n)),
    (6, lambda r, to, n: mh.msg_dots(to=to, n=n)),
    (4, lambda r, to, n: mh.msg_long_lines(to=to, n=n)),
    (6, lambda r, to, n: mh.msg_html_alternative(to=to, n=n)),
    (6, lambda r, to, n: mh.msg_multipart_attachment(to=to, n=n)),
]
MALICIOUS_KINDS = [
    (4, lambda r, to, n: mh.msg_eicar_attachment(to=to, n=n, pad_text=r.choice([0, 2000, 20000]))),
    (2, lambda r, to, n: mh.msg_clamzip_attachment(to=to, n=n)),
    (2, lambda r, to, n: mh.msg_eicar_zip(to=to, n=n)),
    (1, lambda r, to, n: mh.msg_eicar_inline(to=to, n=n)),
    (1, lambda r, to, n: mh.msg_forwarded_eicar(to=to, n=n)),
    (1, lambda r, to, n: mh.msg_japanese_infected(to=to, n=n)),
]


def pick(rnd, kinds):
    total = sum(w for w, _ in kinds)
    x = rnd.uniform(0, total)
    for w, fn in kinds:
        x -= w
        if x <= 0:
            return fn
    return kinds[-1][1]


class Ledger:
    """Everything delivered or appended, by user: sha256 of the CRLF form ->
    (infected, Message-ID); and the quarantine ids seen in notices."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_sha = {u: {} for u in USERS}
        self.mal_by_msgid = {u: {} for u in USERS}
        self.qids = {}           # (user, proto, sha) -> qid from the notices
        self.quarantined_via = set()   # (user, proto, sha) served as a notice or refused
        self.n = 0

    def add(self, user, wire, infected):
        msgid = mh.header_of(wire, "Message-ID")
        with self.lock:
            self.by_sha[user][sha(wire)] = (infected, msgid, len(wire))
            if infected:
                self.mal_by_msgid[user][msgid] = sha(wire)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.errors = []

    def inc(self, k, n=1):
        with self.lock:
            self.c[k] += n

    def error(self, what):
        with self.lock:
            self.errors.append(what)
        print("SOAK ERROR: %s" % what, flush=True)


class UserLocks:
    """Per user: many reading sessions at once, or one that deletes (so a
    direct session opened after a proxy session sees the same list, plus
    new deliveries at its end)."""

    def __init__(self):
        self.cv = threading.Condition()
        self.readers = collections.Counter()
        self.writer = set()

    def acquire(self, user, write):
        with self.cv:
            while user in self.writer or (write and self.readers[user]):
                self.cv.wait()
            if write:
                self.writer.add(user)
            else:
                self.readers[user] += 1

    def release(self, user, write):
        with self.cv:
            if write:
                self.writer.discard(user)
            else:
                self.readers[user] -= 1
            self.cv.notify_all()


# ----------------------------------------------------------- the soak ----

class Soak:

    def __init__(self, seconds, workdir, seed):
        self.seconds = seconds
        self.workdir = workdir
        self.rnd = random.Random(seed)
        self.stop_ev = threading.Event()
        self.ledger = Ledger()
        self.stats = Stats()
        self.locks = UserLocks()
        self.rss = []           # (t, KiB)
        self.depot = None       # (stacks, MiB) of ASan's stack depot at exit
        self.deliver_lock = threading.Lock()
        self.cpu_s = 0.0
        self.seq = 0
        self.dv = None
        self.mm = None

    # ---- set-up ----

    def deliver(self, user, rnd, infected=None):
        if infected is None:
            infected = rnd.random() < 1 / 6
        to = "%s@example.test" % user
        with self.ledger.lock:
            self.ledger.n += 1
            n = self.ledger.n
        data = pick(rnd, MALICIOUS_KINDS if infected else CLEAN_KINDS)(rnd, to, n)
        self.ledger.add(user, crlf(data), infected)
        self.write_maildir(user, data)
        self.stats.inc("delivered")
        self.stats.inc("delivered_malicious" if infected else "delivered_clean")

    def write_maildir(self, user, data):
        """Dovecot.add_message without its walk over the whole tree (which
        races with Dovecot's own temporary files while it runs)."""
        md = os.path.join(self.dv.home(user), "Maildir")
        with self.deliver_lock:     # names (and so UIDs) increase
            self.seq += 1
            name = "%d.M%06dP%d.soak" % (1600000000 + self.seq, self.seq, os.getpid())
        tmp = os.path.join(md, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, self.dv.uid, self.dv.gid)
        os.rename(tmp, os.path.join(md, "new", name))

    def mailbox_size(self, user):
        md = os.path.join(self.dv.home(user), "Maildir")
        return len(os.listdir(os.path.join(md, "cur"))) + len(os.listdir(os.path.join(md, "new")))

    def start(self):
        self.dv = mh.Dovecot(os.path.join(self.workdir, "dovecot"), USERS)
        for u in USERS:
            self.dv.maildir(u)          # created (and owned) before Dovecot runs
        for u in USERS:
            for i in range(TARGET_MAILBOX // 2):
                self.deliver(u, self.rnd, infected=(i % 5 == 2))
        self.dv.start()
        self.mm = mh.Mailmoat(os.path.join(self.workdir, "mailmoat"),
                              [("pop3", self.dv.pop3_port), ("imap", self.dv.imap_port)])
        env = {}
        if mh.binary_is_sanitized(self.mm.binary):
            # ASan's quarantine of freed memory (256 MiB by default) is
            # capped so that it fills during the warm-up and the RSS
            # samples after it compare like with like.
            # fast_unwind_on_malloc=0: ASan records the call stack of every
            # malloc in its stack depot, which it never shrinks. Its fast
            # unwinder follows frame pointers, and Debian's libclamav is
            # built without them: each malloc of the MIME parser (one or
            # two per line of mail) got a stack of garbage frames, nearly
            # every one new - 655,000 depot entries after 4 minutes,
            # growing some 5 MB a minute, which was the RSS drift this soak
            # saw under ASan (and not in the gcc build). The DWARF unwinder
            # records true stacks: a few thousand distinct ones, a flat
            # depot, for about three times the CPU. atexit/print_stats put
            # ASan's allocator and depot figures into the log at exit
            # (reported in the summary).
            env["ASAN_OPTIONS"] = ":".join(x for x in (
                os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=64",
                "fast_unwind_on_malloc=0", "atexit=1", "print_stats=1",
                "detect_leaks=1", "abort_on_error=0") if x)
            env["UBSAN_OPTIONS"] = os.environ.get("UBSAN_OPTIONS", "print_stacktrace=1")
        self.mm.start(timeout=120, env=env)
        self.pop3_port, self.imap_port = self.mm.ports[0], self.mm.ports[1]
        self.up_pop3 = "%s:%d" % (mh.HOST, self.dv.pop3_port)
        self.up_imap = "%s:%d" % (mh.HOST, self.dv.imap_port)

    # ---- checks shared by the clients ----

    def check_message(self, user, proto, got, list_size=None, where="", size_item=None):
        """got: the message bytes one client received (CRLF form);
        list_size: POP3's LIST size of it; size_item: IMAP's RFC822.SIZE
        from the same FETCH."""
        h = sha(got)
        with self.ledger.lock:
            known = self.ledger.by_sha[user].get(h)
        if known is not None:
            infected, msgid, _ = known
            if infected:
                self.stats.error("%s %s %s: malicious message %s delivered unchanged"
                                 % (proto, user, where, msgid))
                return
            self.stats.inc("clean_ok")
            self.stats.inc("bytes", len(got))
            for what, size in (("LIST", list_size), ("RFC822.SIZE", size_item)):
                if size is not None and size != len(got):
                    self.stats.error("%s %s %s: %s said %d, the message is %d bytes" % (
                        proto, user, where, what, size, len(got)))
            return
        subj = mh.header_of(got, "Subject") or ""
        qid = mh.header_of(got, "X-Mailmoat-Quarantine-Id")
        msgid = mh.header_of(got, "Message-ID")
        with self.ledger.lock:
            orig = self.ledger.mal_by_msgid[user].get(msgid)
            clean_ids = [1 for (inf, m2, _) in self.ledger.by_sha[user].values()
                         if not inf and m2 == msgid]
        if NOTICE_MARK not in subj or qid is None or orig is None:
            self.stats.error("%s %s %s: unknown content (%d bytes, Message-ID %s, Subject %r, "
                             "notice id %s; %s)" % (
                                 proto, user, where, len(got), msgid, subj[:60], qid,
                                 "a clean message's Message-ID: altered clean message"
                                 if clean_ids else "not delivered by the soak"))
            return
        orig_len = self.ledger.by_sha[user][orig][2]
        # The notice is padded to the original's size when the original is
        # bigger (LIST stays true); a small original gets a bigger notice.
        if len(got) < orig_len or (orig_len > NOTICE_PAD_ABOVE and len(got) != orig_len):
            self.stats.error("%s %s %s: notice of %d bytes for an original of %d" % (
                proto, user, where, len(got), orig_len))
        if list_size is not None and list_size != orig_len:
            self.stats.error("%s %s %s: LIST said %d for an original of %d" % (
                proto, user, where, list_size, orig_len))
        # before the verdict RFC822.SIZE is the original's, after it the notice's
        if size_item is not None and size_item not in (orig_len, len(got)):
            self.stats.error("%s %s %s: RFC822.SIZE %d, original %d, notice %d" % (
                proto, user, where, size_item, orig_len, len(got)))
        self.note_qid(user, proto, orig, qid, where)
        self.stats.inc("notices_ok")
        self.stats.inc("bytes", len(got))

    def note_qid(self, user, proto, orig_sha, qid, where):
        key = (user, proto, orig_sha)
        with self.ledger.lock:
            old = self.ledger.qids.setdefault(key, qid)
            self.ledger.quarantined_via.add(key)
        if old != qid:
            self.stats.error("%s %s %s: message %s... quarantined as %s and as %s" % (
                proto, user, where, orig_sha[:12], old, qid))

    # ---- POP3 ----

    def pop3_listing(self, c):
        st, raw = c.cmd_multi("UIDL")
        if raw is None:
            raise RuntimeError("UIDL: %r" % st)
        uidl = [l.split()[1] for l in mh.unstuff(raw).split(b"\r\n") if l.strip()]
        st, raw = c.cmd_multi("LIST")
        if raw is None:
            raise RuntimeError("LIST: %r" % st)
        sizes = [int(l.split()[1]) for l in mh.unstuff(raw).split(b"\r\n") if l.strip()]
        return uidl, sizes

    def pop3_session(self, rnd, user):
        delete = self.mailbox_size(user) > TARGET_MAILBOX and rnd.random() < 0.6
        self.locks.acquire(user, delete)
        try:
            self._pop3_session(rnd, user, delete)
        finally:
            self.locks.release(user, delete)

    def _pop3_session(self, rnd, user, delete):
        where = "pop3 session"
        with mh.RawPop3(self.pop3_port, timeout=300) as c:
            c.login(user, USERS[user])
            uidl, sizes = self.pop3_listing(c)
            with mh.RawPop3(self.dv.pop3_port, timeout=60) as d:
                d.login(user, USERS[user])
                duidl, dsizes = self.pop3_listing(d)
                d.cmd("QUIT")
            if duidl[:len(uidl)] != uidl or dsizes[:len(sizes)] != sizes:
                self.stats.error("pop3 %s: UIDL/LIST through the proxy (%d) differ from direct (%d)"
                                 % (user, len(uidl), len(duidl)))
            nums = list(range(1, len(uidl) + 1))
            if rnd.random() < 0.6:           # new mail only, or a few again
                nums = rnd.sample(nums, min(len(nums), rnd.randint(1, 5)))
            pipelined = rnd.random() < 0.3
            if pipelined:
                res = mh.pipeline(c, ["RETR %d" % i for i in nums])
            else:
                res = [c.cmd_multi("RETR %d" % i) for i in nums]
            if len(res) != len(nums):
                raise RuntimeError("connection closed after %d of %d RETR" % (len(res), len(nums)))
            for i, (st, raw) in zip(nums, res):
                if raw is None:
                    self.stats.error("pop3 %s RETR %d: %r" % (user, i, st[:200]))
                    continue
                self.check_message(user, "pop3", mh.unstuff(raw), sizes[i - 1],
                                   "%s RETR %d" % (where, i))
                self.stats.inc("pop3_retr")
            if nums and rnd.random() < 0.2:
                i = rnd.choice(nums)
                st, raw = c.cmd_multi("TOP %d 5" % i)
                if raw is None:
                    self.stats.error("pop3 %s TOP %d: %r" % (user, i, st[:200]))
                self.stats.inc("pop3_top")
            if delete:
                dels = rnd.sample(range(1, len(uidl) + 1), max(0, len(uidl) - TARGET_MAILBOX // 2))
                for i in dels:
                    st = c.cmd("DELE %d" % i)
                    if not st.startswith(b"+OK"):
                        self.stats.error("pop3 %s DELE %d: %r" % (user, i, st))
                self.stats.inc("pop3_dele", len(dels))
            st = c.cmd("QUIT")
            if not st.startswith(b"+OK"):
                self.stats.error("pop3 %s QUIT: %r" % (user, st))
        self.stats.inc("pop3_sessions")

    # ---- IMAP ----

    def imap_uids(self, c):
        typ, data = c.uid("SEARCH", None, "ALL")
        if typ != "OK":
            raise RuntimeError("UID SEARCH: %s %r" % (typ, data))
        return [int(x) for x in b" ".join(d for d in data if d).split()]

    def imap_session(self, rnd, user):
        expunge = rnd.random() < 0.15
        self.locks.acquire(user, expunge)
        try:
            self._imap_session(rnd, user, expunge)
        finally:
            self.locks.release(user, expunge)

    def _imap_session(self, rnd, user, expunge):
        c = imaplib.IMAP4(mh.HOST, self.imap_port, timeout=300)
        try:
            typ, _ = c.login(user, USERS[user])
            if typ != "OK":
                raise RuntimeError("LOGIN %s" % typ)
            typ, _ = c.select("INBOX", readonly=not expunge)
            if typ != "OK":
                raise RuntimeError("SELECT %s" % typ)
            uids = self.imap_uids(c)
            d = imaplib.IMAP4(mh.HOST, self.dv.imap_port, timeout=60)
            d.login(user, USERS[user])
            d.select("INBOX", readonly=True)
            duids = self.imap_uids(d)
            d.logout()
            if duids[:len(uids)] != uids:
                self.stats.error("imap %s: UIDs through the proxy (%d) differ from direct (%d)"
                                 % (user, len(uids), len(duids)))
            action = rnd.random()
            if action < 0.45 and uids:
                self.imap_sync(c, user, uids)
            elif action < 0.7 and uids:
                for uid in rnd.sample(uids, min(len(uids), 3)):
                    self.imap_chunked(c, user, uid)
            elif action < 0.85:
                self.imap_append(c, user, rnd)
            elif uids:
                self.imap_sync(c, user, rnd.sample(uids, min(len(uids), 4)))
            if expunge and len(uids) > TARGET_MAILBOX:
                victims = rnd.sample(uids, len(uids) - TARGET_MAILBOX // 2)
                typ, data = c.uid("STORE", ",".join(map(str, victims)), "+FLAGS.SILENT", "(\\Deleted)")
                if typ != "OK":
                    self.stats.error("imap %s STORE: %s %r" % (user, typ, data))
                typ, data = c.expunge()
                if typ != "OK":
                    self.stats.error("imap %s EXPUNGE: %s %r" % (user, typ, data))
                self.stats.inc("imap_expunged", len(victims))
            c.logout()
        finally:
            try:
                c.shutdown()
            except OSError:
                pass
        self.stats.inc("imap_sessions")

    def imap_sync(self, c, user, uids):
        typ, data = c.uid("FETCH", ",".join(map(str, uids)), "(UID RFC822.SIZE BODY.PEEK[])")
        if typ != "OK":
            self.stats.error("imap %s UID FETCH: %s %r" % (user, typ, data[:2]))
            return
        got = mh.fetch_by_uid(mh.imaplib_responses(data))
        for uid in uids:
            a = got.get(uid)
            if a is None or "BODY[]" not in a:
                self.stats.error("imap %s: no BODY[] for UID %d" % (user, uid))
                continue
            body = a["BODY[]"] or b""
            self.check_message(user, "imap", body, None, "UID FETCH %d" % uid,
                               int(a.get("RFC822.SIZE", -1)))
            self.stats.inc("imap_fetched")

    def imap_chunked(self, c, user, uid, chunk=65536):
        got, off = bytearray(), 0
        while True:
            typ, data = c.uid("FETCH", str(uid), "(UID BODY.PEEK[]<%d.%d>)" % (off, chunk))
            if typ != "OK":
                self.stats.error("imap %s chunk %d of UID %d: %s %r" % (user, off, uid, typ, data[:2]))
                return
            a = mh.fetch_by_uid(mh.imaplib_responses(data)).get(uid)
            part = (a or {}).get("BODY[]<%d>" % off)
            if a is None or (part is None and off == 0):
                self.stats.error("imap %s: no chunk %d of UID %d: %r" % (user, off, uid, data[:2]))
                return
            part = part or b""
            got += part
            off += chunk
            if len(part) < chunk:
                break
        self.check_message(user, "imap", bytes(got), None, "chunked UID %d" % uid)
        self.stats.inc("imap_chunked")

    def imap_append(self, c, user, rnd):
        infected = rnd.random() < 0.25
        to = "%s@example.test" % user
        with self.ledger.lock:
            self.ledger.n += 1
            n = self.ledger.n
        data = crlf(pick(rnd, MALICIOUS_KINDS if infected else CLEAN_KINDS[:3])(rnd, to, n))
        self.ledger.add(user, data, infected)
        typ, resp = c.append("INBOX", None, None, data)
        text = b" ".join(r for r in resp if isinstance(r, bytes)).decode("utf-8", "replace")
        if infected:
            m = re.search(r"quarantined as (\S+)", text)
            if typ != "NO" or "[mailmoat]" not in text or not m:
                self.stats.error("imap %s APPEND malicious: %s %r" % (user, typ, text[:200]))
            else:
                self.note_qid(user, "imap", sha(data), m.group(1).rstrip("]"), "APPEND")
            self.stats.inc("imap_append_refused")
        else:
            if typ != "OK":
                self.stats.error("imap %s APPEND clean: %s %r" % (user, typ, text[:200]))
            self.stats.inc("imap_append_ok")

    def idle_client(self, rnd):
        """One IDLE session at a time: waits for the EXISTS a delivery
        causes, then DONE, then fetches the new message."""
        while not self.stop_ev.is_set():
            user = rnd.choice(list(USERS))
            self.locks.acquire(user, False)
            try:
                c = mh.RawImap(self.imap_port, timeout=120)
                try:
                    c.login(user, USERS[user])
                    st, unt = c.command("SELECT INBOX")
                    before = max([int(r[0].split()[1]) for r in unt
                                  if r[0].endswith(b"EXISTS\r\n")] or [0])
                    tag = c.next_tag()
                    c.send(tag.encode() + b" IDLE\r\n")
                    line = c.readline()
                    if not line.startswith(b"+"):
                        self.stats.error("imap %s IDLE: %r" % (user, line))
                        continue
                    self.deliver(user, rnd)
                    seen = None
                    deadline = time.monotonic() + 60
                    while seen is None and time.monotonic() < deadline:
                        r = c.read_response()
                        m = re.match(rb"\* (\d+) EXISTS", r[0])
                        if m and int(m.group(1)) > before:
                            seen = int(m.group(1))
                    c.send(b"DONE\r\n")
                    st = c.read_until_tagged(tag)[0]
                    if seen is None or not st.split()[1:2] == [b"OK"]:
                        self.stats.error("imap %s IDLE: EXISTS %s, end %r" % (user, seen, st))
                    else:
                        self.stats.inc("imap_idle_exists")
                    c.command("LOGOUT")
                finally:
                    c.close()
            except Exception as e:
                self.stats.error("imap IDLE %s: %s" % (user, e))
            finally:
                self.locks.release(user, False)
            self.stop_ev.wait(rnd.uniform(2, 6))

    # ---- curl ----

    def curl_session(self, rnd, user):
        proto = rnd.choice(["pop3", "imap"])
        self.locks.acquire(user, False)
        try:
            if proto == "pop3":
                with mh.RawPop3(self.dv.pop3_port, timeout=60) as d:
                    d.login(user, USERS[user])
                    count = int(d.cmd("STAT").split()[1])
                    d.cmd("QUIT")
                if not count:
                    return
                i = rnd.randint(1, count)
                url = "pop3://%s:%d/%d" % (mh.HOST, self.pop3_port, i)
            else:
                d = imaplib.IMAP4(mh.HOST, self.dv.imap_port, timeout=60)
                d.login(user, USERS[user])
                d.select("INBOX", readonly=True)
                uids = self.imap_uids(d)
                d.logout()
                if not uids:
                    return
                i = rnd.choice(uids)
                url = "imap://%s:%d/INBOX;UID=%d" % (mh.HOST, self.imap_port, i)
            r = subprocess.run(["curl", "-sS", "--max-time", "300", "-u",
                                "%s:%s" % (user, USERS[user]), url],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=330)
            if r.returncode != 0:
                self.stats.error("curl %s %s: exit %d %s" % (user, url, r.returncode,
                                                             r.stderr[:200]))
                return
            body = r.stdout            # curl removes the dot-stuffing itself
            self.check_message(user, proto, body, None, "curl %s" % url)
            self.stats.inc("curl_%s" % proto)
        finally:
            self.locks.release(user, False)

    # ---- threads ----

    def client(self, kind, seed):
        rnd = random.Random(seed)
        users = list(USERS)
        while not self.stop_ev.is_set():
            user = rnd.choice(users)
            try:
                if kind == "pop3":
                    self.pop3_session(rnd, user)
                elif kind == "imap":
                    self.imap_session(rnd, user)
                elif kind == "curl":
                    self.curl_session(rnd, user)
            except Exception as e:
                self.stats.error("%s %s: %s\n%s" % (kind, user, e, traceback.format_exc(limit=3)))
            self.stop_ev.wait(rnd.uniform(1.0, 4.0) if kind != "curl" else rnd.uniform(5, 15))

    def deliverer(self, seed):
        rnd = random.Random(seed)
        while not self.stop_ev.is_set():
            self.deliver(rnd.choice(list(USERS)), rnd)
            self.stop_ev.wait(rnd.uniform(0.5, 2.0))

    def sampler(self):
        t0 = time.monotonic()
        while not self.stop_ev.is_set():
            rss, _ = self.mm.read_rss()
            try:
                with open("/proc/%d/stat" % self.mm.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                self.cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
            if rss is not None:
                self.rss.append((time.monotonic() - t0, rss))
            if not self.mm.alive():
                self.stats.error("mailmoat died (status %s)" % self.mm.proc.returncode)
                self.stop_ev.set()
            self.stop_ev.wait(RSS_PERIOD)

    def run(self):
        seeds = self.rnd.randrange(1 << 30)
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.deliverer, args=(seeds,), daemon=True),
                   threading.Thread(target=self.idle_client, args=(random.Random(seeds + 1),),
                                    daemon=True)]
        for i, kind in enumerate(["pop3"] * 3 + ["imap"] * 3 + ["curl"]):
            threads.append(threading.Thread(target=self.client, args=(kind, seeds + 10 + i),
                                            daemon=True))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        self.stop_ev.wait(self.seconds)
        self.stop_ev.set()
        for t in threads:
            t.join(600)
            if t.is_alive():
                self.stats.error("a client thread is stuck at the end")
        self.elapsed = time.monotonic() - t0

    def final_sweep(self):
        """One POP3 download and one IMAP sync per user, so that every
        malicious message still on the server went through both upstreams
        at least once more (re-fetch: no new quarantine entry)."""
        rnd = random.Random(1)
        for u in USERS:
            self._pop3_session(rnd, u, False)
            c = imaplib.IMAP4(mh.HOST, self.imap_port, timeout=300)
            c.login(u, USERS[u])
            c.select("INBOX", readonly=True)
            uids = self.imap_uids(c)
            if uids:
                self.imap_sync(c, u, uids)
            c.logout()

    # ---- verdict ----

    def check_quarantine(self):
        entries = collections.defaultdict(list)
        for qid, eml, jp, meta in self.mm.quarantine():
            if meta is None:
                self.stats.error("quarantine %s: unreadable %s" % (qid, jp))
                continue
            key = (meta.get("user"), meta.get("upstream"), meta.get("sha256"))
            entries[key].append(qid)
            try:
                with open(eml, "rb") as f:
                    if sha(f.read()) != meta.get("sha256"):
                        self.stats.error("quarantine %s: .eml does not match its sha256" % qid)
            except OSError as e:
                self.stats.error("quarantine %s: %s" % (qid, e))
            user, h = meta.get("user"), meta.get("sha256")
            known = self.ledger.by_sha.get(user, {}).get(h)
            if not user:
                self.stats.error("quarantine %s (%s, session %s, %s): no user - the proxy did not "
                                 "learn the login name of that session" % (
                                     qid, meta.get("protocol"), meta.get("session"),
                                     meta.get("message")))
            elif known is None or not known[0]:
                self.stats.error("quarantine %s holds %s for %s: not a malicious message of the soak"
                                 % (qid, h, user))
        for key, ids in entries.items():
            if len(ids) != 1:
                self.stats.error("quarantined %d times (want once): user %s upstream %s sha %s: %s"
                                 % (len(ids), key[0], key[1], key[2][:16], " ".join(ids)))
        up = {"pop3": self.up_pop3, "imap": self.up_imap}
        for (user, proto, h), qid in self.ledger.qids.items():
            ids = entries.get((user, up[proto], h), [])
            if qid not in ids:
                self.stats.error("notice for %s (%s) names %s; the quarantine has %s for it"
                                 % (user, proto, qid, ids or "nothing"))
        self.quarantine_entries = sum(len(v) for v in entries.values())
        self.quarantine_keys = len(entries)

    def check_rss(self):
        warm = max(30.0, self.seconds * 0.1)
        s = [kib for t, kib in self.rss if t >= warm]
        if len(s) < 8:
            self.stats.error("too few RSS samples after the warm-up: %d" % len(s))
            return None
        q = len(s) // 4
        first, last = statistics.median(s[:q]), statistics.median(s[-q:])
        limit = first * (1 + RSS_SLACK_FRACTION) + RSS_SLACK_KIB
        if last > limit:
            self.stats.error("RSS grows: last-quarter median %d KiB > first-quarter median %d KiB"
                             " + %.0f%% + %d KiB = %d KiB" % (last, first, RSS_SLACK_FRACTION * 100,
                                                             RSS_SLACK_KIB, limit))
        return first, last, limit, len(s)

    def check_exit(self):
        rc = self.mm.stop(timeout=120)
        if rc != 0:
            self.stats.error("mailmoat exit status %s on SIGTERM" % rc)
        log = self.mm.log_text()
        for mark in SANITIZER_MARKS:
            if mark in log:
                i = log.index(mark)
                self.stats.error("sanitizer report in mailmoat's log:\n%s" % log[max(0, i - 200):i + 3000])
                break
        self.log_errors = len([l for l in log.splitlines() if " error " in l or " ERROR " in l])
        m = re.search(r"StackDepot: (\d+) ids; (\d+)M allocated", log)
        if m:
            self.depot = (int(m.group(1)), int(m.group(2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("MAILMOAT_SOAK_SECONDS", "300")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("MAILMOAT_SOAK_SEED", "0"))
                    or int(time.time()))
    ap.add_argument("--keep", action="store_true", default=bool(os.environ.get("MAILMOAT_IT_KEEP")))
    a = ap.parse_args()
    if not os.path.exists(mh.mailmoat_bin()):
        sys.exit("mailmoat binary not built: %s" % mh.mailmoat_bin())
    workdir = tempfile.mkdtemp(prefix="mailmoat-soak-")
    os.chmod(workdir, 0o755)
    s = Soak(a.seconds, workdir, a.seed)
    ok = False
    try:
        print("soak: %.0f s, seed %d, binary %s (sanitized: %s), work dir %s" % (
            a.seconds, a.seed, mh.mailmoat_bin(), mh.binary_is_sanitized(mh.mailmoat_bin()),
            workdir), flush=True)
        s.start()
        s.run()
        if s.mm.alive():
            try:
                s.final_sweep()
            except Exception as e:
                s.stats.error("final sweep: %s\n%s" % (e, traceback.format_exc(limit=3)))
        rss = s.check_rss()
        s.check_exit()
        s.check_quarantine()
        c = s.stats.c
        print("\n== soak summary (%.0f s, seed %d) ==" % (s.elapsed, a.seed))
        print("sessions:    pop3 %d, imap %d (+ %d IDLE), curl %d" % (
            c["pop3_sessions"], c["imap_sessions"], c["imap_idle_exists"],
            c["curl_pop3"] + c["curl_imap"]))
        print("delivered:   %d messages (%d malicious) to %d users; IMAP APPEND %d clean, "
              "%d malicious refused" % (c["delivered"], c["delivered_malicious"], len(USERS),
                                        c["imap_append_ok"], c["imap_append_refused"]))
        print("received:    %d clean byte-identical, %d notices, %.1f MiB; POP3 RETR %d, TOP %d, "
              "DELE %d; IMAP fetched %d whole, %d chunked, %d expunged" % (
                  c["clean_ok"], c["notices_ok"], c["bytes"] / 1048576, c["pop3_retr"],
                  c["pop3_top"], c["pop3_dele"], c["imap_fetched"], c["imap_chunked"],
                  c["imap_expunged"]))
        print("quarantine:  %d entries for %d (message, user, upstream); %d distinct ids in notices"
              % (s.quarantine_entries, s.quarantine_keys, len(set(s.ledger.qids.values()))))
        if rss:
            first, last, limit, n = rss
            print("RSS:         %d samples every %.0f s (%d after warm-up); first-quarter median "
                  "%d KiB, last-quarter median %d KiB (limit %d KiB); min %d max %d KiB" % (
                      len(s.rss), RSS_PERIOD, n, first, last, limit,
                      min(k for _, k in s.rss), max(k for _, k in s.rss)))
            print("RSS samples (s:KiB): " + " ".join("%d:%d" % (t, k) for t, k in s.rss[::max(1, len(s.rss) // 40)]))
        print("mailmoat:    exit %s after SIGTERM, %d error lines in its log, %.0f s CPU "
              "(%.0f%% of one core)" % (s.mm.returncode, s.log_errors, s.cpu_s,
                                        100 * s.cpu_s / max(1, s.elapsed)))
        if s.depot:
            print("ASan:        stack depot %d stacks, %d MiB at exit" % s.depot)
        errs = s.stats.errors
        print("protocol/check errors: %d" % len(errs))
        for e in errs[:30]:
            print("  - " + e.replace("\n", "\n    "))
        ok = not errs
    finally:
        if s.mm is not None and s.mm.alive():
            s.mm.stop(timeout=60)
        if s.dv is not None:
            s.dv.stop()
        if ok and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("work dir kept: %s" % workdir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
