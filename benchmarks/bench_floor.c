/*
 * The kernels' own cost, from C, without Python: what a batch costs at best.
 *
 *     cc -O3 -I multifd_zero benchmarks/bench_floor.c -o /tmp/bench_floor
 *     /tmp/bench_floor            # one 512 KiB batch in L2, then 1 GiB
 *     /tmp/bench_floor --quick    # L2 rows only
 *
 * For each SIMD path this machine has, it times the batch loop that
 * partition_zero_pages, scan_zero_pages and zero_page_mask run (a path's pages),
 * next to two whole-buffer loops with no per-page work: the benchmark's read
 * limit (mfz_read_all) and one is_zero over the whole buffer, and, for a batch
 * of normal pages, the heads floor (mfz_touch_heads: one load per page). The difference
 * between `multifd-zero bench` and these figures is the Python call, the
 * argument checks and the replay of QEMU's order. Best of repeated runs.
 */
#include "csrc/dispatch.h"
#include "csrc/read_limit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define PAGE 4096
#define BATCH 128

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* `pages` pages, a share of them zero, the rest random with a non-zero first byte. */
static uint8_t *make_pages(size_t pages, double zero_share, uint64_t **offsets)
{
    /* 2 MiB aligned and, on Linux, in transparent huge pages: as guest RAM is. */
    size_t huge = (size_t)2 << 20;
    size_t bytes = (pages * PAGE + huge - 1) / huge * huge;
    uint8_t *ram = aligned_alloc(huge, bytes);
    uint64_t *offs = malloc(pages * sizeof *offs);
    if (ram == NULL || offs == NULL) {
        perror("alloc");
        exit(1);
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(ram, bytes, MADV_HUGEPAGE);
#endif
    memset(ram, 0, pages * PAGE);
    for (size_t i = 0; i < pages; i++) {
        offs[i] = (uint64_t)i * PAGE;
        if ((double)(rng() >> 11) / 9007199254740992.0 >= zero_share) {
            for (size_t b = 0; b < PAGE; b += 8) {
                uint64_t w = rng();
                memcpy(ram + i * PAGE + b, &w, 8);
            }
            ram[i * PAGE] |= 1;
        }
    }
    *offsets = offs;
    return ram;
}

typedef struct {
    const uint8_t *ram;
    const uint64_t *offs;
    size_t pages;
    uint8_t *out;
} job;

static volatile uint64_t sink;

static void run_pages(const job *j) { mfz_path_now()->pages(j->ram, j->offs, j->pages, PAGE, j->out); }
static void run_read_all(const job *j) { sink = mfz_read_all(j->ram, j->pages * PAGE); }
static void run_heads(const job *j) { mfz_touch_heads(j->ram, j->offs, j->pages, j->out); }
static void run_is_zero(const job *j)
{
    sink = (uint64_t)mfz_is_zero(mfz_path_now(), j->ram, j->pages * PAGE);
}

/* Best ns per page over `runs` runs of `loops` calls. */
static double best_ns(void (*fn)(const job *), const job *j, int loops, int runs)
{
    double best = 1e30;
    fn(j);
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        for (int k = 0; k < loops; k++) {
            fn(j);
        }
        double ns = (now() - t0) / loops / (double)j->pages * 1e9;
        best = ns < best ? ns : best;
    }
    return best;
}

static void rows(const char *title, size_t pages, double zero_share, int loops, int runs)
{
    uint64_t *offs;
    uint8_t *ram = make_pages(pages, zero_share, &offs);
    uint8_t *out = malloc(pages);
    job j = {ram, offs, pages, out};
    printf("%s\n", title);
    for (int path = MFZ_NPATHS - 1; path >= 0; path--) {
        if (mfz_select(path) != 0) {
            continue;
        }
        double ns = best_ns(run_pages, &j, loops, runs);
        printf("  mfz_pages %-9s %8.1f ns/page %8.2f GB/s\n", mfz_paths[path].name, ns, PAGE / ns);
    }
    mfz_select(mfz_best_path());
    double ns = best_ns(run_read_all, &j, loops, runs);
    printf("  read limit          %8.1f ns/page %8.2f GB/s\n", ns, PAGE / ns);
    if (zero_share == 0.0) {
        ns = best_ns(run_heads, &j, loops, runs);
        printf("  heads floor         %8.1f ns/page %8.2f GB/s\n", ns, PAGE / ns);
    }
    if (zero_share == 1.0) {
        ns = best_ns(run_is_zero, &j, loops, runs);
        printf("  is_zero, one call   %8.1f ns/page %8.2f GB/s\n", ns, PAGE / ns);
    }
    printf("\n");
    free(out);
    free(offs);
    free(ram);
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    mfz_select(mfz_best_path());
    printf("best SIMD path: %s\n\n", mfz_paths[mfz_best_path()].name);
    rows("one 512 KiB batch in L2, 100% zero pages", BATCH, 1.0, 2000, 30);
    rows("one 512 KiB batch in L2, 50% zero, other pages random", BATCH, 0.5, 2000, 30);
    rows("one 512 KiB batch in L2, all pages random", BATCH, 0.0, 20000, 30);
    if (!quick) {
        rows("1 GiB, out of cache, 100% zero pages", 262144, 1.0, 1, 5);
        rows("1 GiB, out of cache, 50% zero, other pages random", 262144, 0.5, 1, 5);
    }
    return 0;
}
