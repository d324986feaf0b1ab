/* Permissions: regions and their directories carry ordinary file modes, and a
 * process of another user gets exactly what those modes allow.
 *
 * Root creates regions of several modes; a child that dropped to uid/gid
 * 65534 then tries to attach, stat, list and unlink them. Also: the mode of a
 * new region and of its new directories is exactly what was asked for,
 * whatever the umask.
 */
#include "testlib.h"

#include <fcntl.h>
#include <grp.h>

#define NOBODY 65534

static const char *dir;

static int mode_of(const char *rel)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    if (lstat(path, &st) < 0)
        return -1;
    return (int)(st.st_mode & 07777);
}

static int path_exists(const char *rel)
{
    return mode_of(rel) >= 0;
}

static void create(const char *name, unsigned mode)
{
    rpal_region *r;
    int err = rpal_region_create(name, 65536, mode, 0, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        memset(rpal_region_addr(r), 0x5a, 65536);
        CHECK(rpal_region_detach(r) == 0);
    }
}

/* ---- what the other user sees (runs in the child) ----------------------- */

struct seen {
    int n;
    char names[32][RPAL_NAME_MAX + 1];
};

static int collect(const struct rpal_region_info *info, void *arg)
{
    struct seen *s = arg;
    if (s->n < 32)
        snprintf(s->names[s->n++], sizeof s->names[0], "%s", info->name);
    return 0;
}

static int listed(const struct seen *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name))
            return 1;
    return 0;
}

static int unlink_denied(int err)
{
    return err == -EACCES || err == -EPERM;
}

static int as_nobody(void)
{
    if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
        perror("dropping to uid 65534");
        return 1;
    }
    if (geteuid() != NOBODY || getegid() != NOBODY) {
        fprintf(stderr, "still euid %d egid %d\n", (int)geteuid(), (int)getegid());
        return 1;
    }
    rpal_region *r;
    struct rpal_region_info info;
    int err;

    /* 0600: nothing. */
    CHECK_ERR(rpal_region_attach("p0600", 0, &r), -EACCES);
    CHECK_ERR(rpal_region_attach("p0600", RPAL_REGION_RDONLY, &r), -EACCES);
    CHECK_ERR(rpal_region_stat("p0600", &info), -EACCES);

    /* 0644: read-only attach, and only that. */
    CHECK_ERR(rpal_region_attach("p0644", 0, &r), -EACCES);
    err = rpal_region_attach("p0644", RPAL_REGION_RDONLY, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        const unsigned char *p = rpal_region_addr(r);
        CHECK(p[0] == 0x5a && p[65535] == 0x5a);
        CHECK(rpal_region_detach(r) == 0);
    }
    CHECK_ERR(rpal_region_stat("p0644", &info), 0);
    CHECK(info.mode == 0644 && info.uid == 0);

    /* 0666: read-write attach; what we write is in the region. */
    err = rpal_region_attach("p0666", 0, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        unsigned char *p = rpal_region_addr(r);
        CHECK(p[100] == 0x5a);
        p[100] = 0xa5;
        CHECK(rpal_region_detach(r) == 0);
    }

    /* A region in a directory that only root may search. */
    CHECK_ERR(rpal_region_attach("private/x", 0, &r), -EACCES);
    CHECK_ERR(rpal_region_attach("private/x", RPAL_REGION_RDONLY, &r), -EACCES);
    CHECK_ERR(rpal_region_stat("private/x", &info), -EACCES);

    /* A readable one in a directory that everybody may search. */
    err = rpal_region_attach("shared/y", RPAL_REGION_RDONLY, &r);
    CHECK_ERR(err, 0);
    if (err == 0)
        CHECK(rpal_region_detach(r) == 0);
    CHECK_ERR(rpal_region_attach("shared/y", 0, &r), -EACCES);

    /* The listing shows what we may see, and only that. */
    struct seen s = {0};
    CHECK_ERR(rpal_region_foreach(collect, &s), 0);
    CHECK(listed(&s, "p0644"));
    CHECK(listed(&s, "p0666"));
    CHECK(listed(&s, "shared/y"));
    CHECK(!listed(&s, "private/x"));
    CHECK(!listed(&s, "p0600"));
    for (int i = 0; i < s.n; i++)
        CHECK(strncmp(s.names[i], "private/", 8) != 0);

    /* Nobody's regions but root's: no removal of any of them. */
    static const char *mine[] = {"p0600", "p0644", "p0666", "private/x", "shared/y"};
    for (size_t i = 0; i < sizeof mine / sizeof *mine; i++) {
        err = rpal_region_unlink(mine[i]);
        if (!unlink_denied(err)) {
            fprintf(stderr, "nobody: unlink %s returned %d (%s), want -EACCES or -EPERM\n",
                    mine[i], err, rpal_strerror(err));
            t_failures++;
        }
    }
    /* Nor can it create next to them, in a directory it may not write. */
    CHECK_ERR(rpal_region_create("shared/z", 65536, 0644, 0, &r), -EACCES);
    CHECK_ERR(rpal_region_create("private/z", 65536, 0644, 0, &r), -EACCES);
    return t_failures ? 1 : 0;
}

