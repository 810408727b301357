/*
 * attach.c - attachment rules on the MIME structure (attach.h).
 *
 * Owns a streaming MIME structure parser and the name/type rules it applies
 * to each part. Called on a pool thread by the scan job, before libclamav.
 *
 * Why not GMime's parser: g_mime_parser_construct_message() builds the
 * whole tree, and a 50 MiB message of 845,000 tiny parts took 1.9 GB of
 * resident memory (measured, GMime 3.2.13, persist-stream mode). Here only
 * the current line's first bytes, the Content-Type / Content-Disposition /
 * Content-Transfer-Encoding fields being read, and one boundary per open
 * multipart are held: memory does not grow with the message. GMime is used
 * only where it is good and bounded: decoding one header field's
 * parameters (RFC 2231 charset, language and continuations; RFC 2047
 * encoded-words in quoted values, as real mailers send them) and the
 * base64/quoted-printable body of an encoded message/rfc822 part.
 *
 * States, per line (a line ends at LF; a CR before it is kept and ignored):
 *   ST_HEADER  reading one entity's header block. Fields of interest are
 *              captured unfolded (at most FIELD_MAX bytes, else an error:
 *              cutting one could hide a name); others are skipped. An
 *              empty line, or a boundary of an open multipart (malformed
 *              part without a blank line), ends the block, and the entity
 *              is classified: multipart (push a frame: its boundary), a
 *              message/rfc822 (its body is a nested header block, or, when
 *              base64/QP encoded, a nested stream fed with the decoded
 *              bytes), or a leaf.
 *   ST_BODY    a leaf body, a preamble or an epilogue: only lines that may
 *              be a boundary ("--" + at most BOUNDARY_MAX bytes + trailing
 *              white space, RFC 2046 section 5.1.1) are looked at; the
 *              rest is skipped with memchr.
 * A boundary line closes every deeper multipart (innermost checked first,
 * as GMime does). Depth counts multipart and message nesting; past
 * max_depth the answer is ATTACH_ERROR, never a silent pass.
 */
#include "scanners/attach.h"

#include <errno.h>
#include <stdarg.h>
#include <gmime/gmime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/*
 * The shipped blocked extensions. What Windows runs (or mounts, or hands
 * to a script host) on a double click, with no extra application, and
 * which has next to no business use as a mail attachment; mostly
 * Outlook's Level 1 list, without what offices legitimately mail (mdb
 * databases, cer/crt certificates, cab, py/pl scripts of developers).
 */
const char *const attach_default_extensions[] = {
    /* programs and installers */
    "exe", "scr", "com", "pif", "cpl", "msi", "msp", "mst", "msu",
    /* app packages and ClickOnce (App Installer abuse, 2021-2023) */
    "appx", "appxbundle", "msix", "msixbundle", "appinstaller", "application",
    "appref-ms",
    /* Windows Script Host, HTA, PowerShell, Java */
    "bat", "cmd", "js", "jse", "vbs", "vbe", "vb", "wsf", "wsh", "wsc", "ws", "sct",
    "hta", "ps1", "psc1", "jar", "jnlp",
    /* shortcuts and shell files that run or fetch code (.url: CVE-2024-21412) */
    "lnk", "url", "website", "scf", "inf", "settingcontent-ms",
    /* Excel add-ins, gadgets, MMC consoles (GrimResource 2024), help files */
    "xll", "gadget", "msc", "chm", "reg",
    /* disk images: mounted on a double click, their content escapes MOTW */
    "iso", "img", "vhd", "vhdx"};
const size_t attach_n_default_extensions =
    sizeof(attach_default_extensions) / sizeof(attach_default_extensions[0]);

/*
 * The shipped blocked types, each as a real mailer or library labels a
 * Windows executable, installer, HTA, shortcut, help file or disk image:
 * x-msdownload (Windows' own registry and Apache mime.types, what Outlook
 * sends for .exe), x-msdos-program (Debian /etc/mime.types for exe com bat
 * dll), x-ms-dos-executable (shared-mime-info, what GNOME mailers send),
 * x-dosexec (libmagic for MZ before 5.41), vnd.microsoft.portable-executable
 * (IANA-registered, libmagic 5.44), x-msi (mime.types, shared-mime-info),
 * hta (mime.types), x-ms-shortcut (libmagic for .lnk), vnd.ms-htmlhelp
 * (chm), x-iso9660-image / x-cd-image / x-vhd-disk / x-vhdx-disk (disk
 * images). They matter most for parts without a name: some clients derive
 * the saved file's extension from the type.
 */
