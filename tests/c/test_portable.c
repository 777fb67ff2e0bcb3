/*
 * The C kernels (multifd_zero/csrc/) on their own, without Python: a test
 * that runs on any target the wheels are built for. .ci/run compiles it at
 * -Wall -Wextra -Werror for this machine, for Linux aarch64 with Debian's
 * cross compiler (run under qemu-user's aarch64 emulation), and against musl;
 * on aarch64 only the portable path exists, so that is the path it proves.
 *
 *   cc -O2 -Wall -Wextra -Werror -Wno-unused-function -pthread \
 *      -I multifd_zero tests/c/test_portable.c -o test_portable && ./test_portable
 *
 * Every kernel is compared with a plainly written answer: QEMU's
 * buffer_is_zero as a byte loop, QEMU's two-pointer pass of
 * multifd_send_zero_page_detect (migration/multifd-zero-page.c) calling that
 * loop page by page, and a bool per receivedmap bit. Inputs come from a fixed
 * pseudo-random sequence, so a failure names an input that repeats.
 */
#define _GNU_SOURCE /* fallocate() in file_guard.h, as Python.h defines it */

#include "csrc/dispatch.h"
#include "csrc/file_guard.h"
#include "csrc/partition.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned long checks;
static int failures;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        checks++;                                                                            \
        if (!(cond)) {                                                                       \
            if (failures++ < 20) {                                                           \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                         \
                fprintf(stderr, __VA_ARGS__);                                                \
                fputc('\n', stderr);                                                         \
            }                                                                                \
        }                                                                                    \
    } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1du;
}

static size_t below(size_t n)
{
    return (size_t)(rng() % n);
}

static void *aligned(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, size) != 0) {
        fprintf(stderr, "out of memory (%zu bytes)\n", size);
        exit(2);
    }
    memset(p, 0, size);
    return p;
}

/* ---------------------------------------------------------------- answers */

static int plain_is_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != 0) {
            return 0;
        }
    }
    return 1;
}

/* QEMU's pass: test page i, swap a zero page to the back. Returns normal_num. */
static size_t qemu_partition(const uint8_t *base, uint64_t *offs, size_t n, size_t ps)
{
    ptrdiff_t i = 0, j = (ptrdiff_t)n - 1;
    while (i <= j) {
        if (!plain_is_zero(base + offs[i], ps)) {
            i++;
            continue;
        }
        if (i != j) {
            uint64_t t = offs[i];
            offs[i] = offs[j];
            offs[j] = t;
        }
        j--;
    }
    return (size_t)i;
}

static int paths_supported[MFZ_NPATHS];

/* ------------------------------------------------------------ zero checks */

static void test_zero_checks(void)
{
    static const size_t aligns[] = {0, 1, 7, 8, 15, 16, 31, 33, 63};
    static const size_t big[] = {511, 512, 1023, 1024, 4095, 4096, 4097, 8191, 65536};
    const size_t room = 65536 + 128;
    uint8_t *buf = aligned(room);
    for (int path = 0; path < MFZ_NPATHS; path++) {
        if (!paths_supported[path]) {
            continue;
        }
        const mfz_path *pp = &mfz_paths[path];
        for (size_t a = 0; a < sizeof aligns / sizeof aligns[0]; a++) {
            uint8_t *p = buf + aligns[a];
            /* Every length to 300 and every byte of it. */
            for (size_t len = 0; len <= 300; len++) {
                CHECK(mfz_is_zero(pp, p, len) == 1, "%s: %zu zero bytes at +%zu", pp->name,
                      len, aligns[a]);
                for (size_t pos = 0; pos < len; pos++) {
                    p[pos] = (uint8_t)(1u << (pos % 8));
                    CHECK(mfz_is_zero(pp, p, len) == 0, "%s: len %zu, byte %zu set, at +%zu",
                          pp->name, len, pos, aligns[a]);
                    /* A non-zero byte just outside the buffer changes nothing. */
                    p[pos] = 0;
                }
                p[len] = 0xff;
                CHECK(mfz_is_zero(pp, p, len) == 1, "%s: len %zu, the byte after it set",
                      pp->name, len);
                p[len] = 0;
            }
            /* Longer buffers: the edges, every 64-byte boundary, random bytes. */
            for (size_t b = 0; b < sizeof big / sizeof big[0]; b++) {
                size_t len = big[b];
                CHECK(mfz_is_zero(pp, p, len) == 1, "%s: %zu zero bytes", pp->name, len);
                for (size_t pos = 0; pos < len; pos += (pos % 64 == 0) ? 1 : 63) {
                    p[pos] = 0x80;
                    CHECK(mfz_is_zero(pp, p, len) == 0, "%s: len %zu, byte %zu set", pp->name,
                          len, pos);
                    p[pos] = 0;
                }
                for (int r = 0; r < 64; r++) {
                    size_t pos = below(len);
                    p[pos] = (uint8_t)(1 + below(255));
                    CHECK(mfz_is_zero(pp, p, len) == plain_is_zero(p, len),
                          "%s: len %zu, byte %zu", pp->name, len, pos);
                    p[pos] = 0;
                }
                CHECK(mfz_is_zero(pp, p, len) == 1, "%s: buffer restored", pp->name);
            }
        }
    }
    free(buf);
}

