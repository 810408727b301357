"""`mailmoat quarantine ...` on real quarantine entries.

bob's mailbox is downloaded over POP3 and grace's infected messages over
IMAP through one mailmoat, so the fixture's EICAR and clam.zip messages are
quarantined by the daemon itself. Then the CLI, with configurations of its
own pointing at the same quarantine:

- list --json carries every member of every ID.json, newest first; --user
  and --since filter; the table lists every entry;
- show prints the metadata and the original's main headers;
- export is byte-identical to the .eml and to the message Dovecot holds,
  mode 0600, never overwrites without --force;
- release appends the original over IMAP (STARTTLS verified against the
  test CA) to a second, throwaway Dovecot logged in as a master user
  ("%u*admin"): the appended message, fetched back with BODY.PEEK[], is
  byte-identical; release over SMTP to a sink in this file delivers the
  same bytes as DATA; the released hash is in the index; a second release
  needs --force; a wrong password fails in one line that does not contain
  it;
- delete and purge (on a copy of the quarantine);
- QuarantineScale: 100,000 entries written directly, listed with --user
  and as a table; the timings of the first sync and of later lists are
  printed.
"""

import datetime
import hashlib
import json
import os
import shutil
import socketserver
import sqlite3
import subprocess
import threading
import time
import unittest

from itbase import ImapCase, mh, out

MASTER, MASTER_PW = "admin", "Master-pw-3Zq!x"
TARGET_USERS = {"bob": "Bob-target-pw-1", "grace": "Grace-target-pw-2"}


