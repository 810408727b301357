#!/usr/bin/env python3
"""A deterministic, realistic mailbox for the benchmarks.

The same seed and count give the same messages byte for byte. The mix:

  sizes     log-normal, median about 20 KiB (1 KiB .. 1 MiB), and a tail of
            TAIL_SHARE (3 %) of messages with one 1-10 MiB attachment;
  kinds     plain 7bit English text; quoted-printable UTF-8 text (accents,
            long soft-broken lines); multipart/alternative (text + HTML,
            both quoted-printable); Japanese (ISO-2022-JP 7bit and UTF-8
            base64 bodies, RFC 2047 encoded subjects and names);
            multipart/mixed with base64 attachments: PDF-like documents
            (deflated content streams), zip archives made with zipfile
            (text and CSV members), random binary data;
  malicious about 1 in 60: EICAR as an attachment, in a zip, and under a
            Japanese subject (mmharness builders).

  corpus.py [--quick] [--count N] [--seed S] [--eml DIR]
prints the size statistics; --eml writes the messages as CRLF .eml files
(the bytes a POP3/IMAP server serves, which the proxy scans).

As a module: messages(count, seed) yields (name, kind, LF bytes);
fill(dovecot, users, ...) stores them in each user's maildir (the first
user's files are written, the others hard-linked) and returns a Corpus with
the .eml paths for the raw scan baseline.
"""
import argparse
import base64
import io
import math
import os
import quopri
import random
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "lib"))
import mmharness as h  # noqa: E402

DEFAULT_COUNT = 400
QUICK_COUNT = 60
MEDIAN = 20 * 1024
SIGMA = 1.1
TAIL_SHARE = 0.03
MALICIOUS_EVERY = 60

WORDS = ("the of and to in is for on that with as by this be are from at or it an "
         "meeting invoice report quarter budget schedule review attached figures "
         "please thanks regards project customer order delivery contract update "
         "team office proposal revenue forecast draft final agenda minutes notes "
         "server backup network release version migration deadline approval "
         "shipment warehouse payment account statement summary analysis").split()
ACCENTED = ("café résumé naïve façade coöperate über straße señor déjà garçon "
            "Ångström Øresund Ærø crème brûlée — “quoted” ‘text’ € £ ½").split()
JA = ("お世話になっております。 来週の会議について ご連絡いたします。 資料を添付しますので "
      "ご確認ください。 よろしくお願いいたします。 本日の議事録です。 見積書を送付します。 "
      "納期は来月末の予定です。 担当者様 株式会社 営業部 システム 更新 作業 完了 報告 "
      "東京 大阪 名古屋 福岡 請求書 契約書 発注書 打ち合わせ 日程 調整 変更").split()
JA_SUBJ = ("会議の議事録について", "【重要】システム更新のお知らせ", "見積書送付の件",
           "打ち合わせ日程のご相談", "月次報告書（十一月分）", "請求書のご確認のお願い")
EN_SUBJ = ("Quarterly figures", "Re: project update", "Meeting minutes", "Invoice attached",
           "Fwd: contract draft", "Weekly report", "Backup schedule", "Release notes")
NAMES = ("Alice Archer", "Bob Baker", "Carol Chen", "Dave Dunn", "Erin Evans", "Frank Fox")
JA_NAMES = ("田中 太郎", "鈴木 花子", "佐藤 一郎", "高橋 美咲")


