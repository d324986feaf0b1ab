/* Issue 16, attack 4 (claims): in a domain opened to other users (chmod
 * 1777, docs/hardening.md), uid 65534 created and locked every claim file
 * slot.N, and every later join of another user failed with -ENOSPC. Now a
 * user's claims count, for others, only up to a quota (RPAL_QUOTA_CLAIMS,
 * a quarter of the slots); a slot held beyond it is claimed through a file
 * of the joiner's own (slot.N.uUID). Joiners that meet at once on one slot
 * back off, so honest members never share a slot; every reader of member
 * records (rpal_domain_foreach here) sees the one that counts. The hog also
 * holds every pin of the directory: pins are not honoured where others may
 * read the directory. Root only
 * (it switches to other uids; a skip otherwise).
 */
#include "testlib.h"
#include "internal.h"

#include <fcntl.h>
#include <grp.h>

#define NOBODY 65534
#define OTHER  65533
#define JOINERS 4

static char dom[512];

static void become(uid_t uid)
{
    if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0)
        _exit(3);
}

/* As NOBODY: every claim file of the domain made and locked, then wait
 * (the write end of READY closed when done) until killed. */
static pid_t hog(unsigned nslots)
{
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        become(NOBODY);
        for (unsigned i = 0; i < nslots; i++) {
            char path[600];
            snprintf(path, sizeof path, "%s/slot.%u", dom, i);
            int fd = open(path, O_RDWR | O_CREAT, 0644);
            struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
            if (fd < 0 || fchmod(fd, 0644) < 0 || fcntl(fd, F_OFD_SETLK, &fl) < 0)
                _exit(2);
        }
        /* And every pin (issue 16 attack 7's read lock of byte N of the
         * domain's directory, docs/domains.md): in a directory anyone may
         * read, pins must not be honoured, or these alone refuse every join. */
        int dfd = open(dom, O_RDONLY | O_DIRECTORY);
        struct flock pins = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0,
                             .l_len = nslots};
        if (dfd < 0 || fcntl(dfd, F_OFD_SETLK, &pins) < 0)
            _exit(4);
        close(p[1]);
        pause();
        _exit(0);
    }
    close(p[1]);
    char c;
    REQUIRE(read(p[0], &c, 1) == 0); /* all locked */
    close(p[0]);
    return pid;
}

/* As UID: join "open" and report the slot (or the negated error) on
 * *OUT's pipe, then stay a member until *GO's pipe is closed. */
static pid_t joiner(uid_t uid, int *out, int *go)
{
    int a[2], b[2];
    REQUIRE(pipe(a) == 0 && pipe(b) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(a[0]);
        close(b[1]);
        if (uid)
            become(uid);
        rpal_domain *d;
        int err = rpal_domain_join("open", NULL, &d);
        unsigned slot = 0;
        if (err == 0)
            rpal_domain_slot(d, &slot, NULL, NULL);
        int v = err < 0 ? err : (int)slot;
        (void)!write(a[1], &v, sizeof v);
        char c;
        (void)!read(b[0], &c, 1);
        _exit(err == 0 && rpal_domain_leave(d) == 0 ? 0 : 1);
    }
    close(a[1]);
    close(b[0]);
    *out = a[0];
    *go = b[1];
    return pid;
}

struct seen {
    int n;
    unsigned slot[16];
    uint32_t uid[16];
};

static int seen_one(const struct rpal_member_info *m, void *arg)
{
    struct seen *s = arg;
    if (!strcmp(m->domain, "open") && s->n < 16) {
        s->slot[s->n] = m->slot;
        s->uid[s->n++] = m->uid;
    }
    return 0;
}