/* ---- modes and the umask (as root, in this process) ---------------------- */

static void check_modes(void)
{
    static const mode_t masks[] = {0077, 0, 0022};
    for (size_t i = 0; i < sizeof masks / sizeof *masks; i++) {
        mode_t old = umask(masks[i]);
        char name[64];
        struct rpal_region_info info;

        snprintf(name, sizeof name, "umask%03o/zero", (unsigned)masks[i]);
        create(name, 0);
        CHECK(mode_of(name) == 0600);
        CHECK_ERR(rpal_region_stat(name, &info), 0);
        CHECK(info.mode == 0600);
        /* The new directory of a 0600 region: mode plus 0700. */
        snprintf(name, sizeof name, "umask%03o", (unsigned)masks[i]);
        CHECK(mode_of(name) == 0700);

        snprintf(name, sizeof name, "umask%03o-0640", (unsigned)masks[i]);
        create(name, 0640);
        CHECK(mode_of(name) == 0640);
        CHECK_ERR(rpal_region_stat(name, &info), 0);
        CHECK(info.mode == 0640);

        snprintf(name, sizeof name, "umask%03o-0666", (unsigned)masks[i]);
        create(name, 0666);
        CHECK(mode_of(name) == 0666);

        /* 0640 grants read to the group: directories get g+x too, nested
         * ones included. */
        snprintf(name, sizeof name, "dirs%03o/a/b/r", (unsigned)masks[i]);
        create(name, 0640);
        CHECK(mode_of(name) == 0640);
        snprintf(name, sizeof name, "dirs%03o/a/b", (unsigned)masks[i]);
        CHECK(mode_of(name) == 0750);
        snprintf(name, sizeof name, "dirs%03o", (unsigned)masks[i]);
        CHECK(mode_of(name) == 0750);
        umask(old);
    }
}

int main(void)
{
    t_init();
    if (geteuid() != 0)
        t_skip("needs root to switch to another uid");
    dir = rpal_ns_dir();
    /* A namespace root everybody may enter (the runner's is 0755; one made
     * by t_init() is 0700). */
    REQUIRE(chmod(dir, 0755) == 0);

    check_modes();

    /* Made under umask 077 on purpose: the modes must still be exact. */
    umask(0077);
    create("p0600", 0600);
    create("p0644", 0644);
    create("p0666", 0666);
    create("private/x", 0600);
    create("shared/y", 0644);
    CHECK(mode_of("p0600") == 0600);
    CHECK(mode_of("p0644") == 0644);
    CHECK(mode_of("p0666") == 0666);
    CHECK(mode_of("private") == 0700);
    CHECK(mode_of("private/x") == 0600);
    CHECK(mode_of("shared") == 0755);
    CHECK(mode_of("shared/y") == 0644);

    /* Root sees them all. */
    struct seen s = {0};
    CHECK_ERR(rpal_region_foreach(collect, &s), 0);
    CHECK(listed(&s, "private/x") && listed(&s, "shared/y") && listed(&s, "p0600"));

    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0)
        _exit(as_nobody());
    int rc = t_wait(child);
    if (rc != 0) {
        fprintf(stderr, "the uid 65534 child failed (exit %d)\n", rc);
        t_failures++;
    }

    /* Nothing was removed, and the write through the 0666 region is there. */
    static const char *all[] = {"p0600", "p0644", "p0666", "private/x", "shared/y"};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        struct rpal_region_info info;
        CHECK(path_exists(all[i]));
        CHECK_ERR(rpal_region_stat(all[i], &info), 0);
    }
    CHECK(!path_exists("shared/z") && !path_exists("private/z"));
    rpal_region *r;
    int err = rpal_region_attach("p0666", RPAL_REGION_RDONLY, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        const unsigned char *p = rpal_region_addr(r);
        CHECK(p[100] == 0xa5 && p[99] == 0x5a);
        CHECK(rpal_region_detach(r) == 0);
    }
    return t_done();
}
