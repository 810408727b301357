#!/usr/bin/env python3
"""The mailmoat demo (run by deploy/demo.sh, which installs and builds first).

A throwaway Dovecot on 127.0.0.1 holds a mailbox of six messages, two of
them malicious. A real POP3 client (python's poplib, then fetchmail)
downloads it through mailmoat twice:

  1. on_malicious: abort      the classic stream firewall: the download
                              stalls at the same message on every retry;
  2. on_malicious: quarantine every message arrives, the malicious ones as
                              notices, the originals in the quarantine.

Then an IMAP client (python's imaplib) reads the same mailbox in place
through mailmoat:

  3. IMAP                     the listing is the server's; opening a
                              malicious message shows the notice, also when
                              it is downloaded in 64 KiB chunks.

Usage: demo.py --workdir DIR [--bin build/mailmoat]. Everything it starts
is stopped before it returns; DIR is left for the caller to remove.
"""

import argparse
import email
import email.header
import email.policy
import os
import poplib
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

import mmharness as mh  # noqa: E402

poplib._MAXLINE = 1 << 20
USER, PASSWORD = "taro", "Taro-demo-pw-3Fq"
RETRIES = 3


def say(text=""):
    print(text, flush=True)


def heading(text):
    say()
    say("=" * 72)
    say(text)
    say("=" * 72)


def decode(value):
    if value is None:
        return ""
    return str(email.header.make_header(email.header.decode_header(value)))


def build_mailbox(dv):
    to = "taro@example.jp"
    msgs = [
        mh.msg_plain(to=to, n=0, subject="Lunch on Friday?"),
        mh.msg_multipart_attachment(to=to, n=1),
        mh.msg_eicar_attachment(to=to, n=2, pad_text=150000),   # > 64 KiB: IMAP chunks
        mh.msg_japanese_utf8(to=to, n=3),
        mh.msg_clamzip_attachment(to=to, n=4),
        mh.msg_japanese_iso2022jp(to=to, n=5),
    ]
    for m in msgs:
        dv.add_message(USER, m)
    return msgs


def download(port, label):
    """One download with poplib, message by message, as a mail client
    does. Returns (messages received, number where it stopped or None)."""
    got = []
    p = None
    try:
        p = poplib.POP3(mh.HOST, port, timeout=60)
        p.user(USER)
        p.pass_(PASSWORD)
        count, total = p.stat()
        for n in range(1, count + 1):
            try:
                _, lines, _ = p.retr(n)
            except (poplib.error_proto, EOFError, OSError) as ex:
                say("    %d  ✗  %s" % (n, describe_failure(ex)))
                return got, n, count
            data = b"\r\n".join(lines) + b"\r\n"
            got.append(data)
            subj = decode(mh.header_of(data, "Subject"))
            mark = "!" if "[mailmoat:" in subj else "✓"
            say("    %d  %s  %s" % (n, mark, subj[:80]))
        p.quit()
        return got, None, count
    finally:
        if p is not None:
            p.close()


def describe_failure(ex):
    text = str(ex)
    if "EOF" in text or isinstance(ex, (EOFError, ConnectionError)):
        return "connection closed by the proxy in the middle of the download"
    return text


def verdict_lines(proxy):
    return [e["_line"] for e in proxy.log_events() if "verdict" in e and e.get("verdict") != "clean"]