class Corpus:
    def __init__(self):
        self.names = []       # message names, in mailbox order
        self.kinds = []
        self.sizes = []       # bytes as served (CRLF)
        self.eml = []         # CRLF .eml paths (when written)
        self.malicious = 0

    @property
    def count(self):
        return len(self.sizes)

    @property
    def bytes(self):
        return sum(self.sizes)

    def stats(self):
        s = sorted(self.sizes)
        n = len(s)
        kinds = {}
        for k in self.kinds:
            kinds[k] = kinds.get(k, 0) + 1
        return {"messages": n, "bytes": sum(s), "median": s[n // 2] if n else 0,
                "p90": s[int(n * 0.9)] if n else 0, "max": s[-1] if n else 0,
                "over_1mib": sum(1 for x in s if x >= 1 << 20),
                "malicious": self.malicious, "kinds": kinds}


def _date(rnd, i):
    day = 1 + i % 28
    return "%s, %02d Nov 2026 %02d:%02d:%02d +0900" % (
        ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")[day % 7], day,
        rnd.randrange(24), rnd.randrange(60), rnd.randrange(60))


def _ew(text, charset):
    return "=?%s?B?%s?=" % (charset.upper(), base64.b64encode(text.encode(
        "iso2022_jp" if charset.lower() == "iso-2022-jp" else charset)).decode("ascii"))


def _headers(rnd, i, to, subject, ctype, frm=None, extra=()):
    frm = frm or "%s <%s@example.test>" % (rnd.choice(NAMES), rnd.choice(("sales", "info", "pm", "hr")))
    h_ = ["Return-Path: <bounce-%d@example.test>" % i,
          "Received: from mx%d.example.test (mx%d.example.test [192.0.2.%d]) by mail.example.test "
          "with ESMTPS id %08x; %s" % (i % 7, i % 7, 1 + i % 250, rnd.getrandbits(32), _date(rnd, i)),
          "From: %s" % frm, "To: %s" % to, "Subject: %s" % subject, "Date: %s" % _date(rnd, i),
          "Message-ID: <bench.%d.%08x@example.test>" % (i, rnd.getrandbits(32)),
          "MIME-Version: 1.0", "Content-Type: %s" % ctype]
    h_.extend(extra)
    return ("\n".join(h_) + "\n\n").encode("ascii")


def _english(rnd, n):
    out, k = [], 0
    while k < n:
        line = " ".join(rnd.choices(WORDS, k=rnd.randint(8, 14))).capitalize() + ".\n"
        out.append(line)
        k += len(line)
    return "".join(out)[:max(1, n)]


def _accented(rnd, n):
    out, k = [], 0
    while k < n:
        ws = rnd.choices(WORDS, k=rnd.randint(20, 40))
        for j in range(0, len(ws), 5):
            ws[j] = rnd.choice(ACCENTED)
        line = " ".join(ws) + ".\n"     # long lines: soft breaks in QP
        out.append(line)
        k += len(line.encode("utf-8"))
    return "".join(out)


def _japanese(rnd, nbytes, enc):
    out, k = [], 0
    while k < nbytes:
        line = "".join(rnd.choices(JA, k=rnd.randint(3, 6))) + "\n"
        out.append(line)
        k += len(line.encode(enc))
    return "".join(out)


def _qp(text):
    return quopri.encodestring(text.encode("utf-8")).decode("ascii")


def _b64(data):
    enc = base64.b64encode(data).decode("ascii")
    return "\n".join(enc[i:i + 76] for i in range(0, len(enc), 76)) + "\n"


def _pdf(rnd, n):
    """A PDF-like document of about n bytes: objects with deflated text
    streams and a random (incompressible, image-like) stream."""
    import zlib
    parts = [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]
    k, obj = len(parts[0]), 1
    while k < n:
        if rnd.random() < 0.5:
            raw = zlib.compress(("BT /F1 11 Tf 72 720 Td (%s) Tj ET\n" % _english(rnd, 3000)).encode())
        else:
            raw = rnd.randbytes(min(max(256, n - k), 32768))
        o = b"%d 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % (obj, len(raw)) + raw + \
            b"\nendstream\nendobj\n"
        parts.append(o)
        k += len(o)
        obj += 1
    parts.append(b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")
    return b"".join(parts)


def _zip(rnd, n):
    """A zip archive (zipfile) of about n bytes: a deflated text report,
    a CSV and a stored random blob that brings it to size."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report/summary.txt", _english(rnd, min(n, 20000)))
        z.writestr("report/figures.csv", "".join("%d,%s,%d.%02d\n" % (
            j, rnd.choice(WORDS), rnd.randrange(10000), rnd.randrange(100)) for j in range(200)))
        rest = n - buf.tell() - 300
        if rest > 0:
            z.writestr(zipfile.ZipInfo("report/scan.jpg", (2026, 11, 1, 9, 0, 0)),
                       rnd.randbytes(rest), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def _mixed(rnd, i, to, subject, text, attachments, text_headers=None, frm=None):
    b = "=_bench_mixed_%d_%08x" % (i, rnd.getrandbits(32))
    out = [_headers(rnd, i, to, subject, 'multipart/mixed; boundary="%s"' % b, frm=frm),
           b"This is a multi-part message in MIME format.\n\n"]
    out.append(("--%s\n%s\n" % (b, text_headers or
                                "Content-Type: text/plain; charset=us-ascii\n"
                                "Content-Transfer-Encoding: 7bit\n")).encode("ascii"))
    out.append(text if isinstance(text, bytes) else text.encode("ascii"))
    for fn, ct, data in attachments:
        out.append(("\n--%s\nContent-Type: %s; name=\"%s\"\nContent-Transfer-Encoding: base64\n"
                    "Content-Disposition: attachment; filename=\"%s\"\n\n" % (b, ct, fn, fn))
                   .encode("ascii"))
        out.append(_b64(data).encode("ascii"))
    out.append(("\n--%s--\n" % b).encode("ascii"))
    return b"".join(out)


def _size(rnd):
    return int(min(1 << 20, max(1024, MEDIAN * math.exp(rnd.gauss(0, SIGMA)))))


def _make(rnd, i, size, to):
    """One clean message of about size bytes; returns (kind, LF bytes)."""
    r = rnd.random()
    if size > 200 * 1024 or r < 0.22:
        # attachments carry the bulk of big messages
        kind = rnd.choices(("pdf", "zip", "bin"), weights=(5, 4, 2))[0]
        raw = max(512, (size - 1500) * 3 // 4)
        text = _english(rnd, rnd.randint(200, 1500))
        if kind == "pdf":
            att = [("document-%d.pdf" % i, "application/pdf", _pdf(rnd, raw))]
        elif kind == "zip":
            att = [("archive-%d.zip" % i, "application/zip", _zip(rnd, raw))]
        else:
            att = [("data-%d.bin" % i, "application/octet-stream", rnd.randbytes(raw))]
        if kind != "bin" and rnd.random() < 0.3 and size < 200 * 1024:
            japanese = True
            subj = _ew(rnd.choice(JA_SUBJ), "utf-8")
        else:
            japanese = False
            subj = "%s (%s attached)" % (rnd.choice(EN_SUBJ), kind)
        if japanese:
            body = base64.b64encode(_japanese(rnd, 600, "utf-8").encode("utf-8"))
            return "attach-" + kind, _mixed(
                rnd, i, to, subj, _b64(base64.b64decode(body)).encode("ascii"), att,
                "Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: base64\n")
        return "attach-" + kind, _mixed(rnd, i, to, subj, text, att)
    if r < 0.45:
        return "plain", _headers(rnd, i, to, rnd.choice(EN_SUBJ),
                                 "text/plain; charset=us-ascii",
                                 extra=["Content-Transfer-Encoding: 7bit"]) + \
            _english(rnd, size - 700).encode("ascii")
    if r < 0.58:
        return "qp", _headers(rnd, i, to, "Re: %s" % rnd.choice(EN_SUBJ),
                              "text/plain; charset=UTF-8",
                              extra=["Content-Transfer-Encoding: quoted-printable"]) + \
            _qp(_accented(rnd, (size - 800) * 2 // 3)).encode("ascii")
    if r < 0.80:
        b = "=_bench_alt_%d_%08x" % (i, rnd.getrandbits(32))
        half = max(200, (size - 1200) // 2)
        plain = _accented(rnd, half * 2 // 3)
        html = "<html><body>%s</body></html>\n" % "".join(
            "<p>%s</p>\n" % p for p in _accented(rnd, half * 2 // 3).split("\n") if p)
        return "alternative", _headers(
            rnd, i, to, "Newsletter: %s" % rnd.choice(EN_SUBJ),
            'multipart/alternative; boundary="%s"' % b) + (
            "--%s\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: "
            "quoted-printable\n\n%s\n--%s\nContent-Type: text/html; charset=UTF-8\n"
            "Content-Transfer-Encoding: quoted-printable\n\n%s\n--%s--\n"
            % (b, _qp(plain), b, _qp(html), b)).encode("ascii")
    if r < 0.90:
        frm = "%s <tanaka@example.jp>" % _ew(rnd.choice(JA_NAMES), "iso-2022-jp")
        return "ja-iso2022jp", _headers(
            rnd, i, to, _ew(rnd.choice(JA_SUBJ), "iso-2022-jp"),
            "text/plain; charset=ISO-2022-JP", frm=frm,
            extra=["Content-Transfer-Encoding: 7bit"]) + \
            _japanese(rnd, size - 900, "iso2022_jp").encode("iso2022_jp")
    frm = "%s <suzuki@example.jp>" % _ew(rnd.choice(JA_NAMES), "utf-8")
    return "ja-utf8", _headers(
        rnd, i, to, _ew(rnd.choice(JA_SUBJ), "utf-8"), "text/plain; charset=UTF-8", frm=frm,
        extra=["Content-Transfer-Encoding: base64"]) + \
        _b64(_japanese(rnd, (size - 900) * 3 // 4, "utf-8").encode("utf-8")).encode("ascii")


def messages(count=DEFAULT_COUNT, seed=20261129, to="bench@example.test"):
    """Yields (name, kind, LF bytes) for count messages."""
    rnd = random.Random(seed)
    for i in range(count):
        if i % MALICIOUS_EVERY == MALICIOUS_EVERY // 2:
            which = (i // MALICIOUS_EVERY) % 3
            if which == 0:
                yield "%04d" % i, "malicious-eicar", h.msg_eicar_attachment(to=to, n=i)
            elif which == 1:
                yield "%04d" % i, "malicious-zip", h.msg_eicar_zip(to=to, n=i)
            else:
                yield "%04d" % i, "malicious-ja", h.msg_japanese_infected(to=to, n=i)
            continue
        if rnd.random() < TAIL_SHARE:
            size = int(1024 * 1024 * (10 ** rnd.random()))     # 1 .. 10 MiB
        else:
            size = _size(rnd)
        kind, data = _make(rnd, i, size, to)
        yield "%04d" % i, kind, data


def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def fill(dovecot=None, users=(), count=DEFAULT_COUNT, seed=20261129, eml_dir=None):
    """Stores the messages in each user's maildir (hard links after the
    first user) and/or writes CRLF .eml files to eml_dir. Returns a Corpus."""
    c = Corpus()
    users = list(users)
    if eml_dir:
        os.makedirs(eml_dir, exist_ok=True)
    for name, kind, data in messages(count, seed):
        c.names.append(name)
        c.kinds.append(kind)
        if kind.startswith("malicious"):
            c.malicious += 1
        served = crlf(data)
        c.sizes.append(len(served))
        if dovecot is not None and users:
            first = dovecot.add_message(users[0], data)
            for u in users[1:]:
                md = dovecot.maildir(u)
                os.link(first, os.path.join(md, "new", os.path.basename(first)))
        if eml_dir:
            p = os.path.join(eml_dir, name + ".eml")
            with open(p, "wb") as f:
                f.write(served)
            c.eml.append(p)
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="%d messages" % QUICK_COUNT)
    ap.add_argument("--count", type=int)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--eml", help="write CRLF .eml files here")
    a = ap.parse_args()
    n = a.count or (QUICK_COUNT if a.quick else DEFAULT_COUNT)
    c = fill(None, (), n, a.seed, a.eml)
    s = c.stats()
    print("corpus messages=%d bytes=%d (%.1f MiB) median=%d p90=%d max=%d over_1mib=%d "
          "malicious=%d" % (s["messages"], s["bytes"], s["bytes"] / 1048576.0, s["median"],
                            s["p90"], s["max"], s["over_1mib"], s["malicious"]))
    print("kinds " + " ".join("%s=%d" % kv for kv in sorted(s["kinds"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
