/* Issue 16, attack 4: in a namespace shared by all users (1777), another
 * user (uid 65534) took every region creation away from everyone else by
 * reserving (a) one empty region over the whole address window, or (b)
 * the registry's 4096 entries with small regions. Now a user's share of
 * the window and of the entries is bounded (RPAL_QUOTA_WINDOW, a quarter
 * of the window; RPAL_QUOTA_REGIONS, 1024): what is beyond it counts as
 * free for everyone else, whose creation works; the over-quota regions
 * attach for others as -EDQUOT, `rpal ls` marks them and `rpal gc` frees
 * their entries. A region hidden in a directory others may not search
 * keeps its entry. Root only (it switches to other uids; a skip
 * otherwise).
 */
#include "testlib.h"

#include <grp.h>

#define NOBODY 65534
#define OTHER  65533
#define THIRD  65532

static void become(uid_t uid)
{
    if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0)
        _exit(3);
}

/* As UID: create the region NAME of SIZE (the whole window if 0) with
 * FLAGS, mode 0644 (0600 under priv/, whose directory is then 0700); the
 * child's exit status is 0 on success, else 1. */
static int create_as(uid_t uid, const char *name, size_t size, unsigned flags)
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        become(uid);
        rpal_region *r;
        /* All the window that is left (one region of 4 MiB of range made
         * before): its size depends on the build (the sanitizer
         * builds have a smaller one). */
        size_t want = size ? size : (16ull << 40) - (8u << 20);
        unsigned mode = strncmp(name, "priv/", 5) ? 0644 : 0600;
        int err = rpal_region_create(name, want, mode, flags, &r);
        if (err == -EFBIG && !size)
            err = rpal_region_create(name, (128ull << 30) - (8u << 20), mode, flags, &r);
        if (err < 0)
            fprintf(stderr, "uid %u creating %s: %s\n", (unsigned)uid, name, rpal_strerror(err));
        _exit(err < 0);
    }
    return t_wait(p);
}

/* As UID: attach NAME read-only; the error code (0: attached). */
static int attach_as(uid_t uid, const char *name)
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        become(uid);
        rpal_region *r;
        int err = rpal_region_attach(name, RPAL_REGION_RDONLY, &r);
        if (err == 0)
            rpal_region_detach(r);
        _exit(-err);
    }
    return -t_wait(p);
}

/* As NOBODY: N regions of one page, p0 .. p(N-1); how many were made. */
static int fill_as_nobody(int n)
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        become(NOBODY);
        int made = 0;
        for (int i = 0; i < n; i++) {
            char name[32];
            rpal_region *r;
            snprintf(name, sizeof name, "p%d", i);
            if (rpal_region_create(name, 4096, 0644, 0, &r) < 0)
                break;
            rpal_region_detach(r);
            made++;
        }
        _exit(made == n ? 0 : 1);
    }
    return t_wait(p);
}

/* Whether the registry holds an entry naming NAME (a freed entry is
 * zeros). */
static int registry_has(const char *name)
{
    char path[600];
    snprintf(path, sizeof path, "%s/.rpal-registry", rpal_ns_dir());
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    static char buf[2 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return memmem(buf, n, name, strlen(name) + 1) != NULL;
}

static void ls_says(const char *want_name, const char *want)
{
    char out[8192];
    t_rpal_out("ls", out, sizeof out);
    printf("rpal ls says:\n%s", out);
    char *line = strstr(out, want_name);
    char *eol = line ? strchr(line, '\n') : NULL;
    if (eol)
        *eol = 0;
    CHECK(line && strstr(line, want));
}

static void count_quota(const char *kind, const char *name, void *arg)
{
    if (!strcmp(kind, "quota")) {
        printf("rpal gc: %s %s\n", kind, name);
        ++*(int *)arg;
    }
}

int main(void)
{
    if (geteuid() != 0)
        t_skip("needs root to switch to other uids (65534, 65533)");
    t_init();
    char ns[256], ns2[300];
    snprintf(ns, sizeof ns, "%s", rpal_ns_dir());
    REQUIRE(chmod(ns, 01777) == 0); /* a namespace shared by all users */

    /* (a) One empty region over the whole window. A region of 65533's in
     * a directory only it may search stays: its entry counts for it. */
    REQUIRE(create_as(OTHER, "priv/keep", 1 << 20, 0) == 0);
    REQUIRE(create_as(NOBODY, "hog", 0, RPAL_REGION_EMPTY) == 0);
    CHECK(create_as(THIRD, "third", 1 << 20, 0) == 0);
    CHECK(registry_has("priv/keep") && registry_has("third") && !registry_has("hog"));
    rpal_region *r;
    int err = rpal_region_create("mine", 1 << 20, 0644, 0, &r);
    printf("(a) root creating after uid 65534 took the whole window: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        rpal_region_detach(r);
    CHECK(create_as(OTHER, "theirs", 1 << 20, 0) == 0);
    err = attach_as(OTHER, "hog");
    printf("(a) uid 65533 attaching the over-quota region: %s\n", rpal_strerror(err));
    CHECK(err == -EDQUOT);
    err = rpal_region_attach("hog", RPAL_REGION_RDONLY, &r);
    if (err == 0)
        rpal_region_detach(r);
    CHECK(err == -EDQUOT); /* root too */
    CHECK(attach_as(NOBODY, "hog") == 0); /* its own: as it was */
    CHECK(attach_as(OTHER, "mine") == 0);
    ls_says("hog", "over quota");
    /* rpal gc frees, and names, what is beyond a quota: with 1 MiB of
     * window, every entry of 65533 (2) and 65532 (1); not root's. */
    setenv("RPAL_QUOTA_WINDOW", "1M", 1);
    int quota = 0;
    CHECK(rpal_gc(count_quota, &quota) >= 3);
    CHECK(quota == 3 && registry_has("mine") && !registry_has("theirs"));
    unsetenv("RPAL_QUOTA_WINDOW");

    /* (b) The registry's 4096 entries, in a second shared namespace. */
    snprintf(ns2, sizeof ns2, "%s/b", ns);
    REQUIRE(mkdir(ns2, 01777) == 0 && chmod(ns2, 01777) == 0);
    setenv("RPAL_DIR", ns2, 1);
    CHECK(fill_as_nobody(4096) == 0);
    err = rpal_region_create("mine", 4096, 0644, 0, &r);
    printf("(b) root creating after uid 65534 made 4096 regions: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        rpal_region_detach(r);
    CHECK(create_as(OTHER, "theirs", 4096, 0) == 0);
    CHECK(attach_as(OTHER, "p0") == 0);          /* within the quota */
    CHECK(attach_as(OTHER, "p4095") == -EDQUOT); /* beyond it */
    /* The quota is the honest process's own setting. */
    setenv("RPAL_QUOTA_REGIONS", "4096", 1);
    CHECK(attach_as(OTHER, "p4095") == 0);
    unsetenv("RPAL_QUOTA_REGIONS");
    setenv("RPAL_DIR", ns, 1);
    return t_done();
}