const char *const attach_default_mime_types[] = {
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-ms-dos-executable",
    "application/x-dosexec",
    "application/vnd.microsoft.portable-executable",
    "application/x-msi",
    "application/hta",
    "application/x-ms-shortcut",
    "application/vnd.ms-htmlhelp",
    "application/x-iso9660-image",
    "application/x-cd-image",
    "application/x-vhd-disk",
    "application/x-vhdx-disk"};
const size_t attach_n_default_mime_types =
    sizeof(attach_default_mime_types) / sizeof(attach_default_mime_types[0]);

/*
 * What a victim opens without thinking: documents, images, media, and zip
 * and html too ("invoice.zip.exe" and "statement.html.exe" are the same
 * lure). Only ever the first of two extensions: "x.pdf.zip" is not blocked.
 */
const char *const attach_decoy_extensions[] = {
    "pdf", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "pptm", "odt",
    "ods", "odp", "rtf",  "txt",  "csv", "htm",  "html", "jpg", "jpeg", "png",  "gif",
    "bmp", "tif", "tiff", "mp3",  "mp4", "wav",  "avi",  "mov", "zip",  "rar",  "7z"};
const size_t attach_n_decoy_extensions =
    sizeof(attach_decoy_extensions) / sizeof(attach_decoy_extensions[0]);

void attach_rules_default(struct attach_rules *r)
{
	memset(r, 0, sizeof(*r));
	r->extensions = attach_default_extensions;
	r->n_extensions = attach_n_default_extensions;
	r->mime_types = attach_default_mime_types;
	r->n_mime_types = attach_n_default_mime_types;
	r->double_extensions = 1;
	r->bidi_controls = 1;
	r->max_depth = ATTACH_MAX_DEPTH;
}

/* ---- names ---- */

/* Explicit bidi embeddings, overrides and isolates: the RLO trick and kin. */
static int cp_is_bidi(uint32_t c)
{
	return (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

/*
 * Characters that render as nothing (zero-width, marks, fillers, variation
 * selectors, tags): removed before matching, so "a.e<ZWSP>xe" is ".exe".
 */
static int cp_is_invisible(uint32_t c)
{
	return c == 0x00AD || c == 0x034F || c == 0x061C || c == 0x115F || c == 0x1160 ||
	       c == 0x17B4 || c == 0x17B5 || c == 0x180E ||
	       (c >= 0x200B && c <= 0x200F) || (c >= 0x2060 && c <= 0x2064) ||
	       (c >= 0x206A && c <= 0x206F) || c == 0x3164 || c == 0xFEFF ||
	       c == 0xFFA0 || (c >= 0xFE00 && c <= 0xFE0F) ||
	       (c >= 0xE0000 && c <= 0xE0FFF);
}

/*
 * Decodes one UTF-8 sequence at s[0..n): returns its length and the code
 * point, or 1 and UINT32_MAX for an invalid byte (kept as it is).
 */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp_r)
{
	uint32_t c = s[0];
	size_t len, i;

	*cp_r = UINT32_MAX;
	if (c < 0x80) {
		*cp_r = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF)
		len = 2, c &= 0x1F;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3, c &= 0x0F;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4, c &= 0x07;
	else
		return 1;
	if (len > n)
		return 1;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 1;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)))
		return 1;
	*cp_r = c;
	return len;
}

#define NAME_BIDI 1
#define NAME_INVISIBLE 2

/*
 * Normalises a file name into out (at least strlen(name) + 1 bytes) the way
 * Windows will see it: bidi and invisible characters and C0 controls
 * removed (flags in *flags_r), trailing dots and spaces and an NTFS
 * "::$DATA" stream suffix stripped (Win32 drops them: "a.exe." and
 * "a.exe::$DATA" create a.exe), ASCII lower-cased. Returns the length.
 */
static size_t name_normalise(const char *name, char *out, unsigned *flags_r)
{
	const unsigned char *s = (const unsigned char *)name;
	size_t n = strlen(name), i = 0, o = 0;
	int again;

	*flags_r = 0;
	while (i < n) {
		uint32_t cp;
		size_t l = utf8_next(s + i, n - i, &cp);

		if (cp != UINT32_MAX && cp_is_bidi(cp)) {
			*flags_r |= NAME_BIDI;
		} else if (cp != UINT32_MAX && cp_is_invisible(cp)) {
			*flags_r |= NAME_INVISIBLE;
		} else if (cp < 0x20 || cp == 0x7F) {
			/* not allowed in Windows names: dropped */
		} else if (cp == UINT32_MAX) {
			/*
			 * An invalid byte becomes a one-byte placeholder: kept as it
			 * was, dropping a character between two such bytes could join
			 * them into a new character (an RLO) the checks never saw.
			 */
			out[o++] = '?';
		} else {
			memcpy(out + o, s + i, l);
			o += l;
		}
		i += l;
	}
	do {
		again = 0;
		while (o > 0 && (out[o - 1] == '.' || out[o - 1] == ' '))
			o--;
		if (o >= 7 && strncasecmp(out + o - 7, "::$data", 7) == 0) {
			o -= 7;
			again = 1;
		}
	} while (again);
	out[o] = '\0';
	for (i = 0; i < o; i++)
		if (out[i] >= 'A' && out[i] <= 'Z')
			out[i] = (char)(out[i] - 'A' + 'a');
	return o;
}

