/* Fork inheritance. After fork, the child is attached as the parent was: it
 * sees every region the parent had attached, at the same address, with the
 * same access (read-write or read-only), without calling attach. The two
 * share the memory itself, so a write by either is seen by the other; a
 * detach in one process unmaps the region in that process only.
 */
#include "testlib.h"

#include <sys/mman.h>

#define SIZE (1u << 20)



static int is_mapped(const void *p)
{
    /* msync fails with ENOMEM on an address that is not mapped. */
    return msync((void *)((uintptr_t)p & ~4095ul), 4096, MS_ASYNC) == 0;
}

static int pid_listed(const struct rpal_region_info *info, pid_t pid)
{
    int n = info->nattached < 16 ? info->nattached : 16;
    for (int i = 0; i < n; i++)
        if (info->attached[i] == pid)
            return 1;
    return 0;
}

static uint32_t pattern(size_t i) { return (uint32_t)(i * 2654435761u) ^ 0x5eed; }

/* ---- a read-write attachment --------------------------------------------- */

static int rw_child(rpal_region *r, uint32_t *parent_addr, int to_parent, int from_parent)
{
    /* No attach: the handle and the mapping came with fork. */
    uint32_t *w = rpal_region_addr(r);
    if (w != parent_addr) {
        fprintf(stderr, "child: region at %p, parent had it at %p\n", (void *)w,
                (void *)parent_addr);
        return 1;
    }
    for (size_t i = 0; i < SIZE / 4; i++)
        if (w[i] != pattern(i)) {
            fprintf(stderr, "child: word %zu differs from the parent's\n", i);
            return 1;
        }
    w[7] = 0xc0ffee;
    w[SIZE / 4 - 1] = 0xfeed;
    t_put(to_parent, 'w'); /* wrote */
    if (t_get(from_parent) != 'd')
        return 1;
    /* Parent saw it; now it writes, we read. */
    if (w[8] != 0xabcdef) {
        fprintf(stderr, "child: the parent's write after fork is not visible\n");
        return 1;
    }
    int err = rpal_region_detach(r);
    if (err) {
        fprintf(stderr, "child: detach: %d\n", err);
        return 1;
    }
    if (is_mapped(w)) {
        fprintf(stderr, "child: still mapped after detach\n");
        return 1;
    }
    t_put(to_parent, 'x'); /* detached */
    t_get(from_parent);    /* wait until the parent has looked, then exit */
    return 0;
}

static void rw_case(void)
{
    rpal_region *r;
    REQUIRE(rpal_region_create("fork/rw", SIZE, 0600, 0, &r) == 0);
    uint32_t *w = rpal_region_addr(r);
    for (size_t i = 0; i < SIZE / 4; i++)
        w[i] = pattern(i);

    int up[2], down[2];
    REQUIRE(pipe(up) == 0 && pipe(down) == 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(up[0]);
        close(down[1]);
        _exit(rw_child(r, w, up[1], down[0]));
    }
    close(up[1]);
    close(down[0]);

    CHECK(t_get(up[0]) == 'w');
    CHECK(w[7] == 0xc0ffee && w[SIZE / 4 - 1] == 0xfeed);
    CHECK(w[6] == pattern(6));

    /* Both map it, and the namespace knows. */
    struct rpal_region_info info;
    CHECK_ERR(rpal_region_stat("fork/rw", &info), 0);
    CHECK(info.nattached >= 2);
    CHECK(pid_listed(&info, getpid()));
    CHECK(pid_listed(&info, child));

    w[8] = 0xabcdef;
    t_put(down[1], 'd');

    /* The child detached: only it lost the mapping. */
    CHECK(t_get(up[0]) == 'x');
    CHECK(is_mapped(w));
    size_t bad = 0;
    for (size_t i = 9; i < SIZE / 4 - 1; i++)
        bad += w[i] != pattern(i);
    CHECK(bad == 0);
    w[9] = 1; /* still writable here */
    CHECK_ERR(rpal_region_stat("fork/rw", &info), 0);
    CHECK(pid_listed(&info, getpid()));
    CHECK(!pid_listed(&info, child));
    CHECK(info.nattached == 1);

    t_put(down[1], 'q');
    CHECK(t_wait(child) == 0);
    CHECK_ERR(rpal_region_stat("fork/rw", &info), 0);
    CHECK(info.nattached == 1);
    CHECK(pid_listed(&info, getpid()));
    CHECK(!pid_listed(&info, child));

    close(up[0]);
    close(down[1]);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink("fork/rw") == 0);
}

