/* bench/policy_client.c: a Postfix-like client of `mailpipe policy`.
 *
 *   policy_client SOCKET CONNECTIONS REQUESTS_PER_CONNECTION
 *
 * Opens CONNECTIONS unix-socket connections at once (like that many smtpd
 * processes), and on each sends REQUESTS_PER_CONNECTION requests one after
 * the other, each with the attributes Postfix 3.7 sends at RCPT TO, waiting
 * for each answer before the next (as smtpd does). Recipients cycle through
 * a valid reply key (a new sender each time, so a new rate bucket), a key
 * no GitLab handler accepts (550), and another domain (DUNNO).
 * Prints one line: requests, seconds, requests/s, latency p50/p99/max in
 * microseconds, and how many answers were 550, 450 and DUNNO.
 * Build: gcc -O2 -pthread -o policy_client policy_client.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *sock_path;
static long per_conn;
static uint64_t *lat;
static long n550, n450, ndunno;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *worker(void *arg) {
    long id = (long)arg;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, sock_path, sizeof a.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        exit(1);
    }
    char req[2048], buf[4096];
    long l550 = 0, l450 = 0, ldunno = 0;
    for (long i = 0; i < per_conn; i++) {
        const char *rcpt;
        char rcpt_buf[256];
        switch (i % 3) {
        case 0:
            snprintf(rcpt_buf, sizeof rcpt_buf,
                     "incoming+%032lx@incoming.gitlab.example.com", (unsigned long)(i % 1000));
            rcpt = rcpt_buf;
            break;
        case 1:
            snprintf(rcpt_buf, sizeof rcpt_buf,
                     "incoming+no-key-%ld.x@incoming.gitlab.example.com", i);
            rcpt = rcpt_buf;
            break;
        default:
            rcpt = "someone@other.example";
        }
        int len = snprintf(req, sizeof req,
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            "client_address=192.0.2.%ld\nclient_name=unknown\nclient_port=%ld\n"
            "reverse_client_name=unknown\nserver_address=127.0.0.1\nserver_port=25\n"
            "helo_name=client.example\nsender=s%ld-%ld@client.example\nrecipient=%s\n"
            "recipient_count=0\nqueue_id=\ninstance=%lx.%lx\nsize=4096\netrn_domain=\n"
            "stress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\n"
            "ccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n"
            "encryption_protocol=\nencryption_cipher=\nencryption_keysize=0\n"
            "policy_context=\ncompatibility_level=3.6\nmail_version=3.7.11\n\n",
            id % 250, 40000 + i % 20000, id, i, rcpt, id, i);
        uint64_t t0 = now_ns();
        if (write(fd, req, (size_t)len) != len) { perror("write"); exit(1); }
        size_t got = 0;
        for (;;) {
            ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
            if (n <= 0) { fprintf(stderr, "read: closed\n"); exit(1); }
            got += (size_t)n;
            buf[got] = 0;
            if (got >= 2 && buf[got - 1] == '\n' && buf[got - 2] == '\n') break;
        }
        lat[id * per_conn + i] = now_ns() - t0;
        if (!strncmp(buf, "action=550", 10)) l550++;
        else if (!strncmp(buf, "action=450", 10)) l450++;
        else if (!strncmp(buf, "action=DUNNO", 12)) ldunno++;
        else { fprintf(stderr, "unexpected answer %s", buf); exit(1); }
    }
    close(fd);
    pthread_mutex_lock(&count_lock);
    n550 += l550; n450 += l450; ndunno += ldunno;
    pthread_mutex_unlock(&count_lock);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: policy_client SOCKET CONNECTIONS REQUESTS_PER_CONNECTION\n");
        return 2;
    }
    sock_path = argv[1];
    long conns = atol(argv[2]);
    per_conn = atol(argv[3]);
    long total = conns * per_conn;
    lat = calloc((size_t)total, sizeof *lat);
    pthread_t *t = calloc((size_t)conns, sizeof *t);
    uint64_t t0 = now_ns();
    for (long i = 0; i < conns; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (long i = 0; i < conns; i++) pthread_join(t[i], NULL);
    double secs = (double)(now_ns() - t0) / 1e9;
    qsort(lat, (size_t)total, sizeof *lat, cmp);
    printf("requests=%ld seconds=%.3f rps=%.0f p50_us=%.1f p99_us=%.1f max_us=%.1f "
           "n550=%ld n450=%ld dunno=%ld\n",
           total, secs, (double)total / secs, lat[total / 2] / 1e3,
           lat[total * 99 / 100] / 1e3, lat[total - 1] / 1e3, n550, n450, ndunno);
    return 0;
}