def run(workdir, binary):
    dv = mh.Dovecot(os.path.join(workdir, "dovecot"), {USER: PASSWORD})
    msgs = build_mailbox(dv)
    dv.start()
    with open(os.path.join(workdir, "dovecot.pid"), "w") as f:
        f.write("%d\n" % dv.pid)
    proxies = []
    try:
        heading("The upstream mail server (a throwaway Dovecot on %s:%d)" % (mh.HOST, dv.pop3_port))
        say("Mailbox of %s: %d messages, two of them malicious" % (USER, len(msgs)))
        for i, m in enumerate(msgs, 1):
            subj = decode(mh.header_of(m, "Subject"))
            bad = ""
            if mh.EICAR in m or b"WDVPIVAlQEFQWzRcUFpYNTQo" in m:
                bad = "   <- EICAR test virus, base64 attachment"
            elif b"scan.zip" in m:
                bad = "   <- clam.zip (ClamAV test executable in a zip)"
            say("    %d  %-44s %6d octets%s" % (i, subj[:44], len(m), bad))

        # ---- 1: abort -------------------------------------------------
        heading("1. on_malicious: abort -- what a classic stream firewall does")
        proxy = mh.Mailmoat(os.path.join(workdir, "mailmoat-abort"), [("pop3", dv.pop3_port)],
                            binary=binary, on_malicious="abort")
        proxies.append(proxy)
        proxy.start()
        _pidfile(workdir, proxy)
        say("mailmoat listens on %s:%d in front of %s:%d" % (mh.HOST, proxy.port, mh.HOST, dv.pop3_port))
        stalls = []
        for attempt in range(1, RETRIES + 1):
            say()
            say("  Attempt %d (python poplib: USER/PASS, STAT, RETR 1..n):" % attempt)
            got, stopped, count = download(proxy.port, "abort")
            stalls.append(stopped)
            say("  -> %d of %d messages, stalled at message %s" % (len(got), count, stopped))
        say()
        if len(set(stalls)) == 1 and stalls[0] is not None:
            say("The download stalls at message %d on every retry: the client never gets past"
                % stalls[0])
            say("it, and messages %d..%d never arrive. This is the problem mailmoat exists for."
                % (stalls[0] + 1, len(msgs)))
        else:
            say("Unexpected: the stalls were at %s" % stalls)
        say()
        say("  mailmoat log:")
        for line in verdict_lines(proxy)[:RETRIES]:
            say("    " + line)
        proxy.stop()

        # ---- 2: quarantine --------------------------------------------
        heading("2. on_malicious: quarantine -- mailmoat's way")
        proxy = mh.Mailmoat(os.path.join(workdir, "mailmoat-quarantine"), [("pop3", dv.pop3_port)],
                            binary=binary, on_malicious="quarantine",
                            admin_contact="postmaster@example.jp")
        proxies.append(proxy)
        proxy.start()
        _pidfile(workdir, proxy)
        say("mailmoat listens on %s:%d, quarantine in %s" % (mh.HOST, proxy.port, proxy.quarantine_dir))
        results = []
        for attempt in (1, 2):
            say()
            say("  Download %d (python poplib):" % attempt)
            got, stopped, count = download(proxy.port, "quarantine")
            results.append(got)
            say("  -> %d of %d messages%s" % (len(got), count,
                                               "" if stopped is None else ", stopped at %d" % stopped))
        fm = fetchmail_run(workdir, proxy.port)
        if fm is not None:
            say()
            say("  Download 3 (fetchmail, keep, delivering to an MDA): %d of %d messages delivered"
                % (fm, len(msgs)))

        notices = [m for m in results[0] if "[mailmoat:" in (mh.header_of(m, "Subject") or "")]
        if notices:
            say()
            say("  What the user sees in place of message 3:")
            show_notice(notices[0])

        say()
        entries = [q[3] for q in proxy.quarantine() if q[3]]
        say("  Quarantine (%s): %d entries, one per malicious message (later downloads reuse it)"
            % (proxy.quarantine_dir, len(entries)))
        say("    %-26s %-38s %6s  %s" % ("id", "signature", "size", "from | subject"))
        for meta in entries:
            say("    %-26s %-38s %6s  %s | %s" % (meta.get("id"), meta.get("signature"), meta.get("size"),
                                                   meta.get("from"), meta.get("subject")))
        files = sorted(os.listdir(proxy.quarantine_dir))
        modes = sorted({"%o" % (os.stat(os.path.join(proxy.quarantine_dir, f)).st_mode & 0o777) for f in files})
        say("    %d files (ID.eml + ID.json each), mode %s" % (len(files), ", ".join(modes)))
        say()
        say("  mailmoat log (non-clean verdicts):")
        for line in verdict_lines(proxy)[:4]:
            say("    " + line)
        proxy.stop()

        # ---- 3: IMAP --------------------------------------------------
        heading("3. IMAP -- messages stay on the server, read through mailmoat")
        proxy = mh.Mailmoat(os.path.join(workdir, "mailmoat-imap"), [("imap", dv.imap_port)],
                            binary=binary, on_malicious="quarantine",
                            admin_contact="postmaster@example.jp")
        proxies.append(proxy)
        proxy.start()
        _pidfile(workdir, proxy)
        say("mailmoat listens on %s:%d (IMAP) in front of %s:%d" % (mh.HOST, proxy.port, mh.HOST,
                                                                     dv.imap_port))
        imap_ok, imap_notices = imap_act(proxy, dv)
        proxy.stop()

        ok = len(results[0]) == len(msgs) and len(results[1]) == len(msgs) and len(notices) == 2
        heading("Result")
        if ok:
            say("abort:      the download stalled at message %s on all %d tries." % (stalls[0], RETRIES))
            say("quarantine: all %d messages arrived, twice; the 2 malicious ones as notices," % len(msgs))
            say("            the originals kept in the quarantine (ID.eml + ID.json, mode 0600).")
            if proxies[1].peak_rss_kib:
                say("            mailmoat peak RSS: %.1f MiB" % (proxies[1].peak_rss_kib / 1024))
        if imap_ok:
            say("imap:       the listing is the server's; the %d malicious messages open as notices,"
                % imap_notices)
            say("            whole or in 64 KiB chunks; the others byte for byte.")
        if not (ok and imap_ok):
            say("Something did not go as expected (see above).")
        return 0 if ok and imap_ok and stalls[0] is not None and len(set(stalls)) == 1 else 1
    finally:
        for p in proxies:
            p.stop()
        dv.stop()


