/*
 * Reading a mapped file that may shrink, and punching holes in a file.
 *
 * A page of a MAP_SHARED/MAP_PRIVATE file mapping that lies past the file's
 * end (because the file was truncated after mmap) raises SIGBUS when it is
 * touched. mfz_guarded_pages() runs the zero-page check of a mapped window
 * with a SIGBUS handler installed: a fault in that thread, while the check
 * runs, jumps back out and the call returns -1 instead of killing the
 * process. A SIGBUS that is not ours (another thread, or outside a guarded
 * check) gets the previous handler back and faults again into it, so
 * faulthandler and the default action behave as before.
 *
 * The handler is installed on the first guarded call that starts and the
 * previous one restored when the last one ends (a count under a mutex), so
 * that a handler installed later by someone else, such as faulthandler, is
 * not lost for good. Cost: two sigaction calls and one sigsetjmp per call,
 * measured in benchmarks/bench_scan.py against the unguarded check.
 *
 * mfz_punch_hole() is fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as
 * zeros afterwards and its blocks are freed; the file's size stays.
 *
 * mfz_write_data_runs() and mfz_punch_zero_runs() walk a window's zero-page
 * flags and make one pwrite per run of data pages (a sparse copy) or one
 * punch per run of zero pages (in place), without the GIL and without a
 * Python call per run: a file half zero at random places has a run every
 * two pages, so that is 65536 runs per GiB.
 */
#ifndef MFZ_FILE_GUARD_H
#define MFZ_FILE_GUARD_H

/*
 * fallocate() is declared only under _GNU_SOURCE, which must be defined before
 * the first system header of the translation unit: Python.h does so (its
 * pyconfig.h), and a C program including this header must do the same.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#error "define _GNU_SOURCE before any system header (Python.h does) for fallocate()"
#endif

#include "dispatch.h"

#include <errno.h>

#if defined(__unix__) || defined(__APPLE__)
#define MFZ_HAVE_SIGBUS_GUARD 1
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#else
#define MFZ_HAVE_SIGBUS_GUARD 0
#endif

#if defined(__linux__)
/* With _GNU_SOURCE, glibc's and musl's fcntl.h both give the FALLOC_FL_ flags. */
#include <fcntl.h>
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define MFZ_HAVE_PWRITE 1
#else
#define MFZ_HAVE_PWRITE 0
#endif

#if MFZ_HAVE_SIGBUS_GUARD

static __thread sigjmp_buf *mfz_guard_jump;
static pthread_mutex_t mfz_guard_lock = PTHREAD_MUTEX_INITIALIZER;
static int mfz_guard_users;
static struct sigaction mfz_guard_previous;

static void mfz_guard_handler(int sig, siginfo_t *info, void *context)
{
    sigjmp_buf *jump = mfz_guard_jump;
    (void)info;
    (void)context;
    if (jump != NULL) {
        mfz_guard_jump = NULL;
        siglongjmp(*jump, 1);
    }
    /* Not a guarded read: give the fault back to whoever handled it before. */
    sigaction(sig, &mfz_guard_previous, NULL);
}

static void mfz_guard_enter(void)
{
    struct sigaction ours;
    pthread_mutex_lock(&mfz_guard_lock);
    if (mfz_guard_users++ == 0) {
        memset(&ours, 0, sizeof ours);
        ours.sa_sigaction = mfz_guard_handler;
        ours.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&ours.sa_mask);
        sigaction(SIGBUS, &ours, &mfz_guard_previous);
    }
    pthread_mutex_unlock(&mfz_guard_lock);
}

static void mfz_guard_leave(void)
{
    pthread_mutex_lock(&mfz_guard_lock);
    if (--mfz_guard_users == 0) {
        sigaction(SIGBUS, &mfz_guard_previous, NULL);
    }
    pthread_mutex_unlock(&mfz_guard_lock);
}

#endif

