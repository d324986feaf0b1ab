/* Issue 16, attack 2: joining a directory someone else made. In a shared
 * namespace (1777), uid 65534 joins and leaves the domain hd2 first, so
 * that .domains/hd2 is its own; root joining hd2 then trusted a directory
 * whose sockets and claims 65534 can swap. Now every directory rpal trusts
 * (the namespace, .domains, the domain's) must be root's or the caller's,
 * and sticky if others may write it (ssh's StrictModes): else -EPERM, and
 * `rpal ls` names the path and the fix. Root only (a skip otherwise).
 */
#include "testlib.h"

#include <grp.h>

#define NOBODY 65534

static char ns[256];

static const char *at(const char *rel)
{
    static char buf[2][512];
    static int k;
    k ^= 1;
    snprintf(buf[k], sizeof buf[k], "%s/%s", ns, rel);
    return buf[k];
}

/* As uid 65534: join and leave domain NAME; its exit status. */
static int nobody_joins(const char *name)
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            _exit(3);
        rpal_domain *d;
        int err = rpal_domain_join(name, NULL, &d);
        if (err < 0) {
            fprintf(stderr, "uid 65534 joining %s: %s\n", name, rpal_strerror(err));
            _exit(1);
        }
        _exit(rpal_domain_leave(d) == 0 ? 0 : 2);
    }
    return t_wait(p);
}

static int join_leave(const char *name)
{
    rpal_domain *d;
    int err = rpal_domain_join(name, NULL, &d);
    if (err == 0)
        CHECK(rpal_domain_leave(d) == 0);
    return err;
}

int main(void)
{
    if (geteuid() != 0)
        t_skip("needs root to switch to another uid (65534)");
    t_init();
    snprintf(ns, sizeof ns, "%s", rpal_ns_dir());
    REQUIRE(chmod(ns, 01777) == 0); /* a namespace shared by all users */
    CHECK(join_leave("own") == 0);  /* .domains is root's */
    CHECK(nobody_joins("hd2") == 0);
    struct stat st;
    REQUIRE(stat(at(".domains/hd2"), &st) == 0 && st.st_uid == NOBODY);

    /* The attack: root joins the directory 65534 made. */
    int err = join_leave("hd2");
    printf("root joining a domain directory of uid 65534: %s\n", rpal_strerror(err));
    CHECK(err == -EPERM);

    /* rpal ls names it. */
    char out[4096];
    t_rpal_out("ls", out, sizeof out);
    printf("rpal ls says:\n%s", out);
    CHECK(strstr(out, "hd2") && strstr(out, "not trusted") && strstr(out, "65534"));

    /* Writable by others without the sticky bit: the domain's, .domains, the namespace. */
    REQUIRE(chmod(at(".domains/own"), 0777) == 0);
    CHECK(join_leave("own") == -EPERM);
    REQUIRE(chmod(at(".domains/own"), 01777) == 0);
    CHECK(join_leave("own") == 0);
    REQUIRE(chmod(at(".domains"), 0777) == 0);
    CHECK(join_leave("own") == -EPERM);
    REQUIRE(chmod(at(".domains"), 01777) == 0);
    REQUIRE(chmod(ns, 0777) == 0);
    CHECK(join_leave("own") == -EPERM);
    rpal_region *r;
    CHECK(rpal_region_create("r", 4096, 0600, 0, &r) == -EPERM);
    REQUIRE(chmod(ns, 01777) == 0);
    /* .domains of another user. */
    REQUIRE(chown(at(".domains"), NOBODY, NOBODY) == 0);
    CHECK(join_leave("own") == -EPERM);
    REQUIRE(chown(at(".domains"), 0, 0) == 0);
    CHECK(join_leave("own") == 0);
    /* Root's open domain still takes another user (docs/hardening.md). */
    REQUIRE(chmod(at(".domains/own"), 01777) == 0);
    CHECK(nobody_joins("own") == 0);
    return t_done();
}