def imap_act(proxy, dv):
    """Lists, opens and chunk-downloads the mailbox with imaplib through
    the proxy (and, for comparison, straight from Dovecot). Returns (all
    as expected, number of notices)."""
    import imaplib
    imaplib._MAXLINE = 1 << 20

    def connect(port):
        c = imaplib.IMAP4(mh.HOST, port, timeout=60)
        c.login(USER, PASSWORD)
        c.select("INBOX")
        return c

    def fetch(c, uids, items):
        typ, data = c.uid("FETCH", uids, items)
        return mh.fetch_by_uid(mh.imaplib_responses(data)) if typ == "OK" else {}

    ok = True
    d = connect(dv.imap_port)
    direct = {u: a["BODY[]"] for u, a in fetch(d, "1:*", "(UID BODY.PEEK[])").items()}
    d.logout()
    c = connect(proxy.port)
    try:
        say()
        say("  List (UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])):")
        listing = fetch(c, "1:*", "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for u in sorted(listing):
            subj = decode(mh.header_of(listing[u]["BODY[HEADER.FIELDS (SUBJECT)]"] or b"", "Subject"))
            say("    uid %d  %7s octets  %s" % (u, listing[u]["RFC822.SIZE"], subj[:60]))
        say()
        say("  Open each (UID FETCH n (BODY.PEEK[])):")
        bad = []
        for u in sorted(listing):
            body = fetch(c, str(u), "(UID BODY.PEEK[])").get(u, {}).get("BODY[]") or b""
            subj = decode(mh.header_of(body, "Subject"))
            if "[mailmoat:" in subj:
                qid = mh.header_of(body, "X-Mailmoat-Quarantine-Id")
                say("    uid %d  !  %s" % (u, subj[:90]))
                say("              quarantine id %s, %d octets, no malware: %s"
                    % (qid, len(body), "yes" if mh.EICAR not in body else "NO"))
                bad.append((u, body))
            else:
                same = body == direct.get(u)
                ok = ok and same
                say("    uid %d  %s  %s%s" % (u, "✓" if same else "✗", subj[:70],
                                             "" if same else "   (differs from the server's copy!)"))
        ok = ok and len(bad) == 2
        if bad:
            u, notice = max(bad, key=lambda b: len(b[1]))
            say()
            say("  Thunderbird-style download of uid %d in 64 KiB chunks" % u)
            say("  (UID FETCH %d (UID RFC822.SIZE BODY.PEEK[]<offset.65536>)):" % u)
            got, off = bytearray(), 0
            while True:
                part = fetch(c, str(u), "(UID RFC822.SIZE BODY.PEEK[]<%d.65536>)" % off).get(u, {})
                data = part.get("BODY[]<%d>" % off) or b""
                say("    %-16s %6d octets" % ("<%d.65536>" % off, len(data)))
                got += data
                off += 65536
                if len(data) < 65536:
                    break
            same = bytes(got) == notice
            ok = ok and same
            say("  -> %d octets reassembled: %s" % (len(got), "the same notice as the whole fetch"
                                                      if same else "NOT the notice of the whole fetch!"))
        say()
        say("  mailmoat log (non-clean verdicts):")
        for line in verdict_lines(proxy)[:4]:
            say("    " + line)
        return ok, len(bad)
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _pidfile(workdir, proxy):
    with open(os.path.join(workdir, "mailmoat.pid"), "w") as f:
        f.write("%d\n" % proxy.pid)


def show_notice(data):
    msg = email.message_from_bytes(data, policy=email.policy.default)
    for h in ("From", "To", "Date", "Subject", "Message-ID"):
        say("    %-11s %s" % (h + ":", msg.get(h, "")))
    body = ""
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            body = part.get_content()
            break
    lines = [l.rstrip() for l in body.splitlines()]
    # Show the English half and the facts, a few lines.
    start = next((i for i, l in enumerate(lines) if l.startswith("This message was quarantined")), 0)
    shown = [l for l in lines[start:] if l.strip()][:9]
    say("    " + "-" * 60)
    for l in shown:
        say("    " + textwrap.shorten(l, 90, placeholder="...") if len(l) > 90 else "    " + l)
    say("    " + "-" * 60)
    say("    (%d octets: the notice is padded to the original's LIST size)" % len(data))


def fetchmail_run(workdir, port):
    """Downloads the mailbox with fetchmail through the proxy; returns the
    number of messages delivered, or None without fetchmail."""
    r = mh.run_fetchmail(os.path.join(workdir, "fetchmail"), port, USER, PASSWORD, timeout=120)
    if r is None:
        return None
    rc, text, msgs = r
    if rc != 0:
        say("  fetchmail exited %d: %s" % (rc, text[-500:]))
    return len(msgs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(HERE), "build", "mailmoat"))
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    t0 = time.monotonic()
    rc = run(os.path.abspath(a.workdir), os.path.abspath(a.bin))
    say()
    say("(demo took %.1f s; everything it started is stopped)" % (time.monotonic() - t0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