/*
 * One flag per page of buf[0, length) into out (1: all zero), the last page
 * possibly partial. Returns 0, or -1 if reading the buffer raised SIGBUS (the
 * mapped file shrank); out is then incomplete.
 */
static int mfz_guarded_pages(const mfz_path *path, const uint8_t *buf, size_t length,
                             size_t ps, uint8_t *out)
{
    size_t full = length / ps;
    /* volatile: its value must survive the siglongjmp back into this frame. */
    volatile int failed = 0;
#if MFZ_HAVE_SIGBUS_GUARD
    sigjmp_buf jump;
    mfz_guard_enter();
    if (sigsetjmp(jump, 0) == 0) {
        mfz_guard_jump = &jump;
#endif
        if (full) {
            path->pages(buf, NULL, full, ps, out);
        }
        if (length % ps) {
            out[full] = (uint8_t)(mfz_is_zero(path, buf + full * ps, length % ps) != 0);
        }
#if MFZ_HAVE_SIGBUS_GUARD
        mfz_guard_jump = NULL;
    } else {
        failed = 1;
    }
    mfz_guard_leave();
#endif
    return failed ? -1 : 0;
}

/* fallocate(PUNCH_HOLE | KEEP_SIZE); returns 0 or an errno value. */
static int mfz_punch_hole(int fd, int64_t offset, int64_t length)
{
#if defined(__linux__) && defined(FALLOC_FL_PUNCH_HOLE)
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length)
        != 0) {
        return errno;
    }
    return 0;
#else
    (void)fd;
    (void)offset;
    (void)length;
    return ENOSYS;
#endif
}

/* The run of pages [*first, *end) with flag == value, from *first on; 0 when none is left. */
static int mfz_next_run(const uint8_t *flags, size_t n, uint8_t value, size_t *first, size_t *end)
{
    size_t i = *first;
    while (i < n && (flags[i] != 0) != (value != 0)) {
        i++;
    }
    if (i == n) {
        return 0;
    }
    size_t j = i;
    while (j < n && (flags[j] != 0) == (value != 0)) {
        j++;
    }
    *first = i;
    *end = j;
    return 1;
}

/*
 * pwrite every run of data pages (flag 0) of buf[0, length) to fd at
 * file_offset plus its offset in buf. Returns 0 or an errno value (EFAULT
 * when buf is a mapping whose file shrank); *written counts the bytes.
 */
static int mfz_write_data_runs(int fd, const uint8_t *buf, size_t length, size_t ps,
                               const uint8_t *zero, int64_t file_offset, uint64_t *written)
{
#if MFZ_HAVE_PWRITE
    size_t n = (length + ps - 1) / ps, first = 0, end = 0;
    while (mfz_next_run(zero, n, 0, &first, &end)) {
        size_t a = first * ps, b = end * ps < length ? end * ps : length;
        while (a < b) {
            ssize_t w = pwrite(fd, buf + a, b - a, (off_t)(file_offset + (int64_t)a));
            if (w < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return errno;
            }
            a += (size_t)w;
            *written += (uint64_t)w;
        }
        first = end;
    }
    return 0;
#else
    (void)fd; (void)buf; (void)length; (void)ps; (void)zero; (void)file_offset; (void)written;
    return ENOSYS;
#endif
}

/*
 * Punch a hole for every run of zero pages (flag 1) of a window of length
 * bytes at file_offset. Returns 0 or an errno value; *punched counts holes.
 */
static int mfz_punch_zero_runs(int fd, size_t length, size_t ps, const uint8_t *zero,
                               int64_t file_offset, uint64_t *punched)
{
    size_t n = (length + ps - 1) / ps, first = 0, end = 0;
    while (mfz_next_run(zero, n, 1, &first, &end)) {
        size_t a = first * ps, b = end * ps < length ? end * ps : length;
        int err = mfz_punch_hole(fd, file_offset + (int64_t)a, (int64_t)(b - a));
        if (err) {
            return err;
        }
        *punched += 1;
        first = end;
    }
    return 0;
}

#endif /* MFZ_FILE_GUARD_H */