int main(void)
{
    if (geteuid() != 0)
        t_skip("needs root to switch to other uids (65534, 65533)");
    t_init();
    const char *ns = rpal_ns_dir();
    REQUIRE(chmod(ns, 01777) == 0);
    rpal_domain *d;
    REQUIRE(rpal_domain_join("open", NULL, &d) == 0);
    REQUIRE(rpal_domain_leave(d) == 0);
    snprintf(dom, sizeof dom, "%s/.domains/open", ns);
    REQUIRE(chmod(dom, 01777) == 0); /* opened to other users */
    char meta[600];
    snprintf(meta, sizeof meta, "%s/meta", dom);
    struct dom_meta m;
    int mfd = open(meta, O_RDONLY);
    REQUIRE(mfd >= 0 && read(mfd, &m, sizeof m) == (ssize_t)sizeof m);
    close(mfd);
    pid_t h = hog(m.nslots);
    printf("uid 65534 holds all %u claims\n", m.nslots);

    /* Honest joiners at once: three of uid 65533 and one of root. */
    pid_t pids[JOINERS];
    int out[JOINERS], go[JOINERS], slot[JOINERS];
    for (int i = 0; i < JOINERS; i++)
        pids[i] = joiner(i ? OTHER : 0, &out[i], &go[i]);
    for (int i = 0; i < JOINERS; i++) {
        slot[i] = -ENOSPC;
        REQUIRE(read(out[i], &slot[i], sizeof slot[i]) == (ssize_t)sizeof slot[i]);
        printf("joiner %d (uid %u): %s, slot %d\n", i, i ? OTHER : 0,
               slot[i] < 0 ? rpal_strerror(slot[i]) : "joined", slot[i]);
        CHECK(slot[i] >= 0);
        for (int k = 0; k < i; k++)
            CHECK(slot[i] < 0 || slot[i] != slot[k]); /* never two in one slot */
    }
    /* Every reader sees the members that count: ours, not 65534's. */
    struct seen s = {0};
    CHECK(rpal_domain_foreach(seen_one, &s) == 0);
    printf("root sees %d members of open\n", s.n);
    CHECK(s.n == JOINERS);
    for (int i = 0; i < s.n; i++)
        CHECK(s.uid[i] != NOBODY);
    /* The handshake checks each side's claim: a service of 65533's (its
     * process started with that effective uid) and a caller of root's,
     * both through claims of their own. */
    REQUIRE(setegid(OTHER) == 0 && seteuid(OTHER) == 0);
    struct t_svc sv = t_svc_start("open", NULL, -1, 0, 0);
    REQUIRE(seteuid(0) == 0 && setegid(0) == 0);
    pid_t caller = fork();
    REQUIRE(caller >= 0);
    if (caller == 0) {
        rpal_domain *cd;
        rpal_chan *c = t_svc_open(&sv, "open", NULL, &cd);
        char rep[8];
        size_t rlen = 0;
        int err = rpal_call(c, "ab", 2, rep, sizeof rep, &rlen, 5000);
        if (err < 0)
            fprintf(stderr, "call across users in the shared domain: %s\n", rpal_strerror(err));
        _exit(err == 0 && rlen == 2 && rep[0] == ('a' ^ 0x5A) ? 0 : 1);
    }
    CHECK(t_wait(caller) == 0);
    CHECK(t_svc_stop(&sv) == 0);
    for (int i = 0; i < JOINERS; i++) {
        REQUIRE(write(go[i], "x", 1) == 1); /* not a close: later children hold it too */
        CHECK(t_wait(pids[i]) == 0);
        close(go[i]);
        close(out[i]);
    }
    /* Members that left leave no claim of theirs behind, and gc removes
     * the claim of the caller that exited without leaving. */
    CHECK(rpal_gc(NULL, NULL) >= 1);
    DIR *dir = opendir(dom);
    REQUIRE(dir);
    int left = 0;
    for (struct dirent *e; (e = readdir(dir));)
        if (strstr(e->d_name, ".u")) {
            printf("left behind: %s\n", e->d_name);
            left++;
        }
    closedir(dir);
    CHECK(left == 0);
    kill(h, SIGKILL);
    t_wait(h);
    return t_done();
}
