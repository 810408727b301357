#!/usr/bin/env python3
"""ctest fixture: one throwaway Dovecot for the whole integration run.

  dovecot_fixture.py start   builds the test mailboxes and the test PKI
                             (mmharness.make_test_pki), starts Dovecot on free
                             loopback ports (POP3 and IMAP in plaintext with
                             STLS/STARTTLS, and POP3S and IMAPS), writes
                             $MAILMOAT_IT_STATE/state.json
  dovecot_fixture.py stop    stops that Dovecot by its PID and removes its files

A leftover from an earlier run (state.json still present) is stopped and
removed first, so start is safe to repeat.
"""

import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("MAILMOAT_SRC") or os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "deploy", "lib"))

import mmharness as mh  # noqa: E402

STATE_DIR = os.environ.get("MAILMOAT_IT_STATE") or os.path.join(SRC, "build", "it-state")
STATE = os.path.join(STATE_DIR, "state.json")
BIG_MIB = int(os.environ.get("MAILMOAT_IT_BIG_MIB", "50"))

MID_MIB = int(os.environ.get("MAILMOAT_IT_MID_MIB", "12"))   # above mime_split_above (8M)

USERS = {
    "alice": "Alice-pw-7Qx!z",     # clean mailbox, every kind of harmless message
    "bob": "Bob-pw-4Kd#m",         # malicious messages in the middle and at the end
    "carol": "Carol-pw-9Lr%b",     # the big message
    "dave": "Dave-pw-2Hs&v",       # auth tests only
    "erin": "Erin-pw-5Tn$c",       # DELE test (its mailbox is emptied)
    "frank": "Frank-pw-8Wy*q",     # harder payloads: nested, zipped, Japanese, in big messages
    "grace": "Grace-pw-6Jv+t",     # IMAP: malicious in the middle, ~1 MiB clean and infected
}


def _eicar_small(to, n):
    return mh.msg_eicar_attachment(to=to, n=n, pad_text=0, subject="Re: your order")


def _big(kind, tail_parts, subject):
    def writer_for(to, n):
        return mh.big_message_writer(MID_MIB << 20, to=to, n=n, tail_parts=tail_parts,
                                     subject=subject, frm="Big Sender <big@example.test>")
    return writer_for


def _mib_message(tail_parts, subject, seed):
    """About 1 MiB: big enough for several 64 KiB chunks and three 393216-byte
    ones (IMAP partial fetches); seeded, so every run builds the same bytes."""
    def writer_for(to, n):
        return mh.big_message_writer(1 << 20, to=to, n=n, seed=seed, tail_parts=tail_parts,
                                     subject=subject, frm="Big Sender <big@example.test>")
    return writer_for


def build_mailboxes(dv):
    """Fills the maildirs; returns {user: [message descriptions]}. Each plan
    item is (kind, builder, infected); a builder returns bytes, or a
    streaming writer for big messages (names starting with "big")."""
    plan = {
        "alice": [
            ("plain", mh.msg_plain, False), ("multipart", mh.msg_multipart_attachment, False),
            ("iso2022jp", mh.msg_japanese_iso2022jp, False), ("utf8", mh.msg_japanese_utf8, False),
            ("dots", mh.msg_dots, False), ("long_lines", mh.msg_long_lines, False),
            ("html", mh.msg_html_alternative, False), ("headers_only", mh.msg_headers_only, False),
            ("no_final_newline", mh.msg_no_final_newline, False),
        ],
        "bob": [
            ("plain", mh.msg_plain, False), ("multipart", mh.msg_multipart_attachment, False),
            ("eicar", mh.msg_eicar_attachment, True), ("iso2022jp", mh.msg_japanese_iso2022jp, False),
            ("clamzip", mh.msg_clamzip_attachment, True), ("dots", mh.msg_dots, False),
            ("utf8", mh.msg_japanese_utf8, False), ("eicar_small", _eicar_small, True),
        ],
        "carol": [("big", lambda to, n: mh.big_message_writer(BIG_MIB << 20, to=to, n=n), False),
                  ("plain", mh.msg_plain, False)],
        "dave": [("plain", mh.msg_plain, False), ("dots", mh.msg_dots, False)],
        "erin": [("plain", mh.msg_plain, False), ("eicar", mh.msg_eicar_attachment, True),
                 ("dots", mh.msg_dots, False)],
        "frank": [
            ("plain", mh.msg_plain, False),
            ("forwarded_eicar", mh.msg_forwarded_eicar, True),
            ("eicar_inline", mh.msg_eicar_inline, True),
            ("eicar_zip", mh.msg_eicar_zip, True),
            ("japanese_eicar", mh.msg_japanese_infected, True),
            ("eicar_no_ids", mh.msg_eicar_no_ids, True),
            ("big_clamzip", _big("big_clamzip", [("scan.zip", "application/zip", mh.clam_zip())],
                                 "Big archive with a zip at the end"), True),
            ("big_eicar", _big("big_eicar", [("tool.com", "application/octet-stream", mh.EICAR)],
                               "Big archive with a tool at the end"), True),
            ("big_clean", _big("big_clean", [], "Big archive, harmless"), False),
            ("dots", mh.msg_dots, False),
        ],
        # IMAP tests only (POP3 tests never log in as grace).
        "grace": [
            ("plain", mh.msg_plain, False), ("multipart", mh.msg_multipart_attachment, False),
            ("eicar", mh.msg_eicar_attachment, True), ("iso2022jp", mh.msg_japanese_iso2022jp, False),
            ("mib_clean", _mib_message([], "One megabyte, harmless", 1), False),
            ("dots", mh.msg_dots, False),
            ("mib_eicar", _mib_message([("tool.com", "application/octet-stream", mh.EICAR)],
                                       "One megabyte with a tool at the end", 2), True),
            ("clamzip", mh.msg_clamzip_attachment, True), ("utf8", mh.msg_japanese_utf8, False),
            ("long_lines", mh.msg_long_lines, False), ("no_final_newline", mh.msg_no_final_newline, False),
            ("eicar_small", _eicar_small, True), ("html", mh.msg_html_alternative, False),
        ],
    }
    described = {}
    for user, items in plan.items():
        to = "%s@example.test" % user
        described[user] = []
        for kind, fn, infected in items:
            n = len(described[user])
            made = fn(to=to, n=n)
            if callable(made):
                path = dv.add_message_streamed(user, made)
                with open(path, "rb") as f:
                    data = f.read(64 << 10)       # the headers are at the start
            else:
                data = made
                path = dv.add_message(user, data)
            described[user].append({
                "num": n + 1, "kind": kind, "infected": infected,
                "file": path, "size_lf": os.path.getsize(path),
                "subject": mh.header_of(data, "Subject"),
                "from": mh.header_of(data, "From"),
                "message_id": mh.header_of(data, "Message-ID")})
    return described