/* An extension rule entry without its leading dots. */
static const char *ext_entry(const char *e)
{
	while (*e == '.')
		e++;
	return e;
}

/* True when name[0..n) ends in "." + ext (ext compared without case). */
static int name_has_ext(const char *name, size_t n, const char *ext)
{
	size_t el = strlen(ext);

	return el > 0 && n > el && name[n - el - 1] == '.' &&
	       strncasecmp(name + n - el, ext, el) == 0;
}

/* The configured (or given) extension list entry name ends in, or NULL. */
static const char *ext_match(const char *name, size_t n, const char *const *list,
                             size_t count)
{
	for (size_t i = 0; i < count; i++) {
		const char *e = list[i] != NULL ? ext_entry(list[i]) : "";

		if (name_has_ext(name, n, e))
			return e;
	}
	return NULL;
}

/*
 * True when name[0..stem) (the name without its last extension) itself
 * ends in a decoy extension, ignoring dots and spaces before the last one:
 * "invoice.pdf.exe", "invoice.pdf      .exe", "invoice.pdf..exe".
 */
static int stem_is_decoy(const char *name, size_t stem)
{
	while (stem > 0 && (name[stem - 1] == ' ' || name[stem - 1] == '.'))
		stem--;
	for (size_t i = 0; i < attach_n_decoy_extensions; i++)
		if (name_has_ext(name, stem, attach_decoy_extensions[i]))
			return 1;
	return 0;
}

/*
 * Copies src (n bytes, then a NUL) into dst[cap], keeping its end when it
 * does not fit (the extension is what matters): "head...tail", cut on UTF-8
 * boundaries.
 */
static void copy_name(char *dst, size_t cap, const char *src, size_t n)
{
	size_t head, tail;

	if (n < cap) {
		memcpy(dst, src, n + 1);
		return;
	}
	head = (cap - 4) / 2;
	tail = cap - 4 - head;
	while (head > 0 && ((unsigned char)src[head] & 0xC0) == 0x80)
		head--;
	while (tail > 0 && ((unsigned char)src[n - tail] & 0xC0) == 0x80)
		tail--;
	memcpy(dst, src, head);
	memcpy(dst + head, "...", 3);
	memcpy(dst + head + 3, src + n - tail, tail);
	dst[head + 3 + tail] = '\0';
}

enum attach_res attach_check_name(const char *name, const struct attach_rules *r,
                                  struct attach_finding *f_r)
{
	char stackbuf[512], *norm = stackbuf, reason[sizeof(f_r->reason)] = "";
	size_t len = strlen(name), n;
	const char *ext;
	unsigned flags;

	if (len >= sizeof(stackbuf)) {
		norm = malloc(len + 1);
		if (norm == NULL) {
			if (f_r != NULL)
				snprintf(f_r->reason, sizeof(f_r->reason),
				         "out of memory");
			return ATTACH_ERROR;
		}
	}
	n = name_normalise(name, norm, &flags);
	ext = ext_match(norm, n, r->extensions, r->n_extensions);
	if (ext == NULL && r->double_extensions) {
		/* a decoy before a shipped default stays blocked (attach.h) */
		ext = ext_match(norm, n, attach_default_extensions,
		                attach_n_default_extensions);
		if (ext != NULL && !stem_is_decoy(norm, n - strlen(ext) - 1))
			ext = NULL;
	}
	if ((ext != NULL || r->bidi_controls) && (flags & NAME_BIDI)) {
		/* Security: a bidi control in a file name exists to lie about it. */
		snprintf(reason, sizeof(reason), "hidden extension (RTL override)");
	} else if (ext != NULL && r->double_extensions &&
	           stem_is_decoy(norm, n - strlen(ext) - 1)) {
		char shown[sizeof(reason) - 17];

		copy_name(shown, sizeof(shown), norm, n);
		snprintf(reason, sizeof(reason), "double extension %s", shown);
	} else if (ext != NULL) {
		snprintf(reason, sizeof(reason), "extension .%.100s",
		         norm + n - strlen(ext));
	}
	if (reason[0] != '\0' && f_r != NULL) {
		copy_name(f_r->filename, sizeof(f_r->filename), norm, n);
		memcpy(f_r->reason, reason, sizeof(reason));
	}
	if (norm != stackbuf)
		free(norm);
	return reason[0] != '\0' ? ATTACH_BLOCKED : ATTACH_PASS;
}