class MasterDovecot(mh.Dovecot):
    """mh.Dovecot plus master users (Dovecot's "login as USER*MASTER with
    MASTER's password"), added to the configuration it writes."""

    def __init__(self, workdir, users, masters, **kw):
        self.masters = dict(masters)
        super().__init__(workdir, users, **kw)

    def write_config(self):
        super().write_config()
        path = os.path.join(self.workdir, "masters")
        with open(path, "w") as f:
            for u, pw in self.masters.items():
                f.write("%s:{PLAIN}%s\n" % (u, pw))
        os.chmod(path, 0o644)
        with open(self.config_path) as f:
            conf = f.read()
        block = ("auth_master_user_separator = *\n"
                 "passdb {\n  driver = passwd-file\n  master = yes\n  args = %s\n"
                 "  pass = yes\n}\n" % path)
        conf = conf.replace("passdb {", block + "passdb {", 1)
        with open(self.config_path, "w") as f:
            f.write(conf)


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to take mail: EHLO, MAIL, RCPT, DATA
    (dot-unstuffed), RSET, NOOP, QUIT."""

    def reply(self, text):
        self.wfile.write(text.encode("ascii") + b"\r\n")

    def handle(self):
        self.reply("220 sink.test ESMTP")
        mail = {"from": None, "rcpt": []}
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.decode("ascii", "replace").rstrip("\r\n")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-sink.test\r\n250 8BITMIME\r\n")
            elif verb == "HELO":
                self.reply("250 sink.test")
            elif cmd.upper().startswith("MAIL FROM:"):
                mail["from"] = cmd[10:].strip()
                self.reply("250 sender ok")
            elif cmd.upper().startswith("RCPT TO:"):
                mail["rcpt"].append(cmd[8:].strip())
                self.reply("250 recipient ok")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                data = bytearray()
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    data += l
                mail["data"] = bytes(data)
                self.server.mails.append(mail)
                mail = {"from": None, "rcpt": []}
                self.reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 ok")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class SmtpSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__((mh.HOST, 0), _SmtpHandler)
        self.mails = []
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


def cli(conf, *args, timeout=600):
    """Runs mailmoat quarantine ARGS --config CONF: (code, stdout, stderr)."""
    r = subprocess.run([mh.mailmoat_bin(), "quarantine"] + list(args) + ["--config", conf],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode("utf-8", "replace")


def cli_config(path, qdir, release=None):
    """A configuration for the CLI: the quarantine (and release) keys."""
    lines = ["listeners:", "  - protocol: pop3", "    listen: 127.0.0.1:1",
             "    upstream: 127.0.0.1:1", "quarantine:", "  dir: %s" % json.dumps(qdir)]
    if release:
        lines.append("  release:")
        lines += ["    %s: %s" % (k, json.dumps(v)) for k, v in release.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def sort_key(e):
    return (e["received_at"], e["id"])


class QuarantineCli(ImapCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # the daemon quarantines bob's (POP3) and grace's (IMAP) malware
        cls.proxy = mh.Mailmoat(os.path.join(cls._tmp, "proxy"),
                                [("pop3", cls.up), ("imap", cls.imap_up)]).start()
        cls._class_proxies.append(cls.proxy)
        cls.qdir = cls.proxy.quarantine_dir
        cls.bob_direct = mh.fetch_all_raw(cls.up, "bob", cls.st["users"]["bob"]["password"])
        mh.fetch_all_raw(cls.proxy.port, "bob", cls.st["users"]["bob"]["password"])
        grace_inf = [m["num"] for m in cls.st["users"]["grace"]["messages"] if m["infected"]]
        with cls.imap(cls.proxy.ports[1], "grace") as c:
            cls.uid_fetch(c, ",".join(map(str, grace_inf)), "(UID BODY.PEEK[])")
        cls.direct_by_sha = {}
        for _, body in cls.bob_direct["RETR"]:
            b = mh.unstuff(body)
            cls.direct_by_sha[hashlib.sha256(b).hexdigest()] = b
        for b in cls.direct_whole("grace").values():
            cls.direct_by_sha[hashlib.sha256(b).hexdigest()] = b
        cls.entries = {q[0]: q for q in cls.proxy.quarantine()}   # id -> (id, eml, json, meta)
        cls.n_bob = len([m for m in cls.st["users"]["bob"]["messages"] if m["infected"]])
        cls.n_grace = len(grace_inf)

        # the release targets: a Dovecot with a master user, an SMTP sink
        pki = cls.st["pki"]
        cls.target = MasterDovecot(os.path.join(cls._tmp, "target-dovecot"), TARGET_USERS,
                                   {MASTER: MASTER_PW}, tls=True,
                                   ssl_cert=pki["upstream_cert"], ssl_key=pki["upstream_key"])
        cls.target.start()
        cls.sink = SmtpSink()
        pwfile = os.path.join(cls._tmp, "release.pw")
        with open(pwfile, "w") as f:
            f.write(MASTER_PW + "\n")
        os.chmod(pwfile, 0o600)
        cls.pwfile = pwfile
        cls.conf = cli_config(os.path.join(cls._tmp, "cli-imap.yaml"), cls.qdir, {
            "method": "imap", "imap_url": "imap://127.0.0.1:%d" % cls.target.imap_port,
            "imap_user": "%u*" + MASTER, "password_file": pwfile, "mailbox": "INBOX",
            "ca": pki["ca"]})
        cls.conf_smtp = cli_config(os.path.join(cls._tmp, "cli-smtp.yaml"), cls.qdir, {
            "method": "smtp", "smtp_url": "smtp://127.0.0.1:%d" % cls.sink.port,
            "smtp_from": "quarantine@example.test", "smtp_domain": "example.test"})

    @classmethod
    def tearDownClass(cls):
        for what in ("target", "sink"):
            if getattr(cls, what, None) is not None:
                getattr(cls, what).stop()
        super().tearDownClass()

    # ---- helpers ----

    def list_json(self, *args, conf=None):
        rc, so, se = cli(conf or self.conf, "list", "--json", *args)
        self.assertEqual(rc, 0, se)
        return json.loads(so.decode("utf-8"))

    def entry_of(self, user, skip=()):
        for qid, q in sorted(self.entries.items()):
            if q[3]["user"] == user and qid not in skip:
                return q
        self.fail("no entry of %s" % user)

    def copy_quarantine(self, name):
        d = os.path.join(self._tmp, name)
        shutil.copytree(self.qdir, d, ignore=shutil.ignore_patterns(".index*"))
        return d, cli_config(os.path.join(self._tmp, name + ".yaml"), d)

    # ---- tests ----

    def test_1_list_json_carries_every_member(self):
        self.assertEqual(len(self.entries), self.n_bob + self.n_grace)
        got = self.list_json()
        self.assertEqual([e["id"] for e in got],
                         [e["id"] for e in sorted(got, key=sort_key, reverse=True)],
                         "not newest first")
        by_id = {e["id"]: e for e in got}
        self.assertEqual(sorted(by_id), sorted(self.entries))
        for qid, (_, _, jpath, meta) in self.entries.items():
            self.assertIsNotNone(meta, "%s.json unreadable by python" % qid)
            for k, v in meta.items():
                self.assertIn(k, by_id[qid], "%s: member %s missing" % (qid, k))
                self.assertEqual(by_id[qid][k], v, "%s: member %s" % (qid, k))
            self.assertTrue(by_id[qid]["eml"])
            self.assertIsNone(by_id[qid]["released_at"])
        self.assertEqual({e["protocol"] for e in got}, {"pop3", "imap"})

    def test_2_list_table(self):
        rc, so, se = cli(self.conf, "list")
        self.assertEqual(rc, 0, se)
        lines = so.decode("utf-8").splitlines()
        self.assertTrue(lines[0].startswith("ID "), lines[0])
        self.assertEqual(len(lines), 1 + len(self.entries))
        ids = [l.split()[0] for l in lines[1:]]
        self.assertEqual(sorted(ids), sorted(self.entries))
        # aligned: every row has its FROM column where the header has it,
        # and SIZE right-aligned under its title
        frm, size_end = lines[0].index("FROM"), lines[0].index("SIZE") + 4
        for l in lines[1:]:
            self.assertEqual(l[frm - 2:frm], "  ", "columns not aligned:\n" + so.decode())
            self.assertNotEqual(l[frm], " ", l)
            self.assertTrue(l[:size_end].split()[-1].isdigit(), l)
            self.assertEqual(l[size_end:size_end + 2], "  ", l)
            self.assertIn(l.split()[2], ("bob", "grace"), l)
            self.assertIn("Mailmoat.Test", l)

    def test_3_user_and_since(self):
        bob = self.list_json("--user", "bob")
        self.assertEqual(len(bob), self.n_bob)
        self.assertEqual({e["user"] for e in bob}, {"bob"})
        self.assertEqual(len(self.list_json("--user", "grace")), self.n_grace)
        self.assertEqual(self.list_json("--user", "nobody"), [])
        self.assertEqual(self.list_json("--user", "Bob"), [])
        allx = self.list_json()
        times = sorted(e["received_at"] for e in allx)
        self.assertEqual(len(self.list_json("--since", "1h")), len(allx))
        self.assertEqual(len(self.list_json("--since", times[0])), len(allx))
        yesterday = (datetime.datetime.now(datetime.timezone.utc)
                     - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
        self.assertEqual(len(self.list_json("--since", yesterday)), len(allx))
        last = datetime.datetime.strptime(times[-1], "%Y-%m-%dT%H:%M:%SZ")
        after = (last + datetime.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.assertEqual(self.list_json("--since", after), [])
        # the same instant with an offset
        jst = (last + datetime.timedelta(hours=9, seconds=1)).strftime("%Y-%m-%dT%H:%M:%S+09:00")
        self.assertEqual(self.list_json("--since", jst), [])
        self.assertEqual(len(self.list_json("--since", "1h", "--user", "bob")), self.n_bob)
        rc, _, se = cli(self.conf, "list", "--since", "last tuesday")
        self.assertEqual(rc, 2, se)

    def test_4_show(self):
        qid, eml, _, meta = self.entry_of("bob")
        rc, so, se = cli(self.conf, "show", qid)
        self.assertEqual(rc, 0, se)
        text = so.decode("utf-8")
        head, _, headers = text.partition("\n--- headers of %s.eml" % qid)
        shown = json.loads(head)
        for k, v in meta.items():
            self.assertEqual(shown[k], v)
        with open(eml, "rb") as f:
            orig = f.read()
        for h in ("From", "To", "Subject", "Message-ID", "Date"):
            v = mh.header_of(orig, h)
            if v is not None:
                self.assertIn("\n%s: %s\n" % (h, v), headers, "header %s" % h)
        rc, _, se = cli(self.conf, "show", "20000101T000000Z-00000000")
        self.assertEqual(rc, 1)
        self.assertEqual(se.count("\n"), 1, se)

    def test_5_export(self):
        for qid, (_, eml, _, meta) in self.entries.items():
            dest = os.path.join(self._tmp, "export-%s.eml" % qid)
            rc, so, se = cli(self.conf, "export", qid, "--to", dest)
            self.assertEqual(rc, 0, se)
            with open(dest, "rb") as f:
                got = f.read()
            with open(eml, "rb") as f:
                self.assertEqual(got, f.read(), "%s: not the .eml" % qid)
            self.assertEqual(got, self.direct_by_sha.get(meta["sha256"]),
                             "%s: not what Dovecot holds" % qid)
            self.assertEqual(os.stat(dest).st_mode & 0o777, 0o600)
        qid, eml, _, _ = self.entry_of("grace")
        dest = os.path.join(self._tmp, "export-%s.eml" % qid)
        with open(dest, "wb") as f:
            f.write(b"precious")
        rc, _, se = cli(self.conf, "export", qid, "--to", dest)
        self.assertEqual(rc, 1)
        self.assertIn("exists", se)
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        rc, _, se = cli(self.conf, "export", qid, "--to", dest, "--force")
        self.assertEqual(rc, 0, se)
        rc, so, se = cli(self.conf, "export", qid, "--to", "-")
        self.assertEqual(rc, 0, se)
        with open(eml, "rb") as f:
            orig = f.read()
        self.assertEqual(so, orig)
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), orig)
        self.assertEqual(cli(self.conf, "export", qid)[0], 2)
        self.assertEqual(cli(self.conf, "export", "../" + qid, "--to", dest)[0], 2)

    def test_6_release_imap(self):
        qid, eml, _, meta = self.entry_of("bob")
        with open(eml, "rb") as f:
            orig = f.read()
        rc, so, se = cli(self.conf, "release", qid)
        self.assertEqual(rc, 0, se)
        self.assertNotIn(MASTER_PW, so.decode() + se)
        out("release: " + so.decode().strip())
        # what bob's INBOX on the target now holds, byte for byte
        import imaplib
        c = imaplib.IMAP4(mh.HOST, self.target.imap_port, timeout=60)
        try:
            c.login("bob", TARGET_USERS["bob"])
            c.select("INBOX", readonly=True)
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            got = mh.fetch_by_uid(mh.imaplib_responses(data))
        finally:
            c.logout()
        self.assertEqual(len(got), 1, "one message appended")
        self.assertEqual(list(got.values())[0]["BODY[]"], orig, "appended message differs")

        # remembered: in the listing, and in the index's released table
        e = {x["id"]: x for x in self.list_json()}[qid]
        self.assertIsNotNone(e["released_at"])
        self.assertIn("via imap", e["released_by"])
        db = sqlite3.connect(os.path.join(self.qdir, ".index.sqlite"))
        try:
            row = db.execute("SELECT id, by FROM released WHERE sha256 = ?",
                             (meta["sha256"],)).fetchone()
        finally:
            db.close()
        self.assertEqual(row[0], qid)
        # a second release needs --force
        rc, _, se = cli(self.conf, "release", qid)
        self.assertEqual(rc, 1)
        self.assertIn("--force", se)
        rc, so, se = cli(self.conf, "list")
        self.assertIn("(released)", so.decode())

    def test_7_release_smtp(self):
        qid, eml, _, meta = self.entry_of("bob", skip=[self.entry_of("bob")[0]])
        with open(eml, "rb") as f:
            orig = f.read()
        before = len(self.sink.mails)
        rc, so, se = cli(self.conf_smtp, "release", qid)
        self.assertEqual(rc, 0, se)
        self.assertEqual(len(self.sink.mails), before + 1)
        m = self.sink.mails[-1]
        self.assertEqual(m["from"].split()[0], "<quarantine@example.test>")
        self.assertEqual([r.split()[0] for r in m["rcpt"]], ["<bob@example.test>"])
        self.assertEqual(m["data"], orig, "DATA differs from the original")
        e = {x["id"]: x for x in self.list_json()}[qid]
        self.assertIn("via smtp", e["released_by"])

    def test_7b_released_message_is_delivered_afterwards(self):
        """The daemon remembers a release: the same message downloaded
        again through the proxy arrives as the original, not as a notice,
        while the other malware of the mailbox is still replaced."""
        released = {x["sha256"] for x in self.list_json("--user", "bob") if x.get("released_at")}
        if not released:
            self.test_7_release_smtp()
            released = {x["sha256"] for x in self.list_json("--user", "bob")
                        if x.get("released_at")}
        self.assertTrue(released)
        got = mh.fetch_all_raw(self.proxy.port, "bob", self.st["users"]["bob"]["password"])
        delivered = notices = 0
        for (_, direct), (_, through) in zip(self.bob_direct["RETR"], got["RETR"]):
            sha = hashlib.sha256(mh.unstuff(direct)).hexdigest()
            if sha in released:
                self.assertEqual(through, direct, "a released message was not delivered as it is")
                delivered += 1
            elif sha in self.direct_by_sha and through != direct:
                notices += 1
        self.assertGreaterEqual(delivered, 1)
        self.assertEqual(notices, self.n_bob - delivered,
                         "the other malware must still arrive as notices")
        self.assertIn("released before: delivered", self.proxy.log_text())

    def test_8_release_failures(self):
        qid = self.entry_of("grace")[0]
        bad_pw = os.path.join(self._tmp, "bad.pw")
        with open(bad_pw, "w") as f:
            f.write("Wrong-pw-998877\n")
        conf = cli_config(os.path.join(self._tmp, "cli-badpw.yaml"), self.qdir, {
            "method": "imap", "imap_url": "imap://127.0.0.1:%d" % self.target.imap_port,
            "imap_user": "%u*" + MASTER, "password_file": bad_pw, "ca": self.st["pki"]["ca"]})
        rc, so, se = cli(conf, "release", qid)
        self.assertEqual(rc, 1)
        self.assertEqual(se.count("\n"), 1, se)
        self.assertNotIn("Wrong-pw-998877", so.decode() + se)
        # a CA that does not sign the target's certificate: STARTTLS refused
        conf = cli_config(os.path.join(self._tmp, "cli-badca.yaml"), self.qdir, {
            "method": "imap", "imap_url": "imap://127.0.0.1:%d" % self.target.imap_port,
            "imap_user": "%u*" + MASTER, "password_file": self.pwfile,
            "ca": self.st["pki"]["other_ca"]})
        rc, so, se = cli(conf, "release", qid)
        self.assertEqual(rc, 1, se)
        self.assertNotIn(MASTER_PW, so.decode() + se)
        # credentials in the URL are refused
        conf = cli_config(os.path.join(self._tmp, "cli-urlpw.yaml"), self.qdir, {
            "method": "imap", "imap_url": "imap://x:y@127.0.0.1:%d" % self.target.imap_port,
            "imap_user": "%u", "password_file": self.pwfile})
        rc, _, se = cli(conf, "release", qid)
        self.assertEqual(rc, 1)
        self.assertIn("credentials", se)
        e = {x["id"]: x for x in self.list_json()}[qid]
        self.assertIsNone(e["released_at"], "a failed release was remembered")

    def test_9_delete_and_purge(self):
        d, conf = self.copy_quarantine("qcopy")
        ids = sorted(self.entries)
        rc, so, se = cli(conf, "delete", ids[0])
        self.assertEqual(rc, 0, se)
        self.assertFalse(os.path.exists(os.path.join(d, ids[0] + ".json")))
        self.assertFalse(os.path.exists(os.path.join(d, ids[0] + ".eml")))
        self.assertEqual(cli(conf, "delete", ids[0])[0], 1)
        self.assertEqual(len(self.list_json(conf=conf)), len(ids) - 1)
        # one entry received 40 days ago: purge alone (retention 30 days) takes it
        old = ids[1]
        with open(os.path.join(d, old + ".json")) as f:
            meta = json.load(f)
        meta["received_at"] = (datetime.datetime.now(datetime.timezone.utc)
                               - datetime.timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
        tmp = os.path.join(d, old + ".json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.rename(tmp, os.path.join(d, old + ".json"))
        rc, so, se = cli(conf, "purge")
        self.assertEqual(rc, 0, se)
        self.assertIn("purged 1 entry", so.decode())
        self.assertFalse(os.path.exists(os.path.join(d, old + ".eml")))
        rc, so, se = cli(conf, "purge", "--older-than", "30d")
        self.assertIn("purged 0 entries", so.decode())
        rc, so, se = cli(conf, "purge", "--older-than", "0s")
        self.assertEqual(rc, 0, se)
        self.assertIn("purged %d entries" % (len(ids) - 2), so.decode())
        self.assertEqual(self.list_json(conf=conf), [])
        self.assertEqual([f for f in os.listdir(d) if not f.startswith(".index")], [])
        self.assertEqual(cli(conf, "purge", "--older-than", "soon")[0], 2)
        # the daemon's quarantine is untouched
        self.assertEqual(len(self.list_json()), len(ids))


class QuarantineScale(unittest.TestCase):
    """Many entries (10,000 in the default run; the bench sets
    MAILMOAT_QUARANTINE_SCALE=100000), written directly (small bodies),
    then listed."""

    N = int(os.environ.get("MAILMOAT_QUARANTINE_SCALE", "10000"))
    USERS = 100

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(mh.mailmoat_bin()):
            raise unittest.SkipTest("mailmoat binary not built")
        import tempfile
        cls.tmp = tempfile.mkdtemp(prefix="mailmoat-it-qscale-")
        cls.qdir = os.path.join(cls.tmp, "q")
        os.mkdir(cls.qdir, 0o700)
        cls.conf = cli_config(os.path.join(cls.tmp, "m.yaml"), cls.qdir)
        base = int(time.time()) - 30 * 86400 + 3600
        t0 = time.monotonic()
        cls.ids = []
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for i in range(cls.N):
            t = base + i * 20
            tm = time.gmtime(t)
            qid = time.strftime("%Y%m%dT%H%M%SZ", tm) + "-%08x" % i
            body = b"Subject: n %d\r\n\r\nx\r\n" % i
            meta = {"id": qid, "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", tm),
                    "protocol": "pop3", "user": "user%d" % (i % cls.USERS),
                    "upstream": "127.0.0.1:110", "signature": "Eicar-Test-Signature",
                    "verdict": "infected", "size": len(body), "truncated": False,
                    "sha256": hashlib.sha256(body).hexdigest(), "from": "a@b.example",
                    "subject": "n %d \u8acb\u6c42" % i, "session": "0f62c567",
                    "message": "msg=%d" % i}
            fd = os.open(os.path.join(cls.qdir, qid + ".eml"), flags, 0o600)
            os.write(fd, body)
            os.close(fd)
            fd = os.open(os.path.join(cls.qdir, qid + ".json"), flags, 0o600)
            os.write(fd, json.dumps(meta, indent=2, ensure_ascii=False).encode() + b"\n")
            os.close(fd)
            cls.ids.append(qid)
        out("quarantine scale: %d entries written in %.1f s" % (cls.N, time.monotonic() - t0))

    @classmethod
    def tearDownClass(cls):
        if not os.environ.get("MAILMOAT_IT_KEEP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def timed(self, *args):
        t0 = time.monotonic()
        rc, so, se = cli(self.conf, *args)
        ms = (time.monotonic() - t0) * 1000
        self.assertEqual(rc, 0, se)
        return so, ms

    def test_list_100k(self):
        want = [q for i, q in enumerate(self.ids) if i % self.USERS == 7][::-1]
        so, first = self.timed("list", "--json", "--user", "user7")
        got = json.loads(so)
        self.assertEqual([e["id"] for e in got], want)
        self.assertEqual({e["user"] for e in got}, {"user7"})
        self.assertEqual(got[0]["subject"], "n %d \u8acb\u6c42" % (self.N - self.USERS + 7))
        # the directory's mtime is trusted once it is older than 2 s
        time.sleep(2.5)
        so, again_readdir = self.timed("list", "--json", "--user", "user7")
        self.assertEqual([e["id"] for e in json.loads(so)], want)
        so, again = self.timed("list", "--json", "--user", "user7")
        self.assertEqual([e["id"] for e in json.loads(so)], want)
        so, table = self.timed("list")
        lines = so.decode("utf-8").splitlines()
        self.assertEqual(len(lines), self.N + 1)
        self.assertTrue(lines[1].startswith(self.ids[-1]), lines[1])
        self.assertTrue(lines[-1].startswith(self.ids[0]), lines[-1])
        so, since = self.timed("list", "--json", "--since", "1d")
        self.assertEqual(len(json.loads(so)), sum(1 for i in range(self.N)
                                                  if i * 20 >= 29 * 86400 - 3600))
        # one more entry: the next list reads the directory again
        qid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-ffffffff"
        shutil.copy(os.path.join(self.qdir, self.ids[7] + ".eml"),
                    os.path.join(self.qdir, qid + ".eml"))
        with open(os.path.join(self.qdir, self.ids[7] + ".json")) as f:
            meta = json.load(f)
        meta["id"] = qid
        meta["received_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(os.path.join(self.qdir, qid + ".json"), "w") as f:
            json.dump(meta, f)
        so, after_new = self.timed("list", "--json", "--user", "user7")
        got = json.loads(so)
        self.assertEqual([e["id"] for e in got], [qid] + want)
        out("quarantine scale (%d entries): first list --json --user (builds the index) "
            "%.0f ms; next list, directory re-read %.0f ms; list, directory unchanged %.0f ms; "
            "list after one new entry %.0f ms; table of all %.0f ms; --since 1d %.0f ms"
            % (self.N, first, again_readdir, again, after_new, table, since))


if __name__ == "__main__":
    unittest.main()
