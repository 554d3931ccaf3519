/*
 * genmsg: the deterministic test messages of bench/run (same bytes on every
 * run and machine; LF line ends).
 *
 *   genmsg plain BYTES        a plain-text reply (the 4 KB message)
 *   genmsg alternative BYTES  multipart/alternative, text + HTML (100 KB)
 *   genmsg mixed BYTES        multipart/mixed, text + base64 application/pdf
 *                             attachment (10 MB, 100 MB)
 *
 * The message is written to stdout and is exactly BYTES long. Every message
 * is a reply to a GitLab notification with
 *   To: incoming+0123456789abcdef0123456789abcdef@incoming.gitlab.example.com
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
    /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static const char *const WORDS[] = {
    "the", "merge", "request", "looks", "good", "to", "me", "but", "pipeline",
    "failed", "on", "main", "again", "could", "you", "rebase", "and", "check",
    "spool", "delivery", "with", "a", "larger", "message", "thanks", "for",
    "review", "I", "think", "we", "should", "keep", "fsync", "before", "link",
    "issue", "comment", "reply", "by", "email", "works", "now", "in", "staging",
};
#define NWORDS (sizeof WORDS / sizeof WORDS[0])

static const char HEADERS[] =
    "Received: from mail-relay.client.example (mail-relay.client.example [192.0.2.10])\n"
    "\tby mx.incoming.gitlab.example.com (Postfix) with ESMTPS id 4ZbQ1x2Yz7z9sT\n"
    "\tfor <incoming+0123456789abcdef0123456789abcdef@incoming.gitlab.example.com>;\n"
    "\tWed, 25 Nov 2026 10:00:01 +0000 (UTC)\n"
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=client.example; s=sel1;\n"
    "\th=from:to:subject:date:message-id:in-reply-to:references;\n"
    "\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n"
    "\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgaGFzIHRoZSByaWdodCBzaGFwZQ==\n"
    "From: Alice Example <alice@client.example>\n"
    "To: incoming+0123456789abcdef0123456789abcdef@incoming.gitlab.example.com\n"
    "Subject: Re: group/project | Fix spool delivery (!42)\n"
    "Date: Wed, 25 Nov 2026 10:00:00 +0000\n"
    "Message-ID: <CAF1bench0001@mail.client.example>\n"
    "In-Reply-To: <merge_request_42@gitlab.example.com>\n"
    "References: <merge_request_42@gitlab.example.com>\n"
    " <note_1001@gitlab.example.com>\n"
    "MIME-Version: 1.0\n"
    "User-Agent: bench-genmsg/1.0\n";

/* Writes about `n` bytes of text lines (<= 72 chars, LF) into out; exactly n. */
static void text_fill(FILE *out, long n)
{
    char line[128];
    while (n > 0) {
        size_t len = 0;
        for (;;) {
            const char *w = WORDS[next() % NWORDS];
            size_t wl = strlen(w);
            if (len + wl + 1 > 72)
                break;
            if (len)
                line[len++] = ' ';
            memcpy(line + len, w, wl);
            len += wl;
        }
        line[len++] = '\n';
        if ((long) len > n) {
            len = (size_t) n;
            if (len > 0)
                line[len - 1] = '\n';
        }
        fwrite(line, 1, len, out);
        n -= (long) len;
    }
}

/* Exactly n bytes of base64 lines (76 chars + LF). */
static void base64_fill(FILE *out, long n)
{
    static const char B64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char line[77];
    while (n > 0) {
        long len = n >= 77 ? 77 : n;
        for (long i = 0; i < len - 1; i++)
            line[i] = B64[next() & 63];
        line[len - 1] = '\n';
        fwrite(line, 1, (size_t) len, out);
        n -= len;
    }
}

static void usage(void)
{
    fputs("usage: genmsg plain|alternative|mixed BYTES > message\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        usage();
    const char *kind = argv[1];
    long total = atol(argv[2]);
    char head[8192], tail[1024];
    int hl, tl;
    static char obuf[1 << 20];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);

    if (strcmp(kind, "plain") == 0) {
        hl = snprintf(head, sizeof head,
                      "%s"
                      "Content-Type: text/plain; charset=utf-8\n"
                      "Content-Transfer-Encoding: 8bit\n"
                      "\n"
                      "Thanks, that fixes it for me. Some notes inline.\n\n",
                      HEADERS);
        tl = snprintf(tail, sizeof tail, "\n-- \nAlice\n");
        if (total < hl + tl)
            usage();
        fwrite(head, 1, (size_t) hl, stdout);
        text_fill(stdout, total - hl - tl);
        fwrite(tail, 1, (size_t) tl, stdout);
    } else if (strcmp(kind, "alternative") == 0) {
        hl = snprintf(head, sizeof head,
                      "%s"
                      "Content-Type: multipart/alternative; boundary=\"=_alt_b3nch\"\n"
                      "\n"
                      "--=_alt_b3nch\n"
                      "Content-Type: text/plain; charset=utf-8\n"
                      "\n",
                      HEADERS);
        const char *mid = "\n--=_alt_b3nch\n"
                          "Content-Type: text/html; charset=utf-8\n"
                          "\n<html><body><p>\n";
        tl = snprintf(tail, sizeof tail, "</p></body></html>\n--=_alt_b3nch--\n");
        long rest = total - hl - (long) strlen(mid) - tl;
        if (rest < 2)
            usage();
        fwrite(head, 1, (size_t) hl, stdout);
        text_fill(stdout, rest / 3);
        fputs(mid, stdout);
        text_fill(stdout, rest - rest / 3);
        fwrite(tail, 1, (size_t) tl, stdout);
    } else if (strcmp(kind, "mixed") == 0) {
        hl = snprintf(head, sizeof head,
                      "%s"
                      "Content-Type: multipart/mixed; boundary=\"=_mix_b3nch\"\n"
                      "\n"
                      "--=_mix_b3nch\n"
                      "Content-Type: text/plain; charset=utf-8\n"
                      "\n"
                      "The log of the failing pipeline is attached.\n"
                      "\n"
                      "--=_mix_b3nch\n"
                      "Content-Type: application/pdf; name=\"pipeline-log.pdf\"\n"
                      "Content-Disposition: attachment; filename=\"pipeline-log.pdf\"\n"
                      "Content-Transfer-Encoding: base64\n"
                      "\n",
                      HEADERS);
        tl = snprintf(tail, sizeof tail, "\n--=_mix_b3nch--\n");
        if (total < hl + tl + 2)
            usage();
        fwrite(head, 1, (size_t) hl, stdout);
        base64_fill(stdout, total - hl - tl);
        fwrite(tail, 1, (size_t) tl, stdout);
    } else {
        usage();
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