/* A child that exits without detaching is no longer listed once it is
 * gone. */
static void exit_case(void)
{
    rpal_region *r;
    REQUIRE(rpal_region_create("fork/exit", 65536, 0600, 0, &r) == 0);
    int up[2], down[2];
    REQUIRE(pipe(up) == 0 && pipe(down) == 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(up[0]);
        close(down[1]);
        t_put(up[1], 'h');
        t_get(down[0]);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    CHECK(t_get(up[0]) == 'h');
    struct rpal_region_info info;
    CHECK_ERR(rpal_region_stat("fork/exit", &info), 0);
    CHECK(info.nattached == 2);
    CHECK(pid_listed(&info, getpid()) && pid_listed(&info, child));
    close(down[1]);
    CHECK(t_wait(child) == 0);
    close(up[0]);
    CHECK_ERR(rpal_region_stat("fork/exit", &info), 0);
    CHECK(info.nattached == 1);
    CHECK(pid_listed(&info, getpid()) && !pid_listed(&info, child));
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink("fork/exit") == 0);
}

/* ---- a read-only attachment ---------------------------------------------- */

/* In a child of a process holding R read-only: read, report what was read,
 * then do HOW (0: write, 1: mprotect to writable, then write). */
static int ro_child(rpal_region *r, int to_parent, int how)
{
    volatile unsigned char *p = rpal_region_addr(r);
    /* AddressSanitizer would catch the fault and exit 1: take it plain. */
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    t_put(to_parent, p[123] == 0x77 && p[65535] == 0x77 ? 'r' : 'b');
    if (how == 1) {
        if (mprotect((void *)p, 65536, PROT_READ | PROT_WRITE) == 0) {
            t_put(to_parent, 'm'); /* the kernel let a read-only view turn writable */
        } else {
            t_put(to_parent, errno == EACCES ? 'e' : '?');
        }
    }
    p[123] = 0x88; /* must fault */
    t_put(to_parent, 'W');
    return 0;
}

static void ro_case(void)
{
    rpal_region *w, *r;
    REQUIRE(rpal_region_create("fork/ro", 65536, 0600, 0, &w) == 0);
    memset(rpal_region_addr(w), 0x77, 65536);
    CHECK(rpal_region_detach(w) == 0);
    REQUIRE(rpal_region_attach("fork/ro", RPAL_REGION_RDONLY, &r) == 0);

    for (int how = 0; how < 2; how++) {
        int up[2];
        REQUIRE(pipe(up) == 0);
        pid_t child = fork();
        REQUIRE(child >= 0);
        if (child == 0) {
            close(up[0]);
            _exit(ro_child(r, up[1], how));
        }
        close(up[1]);
        char c = t_get(up[0]);
        if (c != 'r') {
            fprintf(stderr, "ro child %d: did not read the parent's content (%c)\n",
                    how, c ? c : '0');
            t_failures++;
        }
        if (how == 1) {
            c = t_get(up[0]);
            if (c != 'e') {
                fprintf(stderr, "ro child: mprotect(PROT_WRITE) %s\n",
                        c == 'm' ? "succeeded" : "failed without EACCES");
                t_failures++;
            }
        }
        c = t_get(up[0]);
        if (c == 'W') {
            fprintf(stderr, "ro child %d: wrote to a read-only region\n", how);
            t_failures++;
        }
        close(up[0]);
        int rc = t_wait(child);
        if (rc != 128 + SIGSEGV) {
            fprintf(stderr, "ro child %d: exit %d, want %d (SIGSEGV)\n", how, rc,
                    128 + SIGSEGV);
            t_failures++;
        }
    }
    const unsigned char *p = rpal_region_addr(r);
    CHECK(p[123] == 0x77);
    CHECK(rpal_region_detach(r) == 0);

    /* A read-write attacher still can write: the fault above came from the
     * read-only attachment, not from the region. */
    REQUIRE(rpal_region_attach("fork/ro", 0, &w) == 0);
    ((unsigned char *)rpal_region_addr(w))[123] = 0x99;
    CHECK(rpal_region_detach(w) == 0);
    CHECK(rpal_region_unlink("fork/ro") == 0);
}

int main(void)
{
    t_init();
    rw_case();
    exit_case();
    ro_case();
    return t_done();
}