/* True when the lower-case type/subtype matches a rule entry (attach.h). */
static int type_blocked(const struct attach_rules *r, const char *type)
{
	for (size_t i = 0; i < r->n_mime_types; i++) {
		const char *e = r->mime_types[i];
		size_t el;

		if (e == NULL || (el = strlen(e)) == 0)
			continue;
		if (e[el - 1] == '*' ? strncasecmp(type, e, el - 1) == 0
		                     : strcasecmp(type, e) == 0)
			return 1;
	}
	return 0;
}

/* ---- the streaming structure parser ---- */

#define BOUNDARY_MAX 998 /* RFC 5322 line limit; RFC 2046 wants at most 70 */
#define LINE_CAP (BOUNDARY_MAX + 8)
#define FIELD_MAX 16384
#define DEPTH_CAP 100  /* max_depth is clamped to this */
#define DECODE_IN 4096 /* encoded message/rfc822 bytes decoded per step */

enum st { ST_HEADER, ST_BODY };
enum hf { HF_NONE, HF_CTYPE, HF_CDISP, HF_CTE };

/* One open multipart. */
struct frame {
	unsigned depth;  /* of the multipart entity */
	unsigned nparts; /* body parts begun so far */
	size_t plen;     /* its section number's length in path[] */
	int digest;      /* multipart/digest: parts default to message/rfc822 */
	size_t blen;
	char *boundary;
};

struct attach_stream {
	const struct attach_rules *r;
	unsigned max_depth;
	enum attach_res res; /* sticky once not PASS */
	struct attach_finding f;
	enum st st;

	/* the current line: its first LINE_CAP bytes */
	char line[LINE_CAP];
	size_t llen;
	int lstarted; /* a byte of this line was seen */
	int lover;    /* longer than LINE_CAP */
	int lnotb;    /* cannot be a boundary line */
	int lskip;    /* skipping to its LF */
	int lfed;     /* already handed to the nested stream */

	/* the header block being read */
	int hname;  /* still reading a field name */
	enum hf hf; /* the field being captured */
	char field[FIELD_MAX + 1];
	size_t flen;
	GMimeContentType *ct; /* the one that decides the structure */
	GMimeContentEncoding cte;
	int seen_ct, seen_cte;
	struct attach_finding name_f, type_f;
	int has_name_f, has_type_f;

	/* the entity those headers belong to */
	int ent_msg_root; /* a message's own headers: its body is the part */
	int ent_digest;
	unsigned ent_depth;

	/* open multiparts, innermost last */
	struct frame *frames;
	unsigned nframes, fcap;

	/* the current entity's IMAP section number */
	unsigned path[DEPTH_CAP + 4];
	size_t pathlen;

	/* body parts begun in the whole message (the root's count, shared) */
	unsigned long parts_own, *parts;

	/* an encoded message/rfc822 body: decoded into a nested stream */
	struct attach_stream *child;
	GMimeEncoding dec;
	char decoded[2 * DECODE_IN + 64];
};

__attribute__((format(printf, 2, 3))) static void set_error(struct attach_stream *s,
                                                            const char *fmt, ...)
{
	va_list ap;

	if (s->res != ATTACH_PASS)
		return;
	memset(&s->f, 0, sizeof(s->f));
	va_start(ap, fmt);
	vsnprintf(s->f.reason, sizeof(s->f.reason), fmt, ap);
	va_end(ap);
	s->res = ATTACH_ERROR;
}

static struct attach_stream *stream_new(const struct attach_rules *r, unsigned depth,
                                        const unsigned *path, size_t pathlen)
{
	struct attach_stream *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->r = r;
	s->max_depth = r->max_depth == 0 ? ATTACH_MAX_DEPTH : r->max_depth;
	if (s->max_depth > DEPTH_CAP)
		s->max_depth = DEPTH_CAP;
	s->st = ST_HEADER;
	s->ent_msg_root = 1;
	s->ent_depth = depth;
	if (pathlen > 0)
		memcpy(s->path, path, pathlen * sizeof(*path));
	s->pathlen = pathlen;
	s->parts = &s->parts_own;
	return s;
}