/* ------------------------------------------- batch loop and QEMU's order */

enum { MAX_PAGES = 160 };

/* A page of one of the kinds the batch loop tells apart. */
static void fill_page(uint8_t *p, size_t ps, int kind)
{
    memset(p, 0, ps);
    switch (kind) {
    case 0: /* zero */
        break;
    case 1: /* random data */
        for (size_t i = 0; i < ps; i += 8) {
            uint64_t v = rng();
            memcpy(p + i, &v, 8);
        }
        break;
    case 2: /* one non-zero byte anywhere */
        p[below(ps)] = (uint8_t)(1 + below(255));
        break;
    case 3: /* only the last byte */
        p[ps - 1] = 1;
        break;
    default: /* one byte in the last 128-byte step, where a group stops */
        p[ps - 128 + below(128)] = 0x40;
        break;
    }
}

static void test_batches(void)
{
    static const size_t sizes[] = {1024, 4096, 8192, 65536};
    uint64_t offs[MAX_PAGES], work[MAX_PAGES], want[MAX_PAGES];
    uint8_t out[MAX_PAGES], zero[MAX_PAGES];
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t ps = sizes[s];
        size_t pages = ps >= 65536 ? 40 : MAX_PAGES;
        uint8_t *host = aligned(pages * ps);
        int rounds = ps >= 65536 ? 12 : 60;
        for (int round = 0; round < rounds; round++) {
            /* Zero-heavy rounds make runs of adjacent zero pages. */
            unsigned zero_share = (unsigned)below(5); /* 0: none ... 4: all */
            for (size_t k = 0; k < pages; k++) {
                int kind = below(4) < zero_share ? 0 : 1 + (int)below(4);
                fill_page(host + k * ps, ps, kind);
            }
            size_t n = below(pages + 1);
            int layout = (int)below(3);
            for (size_t k = 0; k < n; k++) {
                if (layout == 0) { /* in address order: runs and groups of neighbours */
                    offs[k] = (uint64_t)(k * ps);
                } else if (layout == 1) { /* any page, repeats allowed */
                    offs[k] = (uint64_t)(below(pages) * ps);
                } else { /* neighbours in short stretches */
                    offs[k] = k && below(4) ? offs[k - 1] + ps : (uint64_t)(below(pages) * ps);
                    if (offs[k] >= pages * ps) {
                        offs[k] = 0;
                    }
                }
            }
            for (int path = 0; path < MFZ_NPATHS; path++) {
                if (!paths_supported[path]) {
                    continue;
                }
                const mfz_path *pp = &mfz_paths[path];
                pp->pages(host, offs, n, ps, out);
                for (size_t k = 0; k < n; k++) {
                    CHECK(out[k] == plain_is_zero(host + offs[k], ps),
                          "%s: ps %zu round %d page %zu (offset %llu): %d", pp->name, ps, round,
                          k, (unsigned long long)offs[k], out[k]);
                }
                /* Without offsets: page i at i * ps. */
                pp->pages(host, NULL, pages, ps, out);
                for (size_t k = 0; k < pages; k++) {
                    CHECK(out[k] == plain_is_zero(host + k * ps, ps),
                          "%s: ps %zu round %d, page %zu of the block", pp->name, ps, round, k);
                }
                /* QEMU's order: our scan then the replay, against QEMU's own pass. */
                memcpy(work, offs, n * sizeof *offs);
                memcpy(want, offs, n * sizeof *offs);
                pp->pages(host, work, n, ps, zero);
                size_t normal = mfz_replay(work, zero, n);
                size_t qemu_normal = qemu_partition(host, want, n, ps);
                CHECK(normal == qemu_normal, "%s: ps %zu round %d: normal_num %zu, QEMU %zu",
                      pp->name, ps, round, normal, qemu_normal);
                CHECK(memcmp(work, want, n * sizeof *offs) == 0,
                      "%s: ps %zu round %d: the order differs from QEMU's", pp->name, ps, round);
                for (size_t k = 0; k < n; k++) {
                    CHECK(zero[k] == (k >= normal), "%s: flag %zu travels with its offset",
                          pp->name, k);
                }
            }
        }
        free(host);
    }
    /* The edges of the replay: nothing, one page, all zero, all normal. */
    uint64_t one[1] = {4096};
    uint8_t z1[1] = {1};
    CHECK(mfz_replay(one, z1, 0) == 0, "an empty batch has no normal page");
    CHECK(mfz_replay(one, z1, 1) == 0 && one[0] == 4096, "one zero page stays");
    uint64_t rot[4] = {10, 20, 30, 40};
    uint8_t zall[4] = {1, 1, 1, 1};
    CHECK(mfz_replay(rot, zall, 4) == 0 && rot[0] == 20 && rot[1] == 30 && rot[2] == 40
              && rot[3] == 10,
          "all zero: QEMU's swaps rotate the batch left by one");
    uint8_t znone[4] = {0, 0, 0, 0};
    CHECK(mfz_replay(rot, znone, 4) == 4 && rot[0] == 20, "all normal: nothing moves");
}

