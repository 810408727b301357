"""Transparent mode on a router, end to end, in network namespaces.

Three namespaces this test makes and deletes (private addresses inside
them only; the host's own interfaces, routes and firewall are never
touched):

    client 10.77.1.2 --veth-- 10.77.1.1 router 10.77.2.1 --veth-- 10.77.2.2 server

The server runs a Dovecot on 10.77.2.2:110 and :143 with a mailbox of
clean messages and an EICAR one. The router forwards (ip_forward=1), has
deploy/nftables/mailmoat.nft loaded (only its define lines set for this
router) and runs mailmoat with two `upstream: transparent` listeners on
0.0.0.0:10110 and :10143. The client runs poplib and imaplib against
10.77.2.2:110 and :143, as if it talked to the server directly; the
router's rules hand the connections to mailmoat, which finds the server
from the connection's original destination. Clean messages must arrive
exactly as Dovecot serves them (fetched inside the server namespace for
reference), the EICAR one as the notice, and the proxy's own upstream
connections must carry the mark 0x4d4d.

Skips (with the reason) only where namespaces or nftables cannot be used:
not root, no `ip` or `nft`, no veth, no nf_tables NAT in the kernel.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from itbase import NOTICE_MARK, mh, out

RULES = os.path.join(mh.source_dir(), "deploy", "nftables", "mailmoat.nft")

NET_LAN = "10.77.1"
NET_SRV = "10.77.2"
CLIENT_IP = NET_LAN + ".2"
ROUTER_LAN_IP = NET_LAN + ".1"
ROUTER_SRV_IP = NET_SRV + ".1"
SERVER_IP = NET_SRV + ".2"
LAN_IF = "mmlan0"            # the router's LAN side (the rules' LAN_IF)
POP3_PORT, IMAP_PORT = 10110, 10143
MARK = 0x4d4d
USER, PASSWORD = "tina", "tina-transparent-pw"
NS_RE = re.compile(r"^mmtp(\d+)-(client|router|server)$")

# The mail client: run inside a namespace (ip netns exec NS python3 this),
# prints what it fetched as JSON (bytes in base64).
CLIENT_PY = textwrap.dedent('''\
    import base64, imaplib, json, poplib, sys
    sys.path.insert(0, sys.argv[1])
    import mmharness as mh
    poplib._MAXLINE = imaplib._MAXLINE = 1 << 20
    proto, host, port, user, pw = sys.argv[2:7]
    b = lambda x: base64.b64encode(x).decode("ascii")
    res = {}
    if proto == "pop3":
        p = poplib.POP3(host, int(port), timeout=60)
        res["greeting"] = b(p.getwelcome())
        p.user(user)
        p.pass_(pw)
        res["stat"] = list(p.stat())
        res["list"] = [b(l) for l in p.list()[1]]
        res["uidl"] = [b(l) for l in p.uidl()[1]]
        res["retr"] = []
        for i in range(1, res["stat"][0] + 1):
            st, lines, octets = p.retr(i)
            res["retr"].append({"status": b(st), "msg": b(b"\\r\\n".join(lines) + b"\\r\\n")})
        res["quit"] = b(p.quit())
    else:
        c = imaplib.IMAP4(host, int(port), timeout=60)
        res["greeting"] = b(c.welcome)
        c.login(user, pw)
        typ, data = c.select("INBOX", readonly=True)
        res["exists"] = int(data[0])
        typ, data = c.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        if typ != "OK":
            raise SystemExit("UID FETCH: %s %r" % (typ, data))
        got = mh.fetch_by_uid(mh.imaplib_responses(data))
        res["msgs"] = {str(u): {"size": int(a["RFC822.SIZE"]), "body": b(a["BODY[]"])}
                       for u, a in got.items()}
        c.logout()
    print(json.dumps(res))
''')


def run(args, check=True, timeout=60, input=None):
    """Runs a command; input (text) goes to its stdin."""
    r = subprocess.run(args, input=input.encode() if input is not None else None,
                       stdin=subprocess.DEVNULL if input is None else None,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(args), r.returncode,
                                                   r.stderr.decode("utf-8", "replace").strip()))
    return r


def nsrun(ns, args, **kw):
    return run(["ip", "netns", "exec", ns] + list(args), **kw)


def ns_pids(ns):
    r = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def delete_ns(ns, workdirs=None):
    """Deletes a namespace of this test (its veth ends go with it) after
    killing, by PID, whatever still runs in it. workdirs (a set) collects
    this test's work directories named on those processes' command lines."""
    for pid in ns_pids(ns):
        if workdirs is not None:
            workdirs.update(re.findall(r"(/\S*/mailmoat-it-transparent-[^/\s]+)/", mh.pid_cmdline(pid)))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        mh.wait_pid_gone(pid, 5)
    run(["ip", "netns", "del", ns], check=False)


def remove_stale_namespaces():
    """Namespaces left behind by an earlier run of this test that was
    killed before its clean-up (its PID is in the name and gone)."""
    r = run(["ip", "netns", "list"], check=False)
    workdirs = set()
    for line in r.stdout.decode("utf-8", "replace").splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not mh.pid_alive(int(m.group(1))):
            delete_ns(name, workdirs)
    for d in workdirs:
        shutil.rmtree(d, ignore_errors=True)


def rules_for_router(text, lan_if, pop3_port, imap_port):
    """The shipped rules with only their three define lines set."""
    values = {"LAN_IF": '"%s"' % lan_if, "POP3_PORT": str(pop3_port), "IMAP_PORT": str(imap_port)}
    out_lines, seen = [], set()
    for line in text.split("\n"):
        m = re.match(r"^define\s+(LAN_IF|POP3_PORT|IMAP_PORT)\s*=", line)
        if m:
            if m.group(1) in seen:
                raise AssertionError("%s defined twice in %s" % (m.group(1), RULES))
            seen.add(m.group(1))
            line = "define %s = %s" % (m.group(1), values[m.group(1)])
        out_lines.append(line)
    missing = set(values) - seen
    if missing:
        raise AssertionError("%s lacks the define lines %s" % (RULES, sorted(missing)))
    return "\n".join(out_lines)


def b64(s):
    return base64.b64decode(s)


class TransparentRouter(unittest.TestCase):

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("network namespaces and nftables need root")
        for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
            if not shutil.which(tool):
                raise unittest.SkipTest("`%s` not installed (apt-get install %s)" % (tool, pkg))
        if not os.path.exists(mh.mailmoat_bin()):
            raise unittest.SkipTest("mailmoat binary not built: %s" % mh.mailmoat_bin())
        if not os.path.exists(mh.DOVECOT_BIN):
            raise unittest.SkipTest("no Dovecot at %s" % mh.DOVECOT_BIN)
        remove_stale_namespaces()
        cls.tmp = tempfile.mkdtemp(prefix="mailmoat-it-transparent-")
        os.chmod(cls.tmp, 0o755)
        if not os.environ.get("MAILMOAT_IT_KEEP"):
            cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        t0 = time.monotonic()
        cls.ns = {role: "mmtp%d-%s" % (os.getpid(), role) for role in ("client", "router", "server")}
        cls._make_namespaces()
        cls._start_dovecot()
        cls.script = os.path.join(cls.tmp, "client.py")
        with open(cls.script, "w") as f:
            f.write(CLIENT_PY)
        # The plumbing, before any rule: the client reaches the server
        # through the router, and Dovecot sees the client's own address.
        direct = cls.client("client", "pop3", 110)
        if direct["stat"][0] != len(cls.described):
            raise AssertionError("direct POP3 through the router: %r" % direct["stat"])
        if "rip=%s" % CLIENT_IP not in cls.dovecot.log_tail(200):
            raise AssertionError("Dovecot did not see the client's address:\n" + cls.dovecot.log_tail())
        # The reference: straight from Dovecot, inside the server namespace.
        cls.ref_pop3 = cls.client("server", "pop3", 110)
        cls.ref_imap = cls.client("server", "imap", 143)
        cls._load_rules()
        cls._start_mailmoat()
        out("namespaces, Dovecot on %s, rules and mailmoat in the router: %.1f s"
            % (SERVER_IP, time.monotonic() - t0))

    # ---- set-up pieces ----

    @classmethod
    def _make_namespaces(cls):
        c, r, s = cls.ns["client"], cls.ns["router"], cls.ns["server"]
        for role in ("client", "router", "server"):
            res = run(["ip", "netns", "add", cls.ns[role]], check=False)
            if res.returncode != 0:
                raise unittest.SkipTest("cannot create a network namespace: %s"
                                        % res.stderr.decode("utf-8", "replace").strip())
            cls.addClassCleanup(delete_ns, cls.ns[role])
        # veth pairs made directly inside the namespaces: the host's own
        # interface list never sees them.
        res = run(["ip", "-n", c, "link", "add", "mmcli0", "type", "veth", "peer", "name", LAN_IF,
                   "netns", r], check=False)
        if res.returncode != 0:
            raise unittest.SkipTest("cannot create veth pairs: %s"
                                    % res.stderr.decode("utf-8", "replace").strip())
        run(["ip", "-n", r, "link", "add", "mmsrv0", "type", "veth", "peer", "name", "mmsrv1",
             "netns", s])
        for ns, dev, addr in ((c, "mmcli0", CLIENT_IP), (r, LAN_IF, ROUTER_LAN_IP),
                              (r, "mmsrv0", ROUTER_SRV_IP), (s, "mmsrv1", SERVER_IP)):
            run(["ip", "-n", ns, "addr", "add", addr + "/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        for ns in (c, r, s):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", c, "route", "add", "default", "via", ROUTER_LAN_IP])
        run(["ip", "-n", s, "route", "add", "default", "via", ROUTER_SRV_IP])
        nsrun(r, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        # nftables NAT usable in a namespace? (a probe table, then gone)
        probe = ("table ip mmprobe {\n chain p {\n  type nat hook prerouting priority dstnat;\n"
                 "  tcp dport 9 redirect to :10\n }\n}\n")
        res = nsrun(r, ["nft", "-f", "-"], check=False, input=probe)
        if res.returncode != 0:
            raise unittest.SkipTest("nftables NAT not usable in a namespace: %s"
                                    % res.stderr.decode("utf-8", "replace").strip())
        nsrun(r, ["nft", "delete", "table", "ip", "mmprobe"])

    @classmethod
    def _start_dovecot(cls):
        cls.dovecot = mh.Dovecot(os.path.join(cls.tmp, "dovecot"), {USER: PASSWORD},
                                 pop3_port=110, imap_port=143, listen_host=SERVER_IP,
                                 netns=cls.ns["server"])
        to = "%s@example.test" % USER
        plan = [("plain", mh.msg_plain, False), ("multipart", mh.msg_multipart_attachment, False),
                ("eicar", mh.msg_eicar_attachment, True), ("japanese", mh.msg_japanese_utf8, False),
                ("dots", mh.msg_dots, False), ("html", mh.msg_html_alternative, False)]
        cls.described = []
        for n, (kind, fn, infected) in enumerate(plan):
            data = fn(to=to, n=n)
            cls.dovecot.add_message(USER, data)
            cls.described.append({"num": n + 1, "kind": kind, "infected": infected,
                                  "message_id": mh.header_of(data, "Message-ID")})
        cls.dovecot.start()
        cls.addClassCleanup(cls.dovecot.stop)

    @classmethod
    def _load_rules(cls):
        with open(RULES) as f:
            shipped = f.read()
        text = rules_for_router(shipped, LAN_IF, POP3_PORT, IMAP_PORT)
        cls.rules_path = os.path.join(cls.tmp, "mailmoat.nft")
        with open(cls.rules_path, "w") as f:
            f.write(text)
        r = cls.ns["router"]
        nsrun(r, ["nft", "-f", cls.rules_path])
        # Loading again replaces the table (the file is idempotent).
        nsrun(r, ["nft", "-f", cls.rules_path])
        # A test-only table counting the router's own connections to the
        # mail ports, marked (mailmoat's, SO_MARK 0x4d4d) or not.
        nsrun(r, ["nft", "-f", "-"], input=(
            "table inet mmtest {\n"
            " counter marked {}\n counter unmarked {}\n"
            " chain out {\n  type filter hook output priority 0; policy accept;\n"
            "  tcp dport { 110, 143 } tcp flags syn meta mark 0x%x counter name \"marked\"\n"
            "  tcp dport { 110, 143 } tcp flags syn meta mark != 0x%x counter name \"unmarked\"\n"
            " }\n}\n" % (MARK, MARK)))

    @classmethod
    def _start_mailmoat(cls):
        wd = os.path.join(cls.tmp, "mailmoat")
        os.makedirs(os.path.join(wd, "spool"))
        cls.quarantine_dir = os.path.join(wd, "quarantine")
        listeners = ("listeners:\n"
                     "  - protocol: pop3\n    listen: 0.0.0.0:%d\n    upstream: transparent\n"
                     "  - protocol: imap\n    listen: 0.0.0.0:%d\n    upstream: transparent\n"
                     % (POP3_PORT, IMAP_PORT))
        text = mh.mailmoat_config_yaml([], cls.quarantine_dir, spool_dir=os.path.join(wd, "spool"))
        assert text.count("listeners:\n") == 1
        cls.config_path = os.path.join(wd, "mailmoat.yaml")
        with open(cls.config_path, "w") as f:
            f.write(text.replace("listeners:\n", listeners, 1))
        rc, said = mh.check_config(cls.config_path)
        if rc != 0:
            raise AssertionError("mailmoat --check-config rejects transparent listeners:\n%s\n%s"
                                 % (said, open(cls.config_path).read()))
        cls.log_path = os.path.join(wd, "mailmoat.log")
        cls._log = open(cls.log_path, "ab")
        # `ip netns exec` execs the command: the PID is mailmoat's own.
        cls.proc = subprocess.Popen(["ip", "netns", "exec", cls.ns["router"], mh.mailmoat_bin(),
                                     "--config", cls.config_path],
                                    stdin=subprocess.DEVNULL, stdout=cls._log, stderr=cls._log)
        cls.addClassCleanup(cls._stop_mailmoat)
        try:
            for port in (POP3_PORT, IMAP_PORT):
                mh.wait_port(port, 30, cls.proc, "mailmoat", host="0.0.0.0", pid=cls.proc.pid)
        except RuntimeError as ex:
            raise RuntimeError("%s\n--- mailmoat log ---\n%s" % (ex, cls.log_text()[-4000:]))

    @classmethod
    def _stop_mailmoat(cls):
        """SIGTERM; a crash during the tests or an unclean exit (a sanitizer
        report) is an error of the class."""
        was_alive = cls.proc.poll() is None
        if was_alive:
            cls.proc.send_signal(signal.SIGTERM)
            try:
                cls.proc.wait(20)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
                cls.proc.wait()
        cls._log.close()
        if not was_alive or cls.proc.returncode != 0:
            raise AssertionError("mailmoat %s (status %s); log tail:\n%s" % (
                "exited during the tests" if not was_alive else "did not exit 0 on SIGTERM",
                cls.proc.returncode, cls.log_text()[-3000:]))

    # ---- helpers ----

    @classmethod
    def client(cls, role, proto, port):
        """Runs the mail client in namespace role against SERVER_IP:port."""
        r = nsrun(cls.ns[role], [sys.executable, cls.script, os.path.join(mh.source_dir(), "deploy", "lib"),
                                 proto, SERVER_IP, str(port), USER, PASSWORD], check=False, timeout=180)
        if r.returncode != 0:
            raise AssertionError("%s client in %s failed (%d):\n%s\n--- mailmoat log ---\n%s" % (
                proto, role, r.returncode, r.stderr.decode("utf-8", "replace")[-3000:],
                cls.log_text()[-3000:]))
        return json.loads(r.stdout)

    @classmethod
    def log_text(cls):
        try:
            with open(cls.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def counters(self):
        res = {}
        for name in ("marked", "unmarked"):
            r = nsrun(self.ns["router"], ["nft", "list", "counter", "inet", "mmtest", name])
            m = re.search(rb"packets (\d+)", r.stdout)
            self.assertIsNotNone(m, r.stdout)
            res[name] = int(m.group(1))
        return res

    def sessions(self, proto):
        """The proxy's session-start log lines for proto."""
        return [e for e in (mh.parse_log_line(l) for l in self.log_text().splitlines())
                if e["_words"][-2:] == [proto, "connect"] and "upstream" in e]

    def assertAlive(self):
        self.assertIsNone(self.proc.poll(), "mailmoat is gone (status %s); log tail:\n%s"
                          % (self.proc.returncode, self.log_text()[-3000:]))

    def assertNotice(self, notice, original):
        subj = mh.header_of(notice, "Subject") or ""
        self.assertIn(NOTICE_MARK, subj, "the EICAR message did not arrive as the notice")
        self.assertNotIn(mh.EICAR, notice)
        self.assertNotIn(base64.b64encode(mh.EICAR)[:40], notice)
        self.assertEqual(mh.header_of(notice, "Message-ID"), mh.header_of(original, "Message-ID"))
        qid = mh.header_of(notice, "X-Mailmoat-Quarantine-Id")
        self.assertIsNotNone(qid, "notice without X-Mailmoat-Quarantine-Id")
        self.assertTrue(os.path.exists(os.path.join(self.quarantine_dir, qid + ".eml")),
                        "quarantine entry %s not in %s" % (qid, self.quarantine_dir))
        return qid

    # ---- tests ----

    def test_pop3_through_router(self):
        """poplib in the client namespace to 10.77.2.2:110 gets Dovecot's
        answers through mailmoat; the EICAR message as the notice."""
        got = self.client("client", "pop3", 110)
        want = self.ref_pop3
        # The greeting's APOP timestamp differs per connection.
        greeting = lambda g: b64(g).split(b"<")[0]
        self.assertEqual(greeting(got["greeting"]), greeting(want["greeting"]), "greeting differs")
        for key in ("stat", "list", "uidl"):
            self.assertEqual(got[key], want[key], "%s differs" % key.upper())
        self.assertEqual(len(got["retr"]), len(self.described))
        for m, g, w in zip(self.described, got["retr"], want["retr"]):
            if m["infected"]:
                self.assertNotice(b64(g["msg"]), b64(w["msg"]))
            else:
                self.assertEqual(b64(g["status"]), b64(w["status"]), "RETR %d status" % m["num"])
                self.assertEqual(b64(g["msg"]), b64(w["msg"]),
                                 "RETR %d (%s) not byte-identical" % (m["num"], m["kind"]))
        self.assertAlive()
        sess = [e for e in self.sessions("pop3") if e.get("upstream") == "%s:110" % SERVER_IP]
        self.assertTrue(sess, "no pop3 session with upstream=%s:110 in the log:\n%s"
                        % (SERVER_IP, self.log_text()[-3000:]))
        self.assertTrue(any(e.get("client", "").startswith(CLIENT_IP) for e in sess),
                        "the session's client is not %s: %r" % (CLIENT_IP, [e["_line"] for e in sess]))
        self.assertIn("rip=%s" % ROUTER_SRV_IP, self.dovecot.log_tail(400),
                      "Dovecot never saw a connection from the router")
        out("POP3 via REDIRECT: %d messages, %d clean byte-identical, EICAR as the notice"
            % (len(got["retr"]), sum(not m["infected"] for m in self.described)))

    def test_imap_through_router(self):
        """imaplib in the client namespace to 10.77.2.2:143: whole-message
        FETCHes identical for clean mail, the notice for EICAR."""
        got = self.client("client", "imap", 143)
        want = self.ref_imap
        self.assertEqual(got["exists"], want["exists"])
        self.assertEqual(sorted(got["msgs"]), sorted(want["msgs"]))
        for m in self.described:
            uid = str(m["num"])
            g, w = b64(got["msgs"][uid]["body"]), b64(want["msgs"][uid]["body"])
            self.assertEqual(mh.header_of(w, "Message-ID"), m["message_id"], "UID %s order" % uid)
            if m["infected"]:
                self.assertNotice(g, w)
            else:
                self.assertEqual(g, w, "UID %s (%s) not byte-identical" % (uid, m["kind"]))
                self.assertEqual(got["msgs"][uid]["size"], want["msgs"][uid]["size"])
        self.assertAlive()
        sess = [e for e in self.sessions("imap") if e.get("upstream") == "%s:143" % SERVER_IP]
        self.assertTrue(sess, "no imap session with upstream=%s:143 in the log:\n%s"
                        % (SERVER_IP, self.log_text()[-3000:]))
        self.assertTrue(any(e.get("client", "").startswith(CLIENT_IP) for e in sess),
                        "the session's client is not %s: %r" % (CLIENT_IP, [e["_line"] for e in sess]))
        out("IMAP via REDIRECT: %d messages, clean byte-identical, EICAR as the notice"
            % len(got["msgs"]))

    def test_upstream_connections_marked(self):
        """Every connection the router opens to a mail port is mailmoat's,
        and carries the mark 0x4d4d the rules skip."""
        self.client("client", "pop3", 110)
        self.client("client", "imap", 143)
        c = self.counters()
        self.assertGreaterEqual(c["marked"], 2, "mailmoat's upstream SYNs are not marked 0x%x: %r"
                                % (MARK, c))
        self.assertEqual(c["unmarked"], 0, "unmarked connections from the router: %r" % c)
        self.assertAlive()

    def test_rules_file_as_loaded(self):
        """The router runs the shipped file with only its defines set: both
        redirects, for IPv4 and IPv6 alike (table inet), and the mark skip
        before them."""
        with open(RULES) as f:
            shipped = f.read().split("\n")
        with open(self.rules_path) as f:
            loaded = f.read().split("\n")
        self.assertEqual(len(shipped), len(loaded))
        for s, l in zip(shipped, loaded):
            if s != l:
                self.assertRegex(s, r"^define (LAN_IF|POP3_PORT|IMAP_PORT) = ")
                self.assertEqual(s.split("=")[0], l.split("=")[0])
        listing = nsrun(self.ns["router"], ["nft", "list", "table", "inet", "mailmoat"]).stdout.decode()
        body = listing[listing.index("chain prerouting"):]
        self.assertRegex(body, r"type nat hook prerouting priority dstnat")
        mark = body.index("meta mark 0x00004d4d return")
        r110 = body.index('iifname "%s" tcp dport 110 redirect to :%d' % (LAN_IF, POP3_PORT))
        r143 = body.index('iifname "%s" tcp dport 143 redirect to :%d' % (LAN_IF, IMAP_PORT))
        self.assertLess(mark, min(r110, r143), "the mark skip must come before the redirects")


if __name__ == "__main__":
    unittest.main()