struct attach_stream *attach_stream_new(const struct attach_rules *r)
{
	return stream_new(r, 0, NULL, 0);
}

void attach_stream_free(struct attach_stream **sp)
{
	struct attach_stream *s = *sp;

	*sp = NULL;
	if (s == NULL)
		return;
	attach_stream_free(&s->child);
	for (unsigned i = 0; i < s->nframes; i++)
		free(s->frames[i].boundary);
	free(s->frames);
	if (s->ct != NULL)
		g_object_unref(s->ct);
	free(s);
}

/* Hands decoded bytes of an encoded message/rfc822 body to the nested stream. */
static void child_feed(struct attach_stream *s, const char *p, size_t n)
{
	while (n > 0 && s->res == ATTACH_PASS && s->child != NULL) {
		size_t k = n < DECODE_IN ? n : DECODE_IN, out;

		/* base64 and QP never decode to more than they read, plus a carry */
		if (g_mime_encoding_outlen(&s->dec, k) > sizeof(s->decoded)) {
			set_error(s, "decoder buffer too small");
			return;
		}
		out = g_mime_encoding_step(&s->dec, p, k, s->decoded);
		if (attach_stream_feed(s->child, s->decoded, out) != ATTACH_PASS) {
			s->res = s->child->res;
			s->f = s->child->f;
		}
		p += k;
		n -= k;
	}
}

/* Ends the nested stream of an encoded message/rfc822 body. */
static void child_end(struct attach_stream *s)
{
	struct attach_finding f;
	size_t out;

	if (s->child == NULL)
		return;
	if (s->res == ATTACH_PASS) {
		out = g_mime_encoding_flush(&s->dec, "", 0, s->decoded);
		if (attach_stream_feed(s->child, s->decoded, out) == ATTACH_PASS &&
		    attach_stream_finish(s->child, &f) != ATTACH_PASS) {
			s->res = s->child->res;
			s->f = f;
		} else if (s->child->res != ATTACH_PASS) {
			s->res = s->child->res;
			s->f = s->child->f;
		}
	}
	attach_stream_free(&s->child);
}

/* Checks every "name" / "filename" parameter of a decoded field. */
static void check_params(struct attach_stream *s, GMimeParamList *l)
{
	int n = l != NULL ? g_mime_param_list_length(l) : 0;

	for (int i = 0; i < n && !s->has_name_f; i++) {
		GMimeParam *p = g_mime_param_list_get_parameter_at(l, i);
		const char *k = g_mime_param_get_name(p), *v = g_mime_param_get_value(p);
		enum attach_res r;

		if (k == NULL || v == NULL ||
		    (strcasecmp(k, "filename") != 0 && strcasecmp(k, "name") != 0))
			continue;
		memset(&s->name_f, 0, sizeof(s->name_f));
		r = attach_check_name(v, s->r, &s->name_f);
		if (r == ATTACH_BLOCKED)
			s->has_name_f = 1;
		else if (r == ATTACH_ERROR)
			set_error(s, "%s", s->name_f.reason);
	}
}

