/*
 * alloc_counter.c: an LD_PRELOAD interposer that counts heap calls made by the threads that
 * ask for it. Every allocation entry point of glibc is replaced by one that counts (if the
 * calling thread opted in) and forwards to glibc's own implementation (__libc_malloc & co.),
 * so nothing is changed but the count.
 *
 *   gcc -shared -fPIC -O2 -o libkb_alloc_counter.so alloc_counter.c
 *   LD_PRELOAD=./libkb_alloc_counter.so ./host ...
 *
 * A program finds the two functions below with dlsym(RTLD_DEFAULT, ...) (so it also runs,
 * and can say it is not being counted, without the interposer):
 *   void kb_test_alloc_track(int on)   start (1) or stop (0) counting on the calling thread;
 *   void kb_test_alloc_counts(unsigned long out[KB_ALLOC_KINDS])   the counts so far.
 * Counting itself makes no system call and takes no lock: a thread-local flag (initial-exec
 * TLS: no lazy allocation) and relaxed atomic increments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

enum {
    KB_MALLOC,
    KB_CALLOC,
    KB_REALLOC,
    KB_FREE,
    KB_POSIX_MEMALIGN,
    KB_ALIGNED_ALLOC,
    KB_MEMALIGN,
    KB_VALLOC,
    KB_ALLOC_KINDS
};

static __thread int tracking __attribute__((tls_model("initial-exec")));
static atomic_ulong counts[KB_ALLOC_KINDS];

static inline void count(int kind) {
    if (tracking) {
        atomic_fetch_add_explicit(&counts[kind], 1, memory_order_relaxed);
    }
}

__attribute__((visibility("default"))) void kb_test_alloc_track(int on) { tracking = on; }

__attribute__((visibility("default"))) void kb_test_alloc_counts(unsigned long out[KB_ALLOC_KINDS]) {
    for (int i = 0; i < KB_ALLOC_KINDS; i++) {
        out[i] = atomic_load_explicit(&counts[i], memory_order_relaxed);
    }
}

void *malloc(size_t size) {
    count(KB_MALLOC);
    return __libc_malloc(size);
}

void free(void *ptr) {
    if (ptr) {
        count(KB_FREE);
    }
    __libc_free(ptr);
}

void *calloc(size_t n, size_t size) {
    count(KB_CALLOC);
    return __libc_calloc(n, size);
}

void *realloc(void *ptr, size_t size) {
    count(KB_REALLOC);
    return __libc_realloc(ptr, size);
}

static int power_of_two(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

int posix_memalign(void **out, size_t alignment, size_t size) {
    count(KB_POSIX_MEMALIGN);
    if (!power_of_two(alignment) || alignment % sizeof(void *) != 0) {
        return EINVAL;
    }
    void *p = __libc_memalign(alignment, size);
    if (!p) {
        return ENOMEM;
    }
    *out = p;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
    count(KB_ALIGNED_ALLOC);
    return __libc_memalign(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    count(KB_MEMALIGN);
    return __libc_memalign(alignment, size);
}

void *valloc(size_t size) {
    count(KB_VALLOC);
    return __libc_memalign(4096, size);
}

void *pvalloc(size_t size) {
    count(KB_VALLOC);
    return __libc_memalign(4096, (size + 4095) & ~(size_t)4095);
}