/* ------------------------------------------------------------------ bits */

enum { WORDS = 4, THREADS = 4, ROUNDS = 100000 };

static uint64_t shared_map[WORDS];
static int started; /* the threads wait for all of them, then race */

struct worker {
    int index;
    unsigned long wrong;
};

/*
 * Thread t owns bit t of every word, so all threads update the same few words
 * at once. Each sets then clears its bits, round after round, and checks the
 * old value every call returns: an update lost to another thread's
 * read-modify-write shows as a wrong old value. Correct atomics never fail
 * here; a plain read-modify-write
 * (tried on purpose) failed every run under aarch64 emulation.
 */
static void *bit_worker(void *arg)
{
    struct worker *w = arg;
    __atomic_fetch_add(&started, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < THREADS) {
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (uint64_t word = 0; word < WORDS; word++) {
            w->wrong += (unsigned long)(mfz_bit_set(shared_map, word * 64 + (uint64_t)w->index) != 0);
        }
        for (uint64_t word = 0; word < WORDS; word++) {
            w->wrong += (unsigned long)(mfz_bit_clear(shared_map, word * 64 + (uint64_t)w->index) != 1);
        }
    }
    return NULL;
}

static void run_workers(void)
{
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int t = 0; t < THREADS; t++) {
        workers[t] = (struct worker){t, 0};
        if (pthread_create(&threads[t], NULL, bit_worker, &workers[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(2);
        }
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        CHECK(workers[t].wrong == 0, "thread %d: %lu calls saw another thread's update lost",
              t, workers[t].wrong);
    }
}

static void test_bits(void)
{
    enum { N = 1000 };
    uint64_t map[(N + 63) / 64] = {0};
    uint8_t plain[N] = {0};
    for (int op = 0; op < 20000; op++) {
        uint64_t bit = below(N);
        int was = plain[bit];
        switch (below(3)) {
        case 0:
            CHECK(mfz_bit_set(map, bit) == was, "set %llu: the old bit",
                  (unsigned long long)bit);
            plain[bit] = 1;
            break;
        case 1:
            CHECK(mfz_bit_clear(map, bit) == was, "clear %llu: the old bit",
                  (unsigned long long)bit);
            plain[bit] = 0;
            break;
        default:
            CHECK(mfz_bit_test(map, bit) == was, "test %llu", (unsigned long long)bit);
            break;
        }
    }
    for (uint64_t bit = 0; bit < N; bit++) {
        CHECK(mfz_bit_test(map, bit) == plain[bit], "bit %llu at the end",
              (unsigned long long)bit);
    }
    for (int r = 0; r < 1000; r++) {
        uint64_t v = r < 64 ? (uint64_t)1 << r : rng();
        uint64_t count = 0;
        for (int b = 0; b < 64; b++) {
            count += (v >> b) & 1;
        }
        CHECK(mfz_popcount64(v) == count, "popcount of %016llx", (unsigned long long)v);
    }
    CHECK(mfz_popcount64(~(uint64_t)0) == 64, "popcount of all ones");

    /* Real threads on neighbouring bits of the same words: no update lost. */
    run_workers();
    uint64_t left = 0;
    for (size_t w = 0; w < WORDS; w++) {
        left |= shared_map[w];
    }
    CHECK(left == 0, "bits %016llx left set after the threads", (unsigned long long)left);
}

/* ------------------------------------------- offsets, paths, zeroing, files */

static void test_offsets_and_paths(void)
{
    uint64_t offs[5] = {0, 4096, 8192, 4096, 12288};
    CHECK(mfz_offsets_ok(offs, 5, 4095, 12288) == 1, "good offsets");
    CHECK(mfz_offsets_ok(offs, 5, 4095, 8192) == 0, "an offset past the limit");
    offs[2] = 8193;
    CHECK(mfz_offsets_ok(offs, 5, 4095, 12288) == 0, "a misaligned offset");
    CHECK(mfz_offsets_ok(offs, 0, 4095, 0) == 1, "no offsets");

    int best = mfz_best_path();
    CHECK(best >= 0 && best < MFZ_NPATHS && paths_supported[best], "best path %d runs here",
          best);
#if !MFZ_X86_DISPATCH
    CHECK(best == MFZ_PORTABLE, "off x86-64 the portable path is the only one, not %d", best);
    CHECK(mfz_select(MFZ_AVX2) == -1 && mfz_select(MFZ_SSE2) == -1,
          "x86 paths cannot be chosen here");
#endif
    CHECK(mfz_select(-1) == -1 && mfz_select(MFZ_NPATHS) == -1, "no such path");
    for (int path = 0; path < MFZ_NPATHS; path++) {
        if (paths_supported[path]) {
            CHECK(mfz_select(path) == 0 && mfz_path_index(mfz_path_now()) == path,
                  "select %d", path);
        }
    }
    CHECK(mfz_select(MFZ_PORTABLE) == 0, "back to portable");
}

static void test_zeroing(void)
{
    const size_t room = 3 * 4096;
    uint8_t *buf = aligned(room);
    for (int path = 0; path < MFZ_NPATHS; path++) {
        if (!paths_supported[path]) {
            continue;
        }
        for (int r = 0; r < 200; r++) {
            size_t len = r < 3 ? (size_t)(1024 << r) : 1 + below(2 * 4096);
            size_t at = r < 3 ? 0 : below(room - len);
            memset(buf, 0xa5, room);
            mfz_paths[path].zero_page(buf + at, len);
            mfz_store_fence();
            CHECK(plain_is_zero(buf + at, len), "%s: %zu bytes at %zu zeroed",
                  mfz_paths[path].name, len, at);
            CHECK((at == 0 || buf[at - 1] == 0xa5) && (at + len == room || buf[at + len] == 0xa5),
                  "%s: the bytes around %zu+%zu untouched", mfz_paths[path].name, at, len);
        }
    }
    free(buf);
}

/* A mapped file that shrinks: the guarded scan returns -1 instead of dying. */
static void test_file_guard(void)
{
    const size_t ps = 4096, pages = 4;
    char name[] = "/tmp/mfz-test-portable-XXXXXX";
    int fd = mkstemp(name);
    if (fd < 0) {
        perror("mkstemp");
        exit(2);
    }
    unlink(name);
    uint8_t page[4096];
    for (size_t k = 0; k < pages; k++) {
        memset(page, 0, ps);
        if (k % 2) {
            page[k * 100] = 7;
        }
        CHECK(pwrite(fd, page, ps, (off_t)(k * ps)) == (ssize_t)ps, "write page %zu", k);
    }
    uint8_t *map = mmap(NULL, pages * ps, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(map != MAP_FAILED, "mmap");
    uint8_t out[4] = {9, 9, 9, 9};
    CHECK(mfz_guarded_pages(&mfz_paths[MFZ_PORTABLE], map, pages * ps, ps, out) == 0,
          "the whole file reads");
    CHECK(out[0] == 1 && out[1] == 0 && out[2] == 1 && out[3] == 0, "its flags %d%d%d%d",
          out[0], out[1], out[2], out[3]);
    CHECK(ftruncate(fd, (off_t)ps) == 0, "ftruncate");
    CHECK(mfz_guarded_pages(&mfz_paths[MFZ_PORTABLE], map, pages * ps, ps, out) == -1,
          "a shrunk file is reported, not a SIGBUS");
    /* The guard is gone again: the previous handler (the default) is back. */
    struct sigaction now;
    sigaction(SIGBUS, NULL, &now);
    CHECK(now.sa_handler == SIG_DFL, "the default SIGBUS action is restored");
    munmap(map, pages * ps);
    close(fd);
}

int main(void)
{
    for (int path = 0; path < MFZ_NPATHS; path++) {
        paths_supported[path] = mfz_path_supported(path);
    }
    printf("paths here:");
    for (int path = 0; path < MFZ_NPATHS; path++) {
        if (paths_supported[path]) {
            printf(" %s", mfz_paths[path].name);
        }
    }
    printf(" (best: %s)\n", mfz_paths[mfz_best_path()].name);
    test_zero_checks();
    test_batches();
    test_bits();
    test_offsets_and_paths();
    test_zeroing();
    test_file_guard();
    if (failures) {
        printf("%d of %lu checks FAILED\n", failures, checks);
        return 1;
    }
    printf("all %lu checks passed\n", checks);
    return 0;
}