/* The lower-case "type/subtype" of ct into buf[cap]. */
static void type_string(GMimeContentType *ct, char *buf, size_t cap)
{
	char *m = g_mime_content_type_get_mime_type(ct);

	snprintf(buf, cap, "%s", m != NULL ? m : "application/octet-stream");
	g_free(m);
	for (char *p = buf; *p != '\0'; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
}

static int ct_is_split_multipart(GMimeContentType *ct)
{
	const char *b = g_mime_content_type_get_parameter(ct, "boundary");

	return g_mime_content_type_is_type(ct, "multipart", "*") && b != NULL &&
	       b[0] != '\0';
}

/*
 * A captured field is complete: decode it with GMime and check it. Every
 * Content-Type and Content-Disposition occurrence is checked (a client
 * may honour another one than we do); the structure follows the first
 * Content-Type, or the first multipart one with a boundary when there is
 * one (Security: a multipart we do not split could hide part headers).
 */
static void flush_field(struct attach_stream *s)
{
	enum hf hf = s->hf;

	s->hf = HF_NONE;
	if (hf == HF_NONE)
		return;
	s->field[s->flen] = '\0';
	s->flen = 0;
	if (hf == HF_CTYPE) {
		GMimeContentType *ct = g_mime_content_type_parse(NULL, s->field);
		char type[sizeof(s->type_f.mime_type)];

		if (ct == NULL)
			return;
		type_string(ct, type, sizeof(type));
		if (!s->has_type_f && type_blocked(s->r, type)) {
			s->has_type_f = 1;
			memset(&s->type_f, 0, sizeof(s->type_f));
			snprintf(s->type_f.reason, sizeof(s->type_f.reason),
			         "MIME type %.140s", type);
		}
		check_params(s, g_mime_content_type_get_parameters(ct));
		if (!s->seen_ct ||
		    (ct_is_split_multipart(ct) && !ct_is_split_multipart(s->ct))) {
			if (s->ct != NULL)
				g_object_unref(s->ct);
			s->ct = ct;
			s->seen_ct = 1;
		} else {
			g_object_unref(ct);
		}
	} else if (hf == HF_CDISP) {
		GMimeContentDisposition *d =
		    g_mime_content_disposition_parse(NULL, s->field);

		if (d != NULL) {
			check_params(s, g_mime_content_disposition_get_parameters(d));
			g_object_unref(d);
		}
	} else if (!s->seen_cte) {
		s->cte = g_mime_content_encoding_from_string(g_strstrip(s->field));
		s->seen_cte = 1;
	}
}

/* Forgets the header block just classified. */
static void headers_reset(struct attach_stream *s)
{
	if (s->ct != NULL)
		g_object_unref(s->ct);
	s->ct = NULL;
	s->seen_ct = s->seen_cte = 0;
	s->cte = GMIME_CONTENT_ENCODING_DEFAULT;
	s->has_name_f = s->has_type_f = 0;
	s->hf = HF_NONE;
	s->hname = 0;
	s->flen = 0;
}

static void path_string(const struct attach_stream *s, char *buf, size_t cap)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < s->pathlen && o + 12 < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, i ? ".%u" : "%u", s->path[i]);
}

static int push_frame(struct attach_stream *s, const char *boundary, int digest)
{
	struct frame *fr;

	if (s->nframes == s->fcap) {
		unsigned cap = s->fcap ? s->fcap * 2 : 4;
		struct frame *nf = realloc(s->frames, cap * sizeof(*nf));

		if (nf == NULL)
			return -1;
		s->frames = nf;
		s->fcap = cap;
	}
	fr = &s->frames[s->nframes];
	fr->boundary = strdup(boundary);
	if (fr->boundary == NULL)
		return -1;
	fr->blen = strlen(boundary);
	fr->depth = s->ent_depth;
	fr->nparts = 0;
	fr->plen = s->pathlen;
	fr->digest = digest;
	s->nframes++;
	return 0;
}

/* The header block is over: check the entity and decide what its body is. */
static void finish_headers(struct attach_stream *s)
{
	char type[sizeof(s->f.mime_type)];
	int multipart;

	flush_field(s);
	if (s->res != ATTACH_PASS)
		return;
	if (s->ct != NULL)
		type_string(s->ct, type, sizeof(type));
	else
		snprintf(type, sizeof(type), "%s",
		         s->ent_digest ? "message/rfc822" : "text/plain");
	if (s->ct == NULL && !s->has_type_f && type_blocked(s->r, type)) {
		s->has_type_f = 1;
		snprintf(s->type_f.reason, sizeof(s->type_f.reason), "MIME type %.140s",
		         type);
	}
	multipart = s->ct != NULL && ct_is_split_multipart(s->ct);
	/* RFC 3501 section 6.4.5: a non-multipart message body is part 1 */
	if (s->ent_msg_root && !multipart && s->pathlen < DEPTH_CAP + 4)
		s->path[s->pathlen++] = 1;
	if (s->has_name_f || s->has_type_f) {
		s->f = s->has_name_f ? s->name_f : s->type_f;
		path_string(s, s->f.part, sizeof(s->f.part));
		snprintf(s->f.mime_type, sizeof(s->f.mime_type), "%s", type);
		s->res = ATTACH_BLOCKED;
		return;
	}
	if (s->ent_depth > s->max_depth) {
		set_error(s, "MIME nesting deeper than %u levels", s->max_depth);
		return;
	}
	s->st = ST_BODY;
	if (multipart) {
		const char *b = g_mime_content_type_get_parameter(s->ct, "boundary");

		if (strlen(b) > BOUNDARY_MAX)
			set_error(s, "MIME boundary longer than %d bytes", BOUNDARY_MAX);
		else if (push_frame(s, b, strcmp(type, "multipart/digest") == 0) < 0)
			set_error(s, "out of memory");
	} else if (strcmp(type, "message/rfc822") == 0 ||
	           strcmp(type, "message/global") == 0) {
		if (s->cte == GMIME_CONTENT_ENCODING_BASE64 ||
		    s->cte == GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE) {
			/* not allowed by RFC 2046 5.2.1, yet clients decode it */
			s->child =
			    stream_new(s->r, s->ent_depth + 1, s->path, s->pathlen);
			if (s->child == NULL) {
				set_error(s, "out of memory");
			} else {
				s->child->parts = s->parts;
				g_mime_encoding_init_decode(&s->dec, s->cte);
			}
		} else {
			/* the body is the nested message's header block */
			s->st = ST_HEADER;
			s->ent_msg_root = 1;
			s->ent_digest = 0;
			s->ent_depth++;
		}
	}
	headers_reset(s);
}

