/*
 * floor: the least a durable Maildir delivery can do, the yardstick that
 * bench/run puts mailpipe next to.
 *
 *   floor MAILDIR < message        (MAILDIR/tmp and MAILDIR/new must exist)
 *
 * Creates MAILDIR/tmp/<unique> with O_CREAT|O_EXCL, copies stdin into it
 * through a 128 KiB page-aligned buffer (read/write loop), fsyncs and closes
 * it, links it into MAILDIR/new/, unlinks the tmp name and fsyncs new/.
 * Exit 0 when the message is durable, 75 (EX_TEMPFAIL: Postfix defers) on
 * any error. No parsing, no config, no logging.
 *
 * Built by bench/run with gcc -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define BUF_SIZE (128 * 1024)
#define EX_TEMPFAIL 75

static void die(const char *what)
{
    fprintf(stdout, "4.3.0 floor: %s: %s\n", what, strerror(errno));
    exit(EX_TEMPFAIL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("4.3.5 floor: usage: floor MAILDIR < message\n", stdout);
        return EX_TEMPFAIL;
    }
    const char *md = argv[1];
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char name[512], tmp[4096], new_[4096], newdir[4096];
    snprintf(name, sizeof name, "%lld.M%06ldP%ld.%s", (long long) tv.tv_sec,
             (long) tv.tv_usec, (long) getpid(), host);
    snprintf(tmp, sizeof tmp, "%s/tmp/%s", md, name);
    snprintf(new_, sizeof new_, "%s/new/%s", md, name);
    snprintf(newdir, sizeof newdir, "%s/new", md);

    void *buf;
    if (posix_memalign(&buf, 4096, BUF_SIZE) != 0)
        die("posix_memalign");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0)
        die("open tmp");
    for (;;) {
        ssize_t n = read(0, buf, BUF_SIZE);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            unlink(tmp);
            die("read");
        }
        if (n == 0)
            break;
        char *p = buf;
        while (n > 0) {
            ssize_t w = write(fd, p, (size_t) n);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                unlink(tmp);
                die("write");
            }
            p += w;
            n -= w;
        }
    }
    if (fsync(fd) != 0) {
        unlink(tmp);
        die("fsync");
    }
    if (close(fd) != 0) {
        unlink(tmp);
        die("close");
    }
    if (link(tmp, new_) != 0) {
        unlink(tmp);
        die("link");
    }
    unlink(tmp);
    int dfd = open(newdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        unlink(new_);
        die("fsync new/");
    }
    close(dfd);
    return 0;
}
