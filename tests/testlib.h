/* Helpers shared by the test programs. Each test is one program: exit 0 on
 * pass, 1 on fail, 77 on skip (with the reason on stdout). */
#ifndef RPAL_TESTLIB_H
#define RPAL_TESTLIB_H

#include "rpal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define T_SKIP 77

static int t_failures;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)

/* CHECK_ERR(call, -EXXX): the call returns exactly that negative errno. */
#define CHECK_ERR(call, want)                                                  \
    do {                                                                       \
        long got_ = (long)(call);                                              \
        if (got_ != (long)(want)) {                                            \
            fprintf(stderr, "%s:%d: %s returned %ld (%s), want %ld (%s)\n",     \
                    __FILE__, __LINE__, #call, got_,                           \
                    rpal_strerror((int)got_), (long)(want),                    \
                    rpal_strerror((int)(want)));                               \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)

#define REQUIRE(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: required: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static inline void t_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    exit(T_SKIP);
}

/* A private namespace directory for this test, removed at exit. The runner
 * gives each test its own RPAL_DIR; a test run by hand gets one here. */
static char t_dir[256];
static pid_t t_dir_owner;

static inline void t_cleanup_dir(void)
{
    if (t_dir[0] && getpid() == t_dir_owner) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", t_dir);
    }
}

static inline void t_init(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *d = getenv("RPAL_DIR");
    if (d && *d)
        return;
    snprintf(t_dir, sizeof t_dir, "/dev/shm/rpal-test-XXXXXX");
    REQUIRE(mkdtemp(t_dir) != NULL);
    setenv("RPAL_DIR", t_dir, 1);
    t_dir_owner = getpid();
    atexit(t_cleanup_dir);
}

static inline int t_done(void)
{
    if (t_failures)
        fprintf(stderr, "%d check(s) failed\n", t_failures);
    return t_failures ? 1 : 0;
}

/* Wait for CHILD; returns its exit code, or 128 + signal number. */
static inline int t_wait(pid_t child)
{
    int st;
    while (waitpid(child, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

#endif
