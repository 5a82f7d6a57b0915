/* Power-loss simulation for the power-loss campaign (LD_PRELOAD).
 *
 * Every fsync() or fdatasync() of a file under $POWERLOSS_DIR also copies
 * that file, as it stands, to FILE.durable (through FILE.durable.tmp and a
 * rename, under an flock so the newest copy wins). After a kill -9 the
 * .durable copies are what a power cut would have left on disk: whatever was
 * written but never synced is not in them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static void snapshot(int fd) {
    const char *dir = getenv("POWERLOSS_DIR");
    if (dir == NULL || *dir == 0) return;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return; /* a directory's fsync: nothing to copy */
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = 0;
    if (strncmp(path, dir, strlen(dir)) != 0 || strstr(path, ".durable") != NULL) return;
    char out[4200], tmp[4200], lock[4200];
    snprintf(out, sizeof out, "%s.durable", path);
    snprintf(tmp, sizeof tmp, "%s.durable.tmp.%d", path, (int)getpid());
    snprintf(lock, sizeof lock, "%s.durable.lock", path);
    int lk = open(lock, O_WRONLY | O_CREAT, 0644);
    if (lk < 0) return;
    flock(lk, LOCK_EX);
    int dst = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (dst >= 0) {
        char buf[1 << 16];
        off_t off = 0;
        ssize_t got;
        while ((got = pread(fd, buf, sizeof buf, off)) > 0) {
            ssize_t put = 0;
            while (put < got) {
                ssize_t w = write(dst, buf + put, got - put);
                if (w <= 0) break;
                put += w;
            }
            off += got;
        }
        close(dst);
        rename(tmp, out);
    }
    flock(lk, LOCK_UN);
    close(lk);
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int rc = real(fd);
    snapshot(fd);
    return rc;
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int rc = real(fd);
    snapshot(fd);
    return rc;
}
