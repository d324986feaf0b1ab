/* A change returns 0 only if every live sharer has it; when the changer
 * cannot tell who the sharers are, it says so (issue 15).
 *
 * Sharer S is stopped, so it cannot apply anything. Then:
 * 1. a changer whose lock-file queries (F_OFD_GETLK) fail (a seccomp
 *    filter makes them return ENOLCK) must not report success: before the
 *    fix the failed scan counted as "no sharers", and the change returned 0
 *    at once without waiting for S;
 * 2. a reader of the lock file holds 4,200 read locks where sharers' records
 *    go (for pids above any real one): the changer must wait for all of
 *    them and S, and report them all detached, where the scan used to stop
 *    after 4,096 sharers (and so missed S).
 */
#include "testlib.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define NAME "scan"
#define SIZE (1u << 20)
#define PAGE 4096u
#define NJUNK 4200 /* more than the 4,096 the scan used to stop at */
#define JUNK_PID (4194304 - 6000) /* above any pid (pid_max is at most 2^22) */

static rpal_region *r;

/* Make fcntl(F_OFD_GETLK) fail with ENOLCK in every thread of this process. */
static int deny_getlk(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fcntl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, F_OFD_GETLK, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOLCK),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -errno;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) < 0)
        return -errno;
    return 0;
}

/* 1: in a child, a change whose scan fails. Exit 0: it did not claim
 * success (an error and nothing published, or S reported), 1: it did, 77:
 * no seccomp here. */
static int scan_fails(void)
{
    int err = deny_getlk();
    if (err < 0) {
        printf("seccomp filter: %s\n", strerror(-err));
        return T_SKIP;
    }
    uint32_t g = t_region_gen(NAME);
    struct rpal_region_change c = {.timeout_ms = 300};
    err = rpal_region_protect(r, 0, PAGE, PROT_READ, &c);
    if (err == 0 && c.detached == 0) {
        fprintf(stderr, "a change whose scan failed returned 0 (applied %u, detached %u)\n",
                c.applied, c.detached);
        return 1;
    }
    if (err < 0 && t_region_gen(NAME) != g) {
        fprintf(stderr, "a change failed (%s) but was published\n", rpal_strerror(err));
        return 1;
    }
    return 0;
}

/* 2: junk read locks where sharers' records go, at generation G: in the
 * format before issue 19 (2^32 + pid * 2^34 + gen * 4) and in the current
 * one (2^32 + gen * 2^24 + pid * 4). */
static int plant_junk(uint32_t g)
{
    char lk[600];
    t_lock_path(NAME, lk, sizeof lk);
    int fd = open(lk, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    for (uint64_t p = JUNK_PID; p < JUNK_PID + NJUNK; p++) {
        uint64_t at[2] = {(1ull << 32) + (p << 34) + ((uint64_t)g << 2),
                          (1ull << 32) + ((uint64_t)g << 24) + (p << 2)};
        for (int k = 0; k < 2; k++) {
            struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET,
                               .l_start = (off_t)at[k], .l_len = 1};
            REQUIRE(fcntl(fd, F_OFD_SETLK, &fl) == 0);
        }
    }
    return fd;
}

int main(void)
{
    t_init();
    alarm(60);
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    CHECK_ERR(rpal_region_map(r, 0, PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);

    /* 1. */
    pid_t s = t_fork_sharer();
    t_stop(s);
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0)
        _exit(scan_fails());
    int rc = t_wait(c);
    if (rc == T_SKIP)
        printf("part 1 skipped\n");
    else
        CHECK(rc == 0);
    kill(s, SIGKILL);
    CHECK(t_wait(s) == 128 + SIGKILL);

    /* 2. The junk first, then S: the locks of one holder sit together in
     * the kernel's list, in the order holders came. */
    int junk = plant_junk(t_region_gen(NAME));
    s = t_fork_sharer();
    t_stop(s);
    struct rpal_region_change chg = {.timeout_ms = 300};
    int err = rpal_region_protect(r, 0, PAGE, PROT_READ | PROT_WRITE, &chg);
    CHECK(err >= 0);
    /* Every holder of a record that did not move counts: the junk's pids
     * and S (and the junk in the old format reads as one more). */
    if (chg.detached < NJUNK + 1 || chg.applied != 0) {
        fprintf(stderr, "with %d junk records and a stopped sharer, the change reported %u "
                "detached and %u applied (want at least %d and 0)\n", NJUNK, chg.detached, chg.applied,
                NJUNK + 1);
        t_failures++;
    }
    close(junk);
    kill(s, SIGKILL);
    CHECK(t_wait(s) == 128 + SIGKILL);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    return t_done();
}