/*
 * A boundary line of frame k: a delimiter begins its next body part, a
 * close delimiter ends it. Either closes every deeper multipart.
 */
static void on_boundary(struct attach_stream *s, unsigned k, int close)
{
	struct frame *fr;

	if (s->st == ST_HEADER)
		finish_headers(s);
	child_end(s);
	if (s->res != ATTACH_PASS)
		return;
	while (s->nframes > k + 1)
		free(s->frames[--s->nframes].boundary);
	fr = &s->frames[k];
	if (close) {
		free(fr->boundary);
		s->nframes = k;
		s->st = ST_BODY; /* the epilogue */
		return;
	}
	if (++*s->parts > s->r->max_parts && s->r->max_parts != 0) {
		set_error(s, "more than %lu MIME parts", s->r->max_parts);
		return;
	}
	s->pathlen = fr->plen;
	if (s->pathlen < DEPTH_CAP + 4)
		s->path[s->pathlen++] = ++fr->nparts;
	headers_reset(s);
	s->st = ST_HEADER;
	s->ent_msg_root = 0;
	s->ent_digest = fr->digest;
	s->ent_depth = fr->depth + 1;
}

static int is_lwsp(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* True when line[from..llen) is only white space (and so was any overflow). */
static int rest_is_lwsp(const struct attach_stream *s, size_t from)
{
	for (size_t i = from; i < s->llen; i++)
		if (!is_lwsp(s->line[i]))
			return 0;
	return 1;
}

/*
 * Is the finished line a boundary? Sets *k_r and *close_r. As GMime's
 * is_boundary: "--" + boundary, then "--" for a close delimiter, then only
 * white space; innermost multipart first.
 */
static int line_boundary(const struct attach_stream *s, unsigned *k_r, int *close_r)
{
	if (s->lnotb || s->nframes == 0 || s->llen < 2)
		return 0;
	for (unsigned k = s->nframes; k-- > 0;) {
		const struct frame *fr = &s->frames[k];
		size_t end = 2 + fr->blen;

		if (s->llen < end || memcmp(s->line + 2, fr->boundary, fr->blen) != 0)
			continue;
		*k_r = k;
		if (rest_is_lwsp(s, end)) {
			*close_r = 0;
			return 1;
		}
		if (s->llen >= end + 2 && s->line[end] == '-' &&
		    s->line[end + 1] == '-' && rest_is_lwsp(s, end + 2)) {
			*close_r = 1;
			return 1;
		}
	}
	return 0;
}

/* The end of a line (its LF, or the end of the input). */
static void end_line(struct attach_stream *s, int lf)
{
	unsigned k;
	int close;

	if (line_boundary(s, &k, &close)) {
		on_boundary(s, k, close);
	} else if (s->st == ST_HEADER) {
		if (s->llen == 0 || (s->llen == 1 && s->line[0] == '\r'))
			finish_headers(s);
		else if (s->hname)
			s->hname = 0; /* a line without a colon: ignored */
	} else if (s->child != NULL) {
		if (!s->lfed)
			child_feed(s, s->line, s->llen);
		if (lf)
			child_feed(s, "\n", 1);
	}
	s->llen = 0;
	s->lstarted = s->lover = s->lnotb = s->lskip = s->lfed = 0;
}

/* Which field of interest the name line[0..n) is, if any. */
static enum hf field_kind(const char *name, size_t n)
{
	while (n > 0 && (name[n - 1] == ' ' || name[n - 1] == '\t'))
		n--;
	if (n == 12 && strncasecmp(name, "content-type", 12) == 0)
		return HF_CTYPE;
	if (n == 19 && strncasecmp(name, "content-disposition", 19) == 0)
		return HF_CDISP;
	if (n == 25 && strncasecmp(name, "content-transfer-encoding", 25) == 0)
		return HF_CTE;
	return HF_NONE;
}

/* One byte of a line (not its LF, not a skipped byte). */
static void line_byte(struct attach_stream *s, char c)
{
	if (!s->lstarted) {
		s->lstarted = 1;
		if (s->st == ST_HEADER && c != ' ' && c != '\t') {
			flush_field(s); /* not a continuation: the last field is whole */
			s->hname = 1;
		}
		if (s->nframes == 0 || c != '-')
			s->lnotb = 1;
	} else if (s->llen == 1 && c != '-') {
		s->lnotb = 1;
	}
	int stored = s->llen < LINE_CAP;

	if (stored) {
		s->line[s->llen++] = c;
	} else {
		s->lover = 1;
		if (!is_lwsp(c))
			s->lnotb = 1;
	}
	if (s->st == ST_HEADER) {
		if (s->hname) {
			if (c == ':') {
				s->hname = 0;
				s->hf = field_kind(s->line, s->llen - 1);
				s->flen = 0;
			} else if (s->lover) {
				s->hname = 0;
			}
		} else if (s->hf != HF_NONE && c != '\r') {
			if (s->flen == FIELD_MAX) {
				set_error(s, "%s header longer than %d bytes",
				          s->hf == HF_CTYPE ? "Content-Type"
				          : s->hf == HF_CDISP
				              ? "Content-Disposition"
				              : "Content-Transfer-Encoding",
				          FIELD_MAX);
				return;
			}
			/* Security: a NUL must not end the value early for GMime */
			s->field[s->flen++] = (char)(c == '\0' ? ' ' : c);
		}
		if (s->lnotb && !s->hname && s->hf == HF_NONE)
			s->lskip = 1;
	} else if (s->lnotb) {
		if (s->child != NULL && !s->lfed) {
			/* white space past LINE_CAP before c is lost: harmless in
			 * base64/QP */
			child_feed(s, s->line, s->llen);
			if (!stored)
				child_feed(s, &c, 1);
			s->lfed = 1;
		}
		s->lskip = 1;
	}
}

enum attach_res attach_stream_feed(struct attach_stream *s, const void *data, size_t len)
{
	const char *p = data, *end = p + len;

	while (p < end && s->res == ATTACH_PASS) {
		if (s->lskip) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t n = (size_t)((nl != NULL ? nl : end) - p);

			if (s->child != NULL)
				child_feed(s, p, n);
			p += n;
			if (nl == NULL)
				break;
		}
		if (*p == '\n')
			end_line(s, 1);
		else
			line_byte(s, *p);
		p++;
	}
	return s->res;
}

