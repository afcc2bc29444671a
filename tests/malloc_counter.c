/* Counts the process's malloc/calloc/realloc calls (LD_PRELOAD; tests/test_core_memory.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
static void *(*real_malloc)(size_t), *(*real_calloc)(size_t, size_t),
            *(*real_realloc)(void *, size_t);
static __thread int counting_off;
static unsigned long calls;
unsigned long evltest_malloc_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }
static void count(void) { __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED); }
void *malloc(size_t n) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    count();
    return real_malloc(n);
}
void *realloc(void *p, size_t n) {
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    count();
    return real_realloc(p, n);
}
/* dlsym itself may calloc: serve that from a static block, uncounted */
static char early[4096]; static size_t early_used;
void *calloc(size_t k, size_t n) {
    if (!real_calloc) {
        if (counting_off) {
            void *p = early + early_used;
            early_used += (k * n + 15) & ~15UL;
            return p;
        }
        counting_off = 1; real_calloc = dlsym(RTLD_NEXT, "calloc"); counting_off = 0;
    }
    count();
    return real_calloc(k, n);
}
