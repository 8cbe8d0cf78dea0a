/* Counts the bytes every memcpy / memmove copies, by caller and size, for
 * `COPIES=1 benches/instructions.sh` (docs/performance.md, "The thirteenth
 * pass"). Preloaded into the proxy (LD_PRELOAD); counting starts at
 * SIGUSR1 (after the warm-up) and SIGUSR2 writes the table, one
 * "return-address size count" line per caller and size, to
 * $MEMCPY_COUNT_OUT and the process's memory map to $MEMCPY_COUNT_OUT.maps,
 * for benches/support/copies.py to name the callers.
 *
 * Hand-written because no tool here reports a copy's size: callgrind counts
 * instructions, perf samples, and ltrace would slow every call a
 * thousandfold. The copy itself is `rep movsb` (so that it cannot call
 * back into memcpy); the counted run is slower, the figures are bytes and
 * calls, not time. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOTS (1 << 16)
struct slot { void *caller; size_t size; unsigned long count; };
static struct slot table[SLOTS];
static volatile int counting;
static volatile int lock;

static inline void copy_forward(void *d, const void *s, size_t n) {
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

static inline void count(void *caller, size_t size) {
    if (!counting) return;
    while (__sync_lock_test_and_set(&lock, 1)) {}
    size_t h = (((size_t)caller >> 2) ^ (size * 2654435761u)) & (SLOTS - 1);
    for (int i = 0; i < SLOTS; i++) {
        struct slot *e = &table[(h + i) & (SLOTS - 1)];
        if (e->caller == caller && e->size == size) { e->count++; break; }
        if (!e->caller) { e->caller = caller; e->size = size; e->count = 1; break; }
    }
    __sync_lock_release(&lock);
}

void *memcpy(void *d, const void *s, size_t n) {
    count(__builtin_return_address(0), n);
    copy_forward(d, s, n);
    return d;
}

void *memmove(void *d, const void *s, size_t n) {
    count(__builtin_return_address(0), n);
    if (d <= s || (const char *)s + n <= (char *)d) {
        copy_forward(d, s, n);
    } else {
        char *to = d;
        const char *from = s;
        while (n--) to[n] = from[n];
    }
    return d;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void start(int sig) {
    (void)sig;
    counting = 0;
    for (int i = 0; i < SLOTS; i++) table[i] = (struct slot){0};
    counting = 1;
}

static void dump(int sig) {
    (void)sig;
    counting = 0;
    const char *out = getenv("MEMCPY_COUNT_OUT");
    if (!out) return;
    char path[4096], line[128];
    snprintf(path, sizeof path, "%s.tmp", out);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    for (int i = 0; i < SLOTS; i++) {
        if (!table[i].caller) continue;
        int k = snprintf(line, sizeof line, "%p %zu %lu\n", table[i].caller, table[i].size, table[i].count);
        write_all(fd, line, (size_t)k);
    }
    close(fd);
    char maps[4096];
    snprintf(maps, sizeof maps, "%s.maps", out);
    int in = open("/proc/self/maps", O_RDONLY), o = open(maps, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ssize_t r;
    while (in >= 0 && o >= 0 && (r = read(in, line, sizeof line)) > 0) write_all(o, line, (size_t)r);
    if (in >= 0) close(in);
    if (o >= 0) close(o);
    /* The table last, whole: its name appearing is the signal it is done. */
    rename(path, out);
}

__attribute__((constructor)) static void init(void) {
    signal(SIGUSR1, start);
    signal(SIGUSR2, dump);
}