enum attach_res attach_stream_finish(struct attach_stream *s, struct attach_finding *f_r)
{
	if (s->res == ATTACH_PASS && (s->lstarted || s->llen > 0))
		end_line(s, 0);
	if (s->res == ATTACH_PASS && s->st == ST_HEADER)
		finish_headers(s);
	child_end(s);
	if (f_r != NULL) {
		if (s->res != ATTACH_PASS)
			*f_r = s->f;
		else
			memset(f_r, 0, sizeof(*f_r));
	}
	return s->res;
}

enum attach_res attach_check_buffer(const void *data, size_t len,
                                    const struct attach_rules *r,
                                    struct attach_finding *f_r)
{
	struct attach_stream *s = attach_stream_new(r);
	enum attach_res res;

	memset(f_r, 0, sizeof(*f_r));
	if (s == NULL) {
		snprintf(f_r->reason, sizeof(f_r->reason), "out of memory");
		return ATTACH_ERROR;
	}
	attach_stream_feed(s, data, len);
	res = attach_stream_finish(s, f_r);
	f_r->parts = s->parts_own;
	attach_stream_free(&s);
	return res;
}

enum attach_res attach_check_fd(int fd, const struct attach_rules *r,
                                struct attach_finding *f_r)
{
	const size_t bufsize = 64 * 1024;
	struct attach_stream *s;
	enum attach_res res = ATTACH_PASS;
	char *buf;
	off_t off = 0;

	memset(f_r, 0, sizeof(*f_r));
	s = attach_stream_new(r);
	buf = malloc(bufsize);
	if (s == NULL || buf == NULL) {
		attach_stream_free(&s);
		free(buf);
		snprintf(f_r->reason, sizeof(f_r->reason), "out of memory");
		return ATTACH_ERROR;
	}
	for (;;) {
		ssize_t n = pread(fd, buf, bufsize, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(f_r->reason, sizeof(f_r->reason),
			         "cannot read message: %s", strerror(errno));
			res = ATTACH_ERROR;
			break;
		}
		if (n == 0 || attach_stream_feed(s, buf, (size_t)n) != ATTACH_PASS)
			break;
		off += n;
	}
	if (res == ATTACH_PASS)
		res = attach_stream_finish(s, f_r);
	f_r->parts = s->parts_own;
	attach_stream_free(&s);
	free(buf);
	return res;
}