def stop_leftover():
    if not os.path.exists(STATE):
        return
    try:
        with open(STATE) as f:
            st = json.load(f)
    except (OSError, ValueError):
        st = {}
    if st.get("pid"):
        if mh.stop_dovecot_pid(st["pid"], st.get("config")):
            print("stopped Dovecot left over from an earlier run (pid %d)" % st["pid"])
    wd = st.get("workdir")
    if wd and os.path.basename(wd).startswith("mailmoat-it-dovecot-") and os.path.isdir(wd):
        shutil.rmtree(wd, ignore_errors=True)
    os.unlink(STATE)


def start():
    os.makedirs(STATE_DIR, exist_ok=True)
    stop_leftover()
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="mailmoat-it-dovecot-")
    os.chmod(workdir, 0o755)
    try:
        # The certificate for mail.test.example (and 127.0.0.1) by default;
        # a client that sends SNI expired.test.example gets the expired
        # leaf, unknown.test.example one of a CA nobody trusts.
        pki = mh.make_test_pki(os.path.join(workdir, "pki"))
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    # offers STLS/STARTTLS, COMPRESS=DEFLATE; POP3S and IMAPS
    dv = mh.Dovecot(workdir, USERS, tls=True, compress=True, implicit_tls=True,
                    ssl_cert=pki["upstream_cert"], ssl_key=pki["upstream_key"],
                    sni_certs={mh.TLS_EXPIRED_NAME: (pki["expired_cert"], pki["expired_key"]),
                               mh.TLS_UNKNOWN_NAME: (pki["unknown_cert"], pki["unknown_key"])})
    described = build_mailboxes(dv)
    try:
        dv.start()
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    state = dv.state()
    state["users"] = {u: {"password": pw, "messages": described[u]} for u, pw in USERS.items()}
    state["pki"] = pki
    state["started_at"] = time.time()
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.rename(tmp, STATE)
    print("Dovecot %s pid %d: pop3 %s:%d imap %s:%d pop3s %d imaps %d (%s), work dir %s (%.1f s)" % (
        mh.DOVECOT_BIN, dv.pid, mh.HOST, dv.pop3_port, mh.HOST, dv.imap_port, dv.pop3s_port,
        dv.imaps_port, mh.TLS_UPSTREAM_NAME, workdir, time.monotonic() - t0))
    for u, msgs in described.items():
        print("  %-6s %s" % (u, ", ".join("%d:%s" % (m["num"], m["kind"]) for m in msgs)))


def stop():
    if not os.path.exists(STATE):
        print("no fixture state at %s: nothing to stop" % STATE)
        return
    with open(STATE) as f:
        st = json.load(f)
    t0 = time.monotonic()
    stopped = mh.stop_dovecot_pid(st.get("pid"), st.get("config"))
    # Keep Dovecot's log next to the state for a look after a failed run.
    try:
        shutil.copy(st["log"], os.path.join(STATE_DIR, "dovecot.log"))
    except (OSError, KeyError):
        pass
    wd = st.get("workdir")
    if wd and os.path.basename(wd).startswith("mailmoat-it-dovecot-"):
        shutil.rmtree(wd, ignore_errors=True)
    os.unlink(STATE)
    print("Dovecot pid %s %s (%.1f s)" % (st.get("pid"), "stopped" if stopped else "was not running",
                                          time.monotonic() - t0))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: dovecot_fixture.py start|stop")
    start() if sys.argv[1] == "start" else stop()
