/* Permissions between users, names, file modes and symbolic links, for
 * domains, services, slots and the files the library makes (region
 * permissions for other uids are in region_perm.c).
 *
 * - Another uid (65534) cannot join a domain root made (0700), read a
 *   member's slot (/proc/PID/fd, /proc/PID/mem, map_files,
 *   process_vm_readv), attach or read a 0600 region; in a domain whose
 *   directory root opened (1777, as docs/hardening.md says) it joins, but a
 *   0600 service refuses it, a 0666 one accepts it with the key (and maps
 *   root's slot read-only), and it cannot remove root's claim or socket.
 * - Bad names ("..", "a/../../x", absolute, empty, overlong, control and
 *   non-ASCII bytes, ...) for regions, domains and services are refused with
 *   -EINVAL or -ENAMETOOLONG and nothing is created, inside the namespace or
 *   around it (three directory levels are compared before and after).
 * - Under umask 0 and 077 alike, every file and directory the library makes
 *   has the documented mode (0600 unless a mode was asked for); an unknown
 *   file fails the test.
 * - Symbolic links planted where a region, a lock file, the registry, the
 *   .domains directory, a domain, its meta, a claim or a service socket
 *   would be are never followed: the calls fail or skip them, and the
 *   targets (a file, a directory, a listening socket outside the namespace)
 *   are unchanged: same content, size, mode, nothing added, no connection.
 *   rpal_gc(), `rpal gc` and `rpal ls` do not walk symlinked directories.
 * Needs root (to switch uids); otherwise a skip.
 */
#include "testlib.h"
#include "internal.h"
#include "hugesetup.h"

#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#define NOBODY 65534

static char base[256];
static struct huge_setup hs; /* modes(): huge pages for the data files */

static void cleanup_base(void)
{
    if (base[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", base);
    }
}

static const char *at(const char *dir, const char *rel)
{
    static char bufs[8][512];
    static int i;
    char *b = bufs[i++ % 8];
    REQUIRE(snprintf(b, 512, "%s/%s", dir, rel) < 512);
    return b;
}

static void mkdir_p(const char *path, mode_t mode)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    REQUIRE(system(cmd) == 0);
    REQUIRE(chmod(path, mode) == 0);
}

/* A listing of everything under DIR (names, types, modes, sizes), for
 * comparing before and after. */
static void listing(const char *dir, char *out, size_t size)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && find . -printf '%%p %%y %%m %%s\\n' 2>/dev/null | sort", dir);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    pclose(p);
}

static int mode_at(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

/* ---- another uid ---------------------------------------------------------- */

static int drop_to_nobody(void)
{
    if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
        perror("dropping to uid 65534");
        return -1;
    }
    return geteuid() == NOBODY && getegid() == NOBODY ? 0 : -1;
}

static atomic_int stop_dispatch, dispatch_runs;
static rpal_domain *root_dom;

static void *dispatch_main(void *arg)
{
    (void)arg;
    atomic_store(&dispatch_runs, 1);
    while (!atomic_load(&stop_dispatch)) {
        struct rpal_event ev[4];
        rpal_domain_dispatch(root_dom, ev, 4, 20);
    }
    return NULL;
}

static int nobody_main(pid_t root_pid, int root_memfd, uint64_t root_slot,
                       const rpal_key *k600, const rpal_key *k666)
{
    if (drop_to_nobody() < 0)
        return 1;
    rpal_domain *d;
    rpal_region *r;
    struct rpal_region_info info;

    /* Root's own domain: its directory is 0700. */
    CHECK_ERR(rpal_domain_join("private", NULL, &d), -EACCES);

    /* Root's 0600 region: neither attached, nor described, nor opened; its
     * 0644 one may be read, as its mode says. */
    CHECK_ERR(rpal_region_attach("r600", 0, &r), -EACCES);
    CHECK_ERR(rpal_region_attach("r600", RPAL_REGION_RDONLY, &r), -EACCES);
    CHECK_ERR(rpal_region_stat("r600", &info), -EACCES);
    CHECK(open(at(rpal_ns_dir(), "r600"), O_RDONLY) < 0 && errno == EACCES);
    CHECK_ERR(rpal_region_attach("r644", 0, &r), -EACCES);
    int err = rpal_region_attach("r644", RPAL_REGION_RDONLY, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        CHECK(((volatile unsigned char *)rpal_region_addr(r))[0] == 0x44);
        CHECK(rpal_region_detach(r) == 0);
    }

    /* Root's slot, behind its back: no way in. */
    char path[128];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)root_pid, root_memfd);
    int fd = open(path, O_RDONLY);
    CHECK(fd < 0 && (errno == EACCES || errno == EPERM));
    if (fd >= 0)
        close(fd);
    snprintf(path, sizeof path, "/proc/%d/mem", (int)root_pid);
    fd = open(path, O_RDONLY);
    CHECK(fd < 0 && (errno == EACCES || errno == EPERM));
    if (fd >= 0)
        close(fd);
    snprintf(path, sizeof path, "/proc/%d/map_files", (int)root_pid);
    DIR *dir = opendir(path);
    CHECK(!dir);
    if (dir)
        closedir(dir);
    uint64_t word = 0;
    struct iovec li = {&word, sizeof word}, ri = {(void *)(uintptr_t)root_slot, sizeof word};
    /* qemu-user (tests/vm/arm64.sh) has no process_vm_readv at all: ENOSYS. */
    const char *emu = getenv("RPAL_EMULATED");
    CHECK(process_vm_readv(root_pid, &li, 1, &ri, 1, 0) < 0 &&
          (errno == EPERM || (errno == ENOSYS && emu && strcmp(emu, "qemu-user") == 0)));

    /* The domain root opened to everyone: join, and ask. */
    err = rpal_domain_join("shared", NULL, &d);
    CHECK_ERR(err, 0);
    if (err < 0)
        return t_done();
    rpal_peer *p;
    CHECK_ERR(rpal_service_request(d, "s600", k600, 2000, &p), -EACCES);
    rpal_key wrong = *k666;
    wrong.bytes[3] ^= 1;
    CHECK_ERR(rpal_service_request(d, "s666", &wrong, 2000, &p), -EACCES);
    err = rpal_service_request(d, "s666", k666, 2000, &p);
    CHECK_ERR(err, 0);
    if (err == 0) {
        const struct slot_hdr *h = rpal_peer_base(p);
        CHECK_ERR(rpal_peer_access_begin(p), 0); /* closed outside one under keys */
        CHECK(h && h->magic == SLOT_MAGIC && (uint64_t)(uintptr_t)h == root_slot);
        t_catch_faults();
        CHECK(t_write_faults((uint64_t)(uintptr_t)h, 1) == SIGSEGV); /* read-only */
        CHECK_ERR(rpal_peer_access_end(p), 0);
        CHECK_ERR(rpal_peer_release(p), 0);
    }
    /* The directory is sticky: root's files are not ours to remove, and gc
     * leaves a live member's things alone. */
    CHECK(unlinkat(d->dirfd, "slot.0", 0) < 0 && errno == EPERM);
    CHECK(unlinkat(d->dirfd, "svc.s666", 0) < 0 && errno == EPERM);
    CHECK(rpal_gc(NULL, NULL) >= 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}

static void other_uid(void)
{
    const char *ns = rpal_ns_dir();
    REQUIRE(chmod(ns, 0755) == 0); /* the runner's, or t_init's (0700) */
    rpal_region *r;
    REQUIRE(rpal_region_create("r600", 65536, 0, 0, &r) == 0);
    REQUIRE(rpal_region_detach(r) == 0);
    REQUIRE(rpal_region_create("r644", 65536, 0644, 0, &r) == 0);
    memset(rpal_region_addr(r), 0x44, 4096);
    REQUIRE(rpal_region_detach(r) == 0);

    /* A domain of root's: made 0700, left again (the directory stays). */
    rpal_domain *d;
    REQUIRE(rpal_domain_join("private", NULL, &d) == 0);
    REQUIRE(rpal_domain_leave(d) == 0);
    CHECK(mode_at(at(ns, ".domains/private")) == 0700);

    REQUIRE(rpal_domain_join("shared", NULL, &d) == 0);
    root_dom = d;
    unsigned slot;
    void *sbase;
    REQUIRE(rpal_domain_slot(d, &slot, &sbase, NULL) == 0 && slot == 0);
    /* Opening a domain to other users is the directory's mode. */
    REQUIRE(chmod(at(ns, ".domains/shared"), 01777) == 0);
    rpal_service *s600, *s666;
    REQUIRE(rpal_service_register(d, "s600", 0, NULL, NULL, &s600) == 0);
    REQUIRE(rpal_service_register(d, "s666", 0666, NULL, NULL, &s666) == 0);
    CHECK(mode_at(at(ns, ".domains/shared/svc.s600")) == 0600);
    CHECK(mode_at(at(ns, ".domains/shared/svc.s666")) == 0666);
    rpal_key k600, k666;
    rpal_service_key(s600, &k600);
    rpal_service_key(s666, &k666);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, dispatch_main, NULL) == 0);
    /* Fork once the thread runs its own code: under QEMU's user mode a new
     * thread takes QEMU's clone lock after pthread_create returned, and a
     * child forked then (which starts a thread: the region agent) would
     * inherit it held and hang (t_tasks_settle in testlib.h). */
    while (!atomic_load(&dispatch_runs))
        sched_yield();

    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        huge_setup_child(&hs);
        t_close_inherited(-1, -1, -1);
        t_failures = 0; /* ours, not the parent's */
        _exit(nobody_main(getppid(), d->memfd, (uint64_t)(uintptr_t)sbase, &k600, &k666));
    }
    CHECK(t_wait(kid) == 0);
    atomic_store(&stop_dispatch, 1);
    pthread_join(th, NULL);
    /* Still ours. */
    CHECK(mode_at(at(ns, ".domains/shared/slot.0")) == 0644);
    CHECK(mode_at(at(ns, ".domains/shared/svc.s666")) == 0666);
    CHECK_ERR(rpal_domain_leave(d), 0);
}

/* ---- names ---------------------------------------------------------------- */

static void names(void)
{
    char top[300], ns[400];
    snprintf(top, sizeof top, "%s/names", base);
    snprintf(ns, sizeof ns, "%s/a/b/ns", top);
    mkdir_p(at(top, "a/b"), 0755);
    setenv("RPAL_DIR", ns, 1);
    /* Something valid in every kind, so that the directories exist. */
    rpal_region *r;
    REQUIRE(rpal_region_create("ok", 4096, 0, 0, &r) == 0);
    REQUIRE(rpal_region_detach(r) == 0);
    rpal_domain *d;
    REQUIRE(rpal_domain_join("dom", NULL, &d) == 0);
    REQUIRE(rpal_domain_leave(d) == 0);

    static char before[1 << 16], after[1 << 16];
    listing(top, before, sizeof before);

    char longname[RPAL_NAME_MAX + 2], longcomp[70];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    memset(longcomp, 'c', 65);
    longcomp[65] = 0;
    const char *bad[] = {
        "", ".", "..", "../x", "../../x", "a/../../x", "a/..", "a/../b", "./a",
        "/abs", "/tmp/x", "/", "//", "a//b", "a/", ".hidden", "a/.b", "a/./b",
        "a b", "a\nb", "a\tb", "\x01", "a\x7f", "\xff", "\xc0\xae\xc0\xae", "caf\xc3\xa9",
        "a\\b", "a:b", "%s%n", "*", "a?", "~root", "$HOME", "a\"b", "\x1b[31m",
        longname, longcomp, NULL,
    };
    for (int i = 0; bad[i]; i++) {
        const char *n = bad[i];
        int want = strlen(n) > RPAL_NAME_MAX || strlen(n) > 64 ? -ENAMETOOLONG : -EINVAL;
        int rwant = strlen(n) > RPAL_NAME_MAX || n == longcomp ? -ENAMETOOLONG : -EINVAL;
        struct rpal_region_info info;
        int e1 = rpal_region_create(n, 4096, 0, 0, &r), e2 = rpal_region_attach(n, 0, &r),
            e3 = rpal_region_stat(n, &info), e4 = rpal_region_unlink(n),
            e5 = rpal_region_layout(n, NULL, NULL, 0);
        if (e1 != rwant || e2 != rwant || e3 != rwant || e4 != rwant || e5 != rwant) {
            fprintf(stderr, "region name #%d: %d %d %d %d %d, want %d\n", i, e1, e2, e3, e4,
                    e5, rwant);
            t_failures++;
        }
        int e6 = rpal_domain_join(n, NULL, &d);
        if (e6 != want) {
            fprintf(stderr, "domain name #%d: %d, want %d\n", i, e6, want);
            t_failures++;
            if (e6 == 0)
                rpal_domain_leave(d);
        }
    }
    /* A domain or service name is one component. */
    CHECK_ERR(rpal_domain_join("a/b", NULL, &d), -EINVAL);
    REQUIRE(rpal_domain_join("dom", NULL, &d) == 0);
    rpal_key key = {{0}};
    rpal_service *s;
    rpal_peer *p;
    for (int i = 0; bad[i]; i++) {
        const char *n = bad[i];
        int want = strlen(n) > RPAL_NAME_MAX || strlen(n) > 64 ? -ENAMETOOLONG : -EINVAL;
        int e1 = rpal_service_register(d, n, 0, NULL, NULL, &s);
        int e2 = rpal_service_request(d, n, &key, 100, &p);
        if (e1 != want || e2 != want) {
            fprintf(stderr, "service name #%d: %d %d, want %d\n", i, e1, e2, want);
            t_failures++;
        }
    }
    CHECK_ERR(rpal_service_register(d, "a/b", 0, NULL, NULL, &s), -EINVAL);
    CHECK_ERR(rpal_service_request(d, "a/b", &key, 100, &p), -EINVAL);
    REQUIRE(rpal_domain_leave(d) == 0);
    /* The claim of the domain's member is gone again; nothing else moved. */
    listing(top, after, sizeof after);
    if (strcmp(before, after)) {
        fprintf(stderr, "bad names changed the tree:\n--- before\n%s--- after\n%s", before,
                after);
        t_failures++;
    }
    /* The longest names that are allowed, for contrast. */
    char maxname[RPAL_NAME_MAX + 1];
    memset(maxname, 'm', RPAL_NAME_MAX);
    maxname[RPAL_NAME_MAX] = 0;
    for (int i = 50; i < RPAL_NAME_MAX; i += 51)
        maxname[i] = '/';
    CHECK_ERR(rpal_region_create(maxname, 4096, 0, 0, &r), 0);
    CHECK_ERR(rpal_region_detach(r), 0);
    CHECK_ERR(rpal_region_unlink(maxname), 0);
    longcomp[64] = 0;
    CHECK_ERR(rpal_domain_join(longcomp, NULL, &d), 0);
    CHECK_ERR(rpal_service_register(d, longcomp, 0, NULL, NULL, &s), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
}

/* ---- modes ---------------------------------------------------------------- */

struct want {
    const char *path;
    int mode;
};

static int region_mode_of_lock(const char *rel, const struct want *w)
{
    /* .LEAF.INO.lock beside the region LEAF: the region's mode. */
    const char *slash = strrchr(rel, '/');
    const char *leaf = slash ? slash + 1 : rel;
    if (leaf[0] != '.' || strlen(leaf) < 6 || strcmp(leaf + strlen(leaf) - 5, ".lock"))
        return -1;
    for (; w->path; w++) {
        const char *ws = strrchr(w->path, '/');
        const char *wleaf = ws ? ws + 1 : w->path;
        size_t dl = slash ? (size_t)(slash - rel) : 0, wdl = ws ? (size_t)(ws - w->path) : 0;
        size_t ll = strlen(wleaf);
        if (dl == wdl && !strncmp(rel, w->path, dl) && !strncmp(leaf + 1, wleaf, ll) &&
            leaf[1 + ll] == '.')
            return w->mode;
    }
    return -1;
}

static void check_tree(const char *ns, const struct want *w)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "cd '%s' && find . -mindepth 1", ns);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        const char *rel = line + 2; /* "./" */
        int want = -1;
        for (const struct want *x = w; x->path && want < 0; x++)
            if (!strcmp(x->path, rel))
                want = x->mode;
        if (want < 0)
            want = region_mode_of_lock(rel, w);
        int got = mode_at(at(ns, rel));
        if (want < 0)
            fprintf(stderr, "%s: %s (mode %04o) is not a file the test knows\n", ns, rel, got);
        else if (got != want)
            fprintf(stderr, "%s: %s has mode %04o, want %04o\n", ns, rel, got, want);
        if (want < 0 || got != want)
            t_failures++;
        n++;
    }
    pclose(p);
    int expected = 0;
    for (; w->path; w++)
        expected++;
    CHECK(n >= expected);
}

/* The data files of the namespace NS on the hugetlbfs; a file with
 * another mode than MODE counts as a failure. */
static int huge_files_with_mode(const char *ns, int mode)
{
    char dir[HUGE_DIR_MAX], prefix[96];
    struct stat st;
    REQUIRE(rpal__prim_huge_dir(dir, sizeof dir) == 0);
    REQUIRE(stat(ns, &st) == 0);
    snprintf(prefix, sizeof prefix, "rpal.%" PRIu64 ".%" PRIu64 ".", (uint64_t)st.st_dev,
             (uint64_t)st.st_ino);
    DIR *d = opendir(dir);
    REQUIRE(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, prefix, strlen(prefix)))
            continue;
        int m = mode_at(at(dir, de->d_name));
        if (m != mode) {
            fprintf(stderr, "huge data file %s has mode %04o, want %04o\n", de->d_name, m, mode);
            t_failures++;
        }
        n++;
    }
    closedir(d);
    return n;
}

static void huge_down(void)
{
    huge_teardown(&hs);
}

static void modes(void)
{
    const mode_t masks[] = {0, 077};
    /* A private hugetlbfs and 512 free huge pages for the life of this
     * process, where we may (see tests/hugesetup.h); else not checked. */
    hs.owner = getpid();
    int have_huge = huge_setup(&hs, 512) == 0, huge_checked = 0;
    if (have_huge)
        atexit(huge_down);
    else
        printf("huge data files not checked: %s\n", hs.why);
    for (int i = 0; i < 2; i++) {
        char ns[400];
        snprintf(ns, sizeof ns, "%s/umask%03o/ns", base, (unsigned)masks[i]);
        mkdir_p(at(base, masks[i] ? "umask077" : "umask000"), 0755);
        setenv("RPAL_DIR", ns, 1);
        mode_t old = umask(masks[i]);
        rpal_region *r;
        REQUIRE(rpal_region_create("r-default", 65536, 0, 0, &r) == 0);
        REQUIRE(rpal_region_detach(r) == 0);
        REQUIRE(rpal_region_create("r-0640", 65536, 0640, 0, &r) == 0);
        REQUIRE(rpal_region_detach(r) == 0);
        REQUIRE(rpal_region_create("dir/sub/r", 65536, 0, RPAL_REGION_TRANSIENT, &r) == 0);
        REQUIRE(rpal_region_detach(r) == 0);
        REQUIRE(rpal_region_create("pub/r", 65536, 0644, 0, &r) == 0);
        REQUIRE(rpal_region_detach(r) == 0);
        rpal_domain *d;
        REQUIRE(rpal_domain_join("dm", NULL, &d) == 0);
        rpal_service *s1, *s2;
        REQUIRE(rpal_service_register(d, "sv", 0, NULL, NULL, &s1) == 0);
        REQUIRE(rpal_service_register(d, "sw", 0660, NULL, NULL, &s2) == 0);
        const struct want w[] = {
            {".", 0700}, /* the namespace, made by the library for RPAL_DIR */
            {".rpal-registry", 0600},
            {"r-default", 0600},
            {"r-0640", 0640},
            {"dir", 0700},
            {"dir/sub", 0700},
            {"dir/sub/r", 0600},
            {"pub", 0755},
            {"pub/r", 0644},
            {".domains", 0700},    /* the namespace's mode */
            {".domains/dm", 0700},
            {".domains/dm/meta", 0644},   /* geometry: no secret */
            {".domains/dm/slot.0", 0644}, /* claims: services read requesters' */
            {".domains/dm/svc.sv", 0600},
            {".domains/dm/svc.sw", 0660},
            {NULL, 0},
        };
        CHECK(mode_at(ns) == 0700);
        check_tree(ns, w + 1);
        /* Huge regions' data files, where huge pages can be had. */
        if (have_huge) {
            unsigned hmode = masks[i] ? 0640 : 0;
            int e = rpal_region_create("huge", 1ull << 30, hmode, RPAL_REGION_HUGE, &r);
            if (e == 0) {
                int n = huge_files_with_mode(ns, hmode ? hmode : 0600);
                CHECK(n == 1);
                rpal_region_detach(r);
                CHECK_ERR(rpal_region_unlink("huge"), 0);
                huge_checked++;
            } else {
                /* Others may hold the machine's huge pages right now. */
                printf("huge region not created (%s): its data file not checked\n",
                       rpal_strerror(e));
            }
        }
        CHECK_ERR(rpal_domain_leave(d), 0);
        umask(old);
    }
    if (have_huge)
        printf("huge data files checked under %d umask(s)\n", huge_checked);
}

/* ---- symbolic links ------------------------------------------------------- */

struct target {
    char path[512];
    struct stat st;
    char content[64];
};

static void target_note(struct target *t, const char *path)
{
    snprintf(t->path, sizeof t->path, "%s", path);
    REQUIRE(lstat(path, &t->st) == 0);
    t->content[0] = 0;
    if (S_ISREG(t->st.st_mode)) {
        int fd = open(path, O_RDONLY);
        REQUIRE(fd >= 0);
        ssize_t n = read(fd, t->content, sizeof t->content - 1);
        t->content[n > 0 ? n : 0] = 0;
        close(fd);
    }
}

static int target_same(const struct target *t, const char *what)
{
    struct target now;
    struct stat st;
    if (lstat(t->path, &st) < 0) {
        fprintf(stderr, "%s: %s is gone\n", what, t->path);
        return 0;
    }
    target_note(&now, t->path);
    if (st.st_ino != t->st.st_ino || st.st_mode != t->st.st_mode ||
        (S_ISREG(st.st_mode) && st.st_size != t->st.st_size) ||
        (S_ISDIR(st.st_mode) && st.st_nlink != t->st.st_nlink) ||
        st.st_mtim.tv_nsec != t->st.st_mtim.tv_nsec || st.st_mtim.tv_sec != t->st.st_mtim.tv_sec ||
        strcmp(now.content, t->content)) {
        fprintf(stderr, "%s: %s changed (mode %o -> %o, size %lld -> %lld)\n", what, t->path,
                (unsigned)t->st.st_mode, (unsigned)st.st_mode, (long long)t->st.st_size,
                (long long)st.st_size);
        return 0;
    }
    return 1;
}

static int pending_connection(int lsock)
{
    int c = accept4(lsock, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0)
        close(c);
    return c >= 0;
}

/* A service in another process of ours, for the channel through a
 * replaced socket. */
static int svc_child(int keyfd, int qfd)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join("dd", NULL, &d) == 0);
    rpal_service *s;
    REQUIRE(rpal_service_register(d, "svc2", 0, NULL, NULL, &s) == 0);
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(s, NULL, &r) == 0);
    t_key_send(keyfd, s);
    struct pollfd pf = {qfd, POLLIN, 0};
    while (poll(&pf, 1, 0) == 0) {
        struct rpal_event ev[4];
        rpal_domain_dispatch(d, ev, 4, 20);
    }
    return 0;
}

/* Swaps the service socket's name for a link to the file outside while
 * the main thread registers the service again and again: the mode given to
 * the service must never reach the file. */
static atomic_int race_stop;
static int race_dirfd;
static const char *race_target;

static void *racer_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&race_stop)) {
        unlinkat(race_dirfd, "svc.race", 0);
        symlinkat(race_target, race_dirfd, "svc.race");
    }
    return NULL;
}

static void chmod_race(rpal_domain *d, const char *target)
{
    race_dirfd = d->dirfd;
    race_target = target;
    atomic_store(&race_stop, 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, racer_main, NULL) == 0);
    int64_t end = t_now_ms() + 1000;
    unsigned long ok = 0, tries = 0;
    while (t_now_ms() < end && (mode_at(target) & 0777) == 0640) {
        rpal_service *s;
        tries++;
        if (rpal_service_register(d, "race", 0666, NULL, NULL, &s) == 0) {
            ok++;
            rpal_service_unregister(s);
        }
    }
    atomic_store(&race_stop, 1);
    pthread_join(th, NULL);
    unlinkat(d->dirfd, "svc.race", 0);
    if ((mode_at(target) & 0777) != 0640) {
        fprintf(stderr, "registering a service chmod'ed a file through a link (%lu tries)\n",
                tries);
        t_failures++;
        chmod(target, 0640);
    }
    printf("chmod race: %lu registrations of %lu\n", ok, tries);
}

static void symlinks(void)
{
    char top[300], ns[400], ns2[400], out[400], outns[400];
    snprintf(top, sizeof top, "%s/sym", base);
    snprintf(ns, sizeof ns, "%s/ns", top);
    snprintf(ns2, sizeof ns2, "%s/ns2", top);
    snprintf(out, sizeof out, "%s/out", top);
    snprintf(outns, sizeof outns, "%s/outns", top);
    mkdir_p(out, 0755);
    mkdir_p(ns2, 0700);
    /* The targets: a file, a directory, a listening socket. */
    int fd = open(at(out, "file"), O_WRONLY | O_CREAT | O_EXCL, 0640);
    REQUIRE(fd >= 0 && write(fd, "precious\n", 9) == 9);
    close(fd);
    int lsock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", at(out, "sock"));
    REQUIRE(lsock >= 0 && bind(lsock, (struct sockaddr *)&a, sizeof a) == 0 &&
            listen(lsock, 8) == 0);
    REQUIRE(chmod(at(out, "sock"), 0640) == 0);
    struct target tf, td, ts;
    target_note(&tf, at(out, "file"));
    target_note(&ts, at(out, "sock"));
    target_note(&td, out);
    static char out_before[1 << 14], out_after[1 << 14];
    listing(out, out_before, sizeof out_before);

    setenv("RPAL_DIR", ns, 1);
    rpal_region *r;
    struct rpal_region_info info;
    REQUIRE(rpal_region_create("seed", 4096, 0, 0, &r) == 0);
    REQUIRE(rpal_region_detach(r) == 0);

    /* Regions. */
    REQUIRE(symlink(at(out, "file"), at(ns, "lfile")) == 0);
    REQUIRE(symlink(out, at(ns, "ldir")) == 0);
    int e = rpal_region_create("lfile", 4096, 0, 0, &r);
    CHECK(e == -EEXIST || e == -ELOOP);
    CHECK_ERR(rpal_region_attach("lfile", 0, &r), -ELOOP);
    CHECK_ERR(rpal_region_stat("lfile", &info), -ELOOP);
    CHECK_ERR(rpal_region_unlink("lfile"), -ELOOP);
    CHECK_ERR(rpal_region_create("ldir/x", 4096, 0, 0, &r), -ELOOP);
    CHECK_ERR(rpal_region_attach("ldir/file", 0, &r), -ELOOP);
    CHECK_ERR(rpal_region_unlink("ldir/file"), -ELOOP);

    /* A region's lock file replaced by a link: attach fails, unlink
     * removes the link, not what it points at. */
    REQUIRE(rpal_region_create("r", 4096, 0, 0, &r) == 0);
    REQUIRE(rpal_region_detach(r) == 0);
    struct stat rst;
    REQUIRE(stat(at(ns, "r"), &rst) == 0);
    char lk[64];
    snprintf(lk, sizeof lk, ".r.%llu.lock", (unsigned long long)rst.st_ino);
    REQUIRE(unlink(at(ns, lk)) == 0);
    REQUIRE(symlink(at(out, "file"), at(ns, lk)) == 0);
    e = rpal_region_attach("r", 0, &r);
    CHECK(e < 0);
    if (e >= 0)
        rpal_region_detach(r);
    CHECK_ERR(rpal_region_unlink("r"), 0);

    /* The registry as a link: creating a region would truncate it. */
    setenv("RPAL_DIR", ns2, 1);
    REQUIRE(symlink(at(out, "file"), at(ns2, ".rpal-registry")) == 0);
    CHECK_ERR(rpal_region_create("x", 4096, 0, 0, &r), -ELOOP);
    /* .domains as a link to a directory. */
    REQUIRE(symlink(out, at(ns2, ".domains")) == 0);
    rpal_domain *d;
    CHECK_ERR(rpal_domain_join("dx", NULL, &d), -ELOOP);

    /* Domains: a domain directory, its meta, a claim. */
    setenv("RPAL_DIR", ns, 1);
    REQUIRE(rpal_domain_join("dd", NULL, &d) == 0);
    REQUIRE(rpal_domain_leave(d) == 0);
    REQUIRE(symlink(out, at(ns, ".domains/dlink")) == 0);
    CHECK_ERR(rpal_domain_join("dlink", NULL, &d), -ELOOP);
    mkdir_p(at(ns, ".domains/dmeta"), 0700);
    REQUIRE(symlink(at(out, "file"), at(ns, ".domains/dmeta/meta")) == 0);
    CHECK_ERR(rpal_domain_join("dmeta", NULL, &d), -ELOOP);
    REQUIRE(symlink(at(out, "file"), at(ns, ".domains/dd/slot.0")) == 0);
    REQUIRE(rpal_domain_join("dd", NULL, &d) == 0);
    unsigned slot;
    REQUIRE(rpal_domain_slot(d, &slot, NULL, NULL) == 0);
    CHECK(slot == 1); /* slot.0 is not a claim */

    /* Service sockets: one planted as a link to a socket outside. */
    REQUIRE(symlink(at(out, "sock"), at(ns, ".domains/dd/svc.evil")) == 0);
    rpal_service *s;
    rpal_key key = {{0}};
    rpal_peer *p;
    CHECK_ERR(rpal_service_register(d, "evil", 0666, NULL, NULL, &s), -EEXIST);
    CHECK_ERR(rpal_service_request(d, "evil", &key, 200, &p), -ELOOP);
    CHECK(!pending_connection(lsock));
    chmod_race(d, at(out, "file"));
    /* A service we share with, whose socket is then replaced by a link:
     * opening a channel must not connect through it. */
    int kp[2], qp[2];
    REQUIRE(pipe(kp) == 0 && pipe(qp) == 0);
    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        huge_setup_child(&hs);
        t_close_inherited(kp[1], qp[0], -1);
        t_failures = 0;
        _exit(svc_child(kp[1], qp[0]));
    }
    key = t_key_recv(kp[0]);
    REQUIRE(rpal_service_request(d, "svc2", &key, 2000, &p) == 0);
    REQUIRE(unlink(at(ns, ".domains/dd/svc.svc2")) == 0);
    REQUIRE(symlink(at(out, "sock"), at(ns, ".domains/dd/svc.svc2")) == 0);
    rpal_chan *c;
    e = rpal_chan_open(p, NULL, 300, &c);
    CHECK(e < 0);
    if (e == 0)
        rpal_chan_close(c);
    if (pending_connection(lsock)) {
        fprintf(stderr, "rpal_chan_open connected through a symlink\n");
        t_failures++;
    }
    REQUIRE(write(qp[1], "Q", 1) == 1);
    CHECK(t_wait(kid) == 0);
    CHECK_ERR(rpal_domain_leave(d), 0);

    /* gc and ls never walk a symlinked directory: behind these links lie a
     * region of a dead creator and the claim of a dead member. */
    setenv("RPAL_DIR", outns, 1);
    kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        huge_setup_child(&hs);
        rpal_region *tr;
        rpal_domain *dd;
        if (rpal_region_create("t", 4096, 0, RPAL_REGION_TRANSIENT, &tr) < 0 ||
            rpal_domain_join("dx", NULL, &dd) < 0)
            _exit(1);
        _exit(0); /* dead, without cleaning up */
    }
    REQUIRE(t_wait(kid) == 0);
    REQUIRE(access(at(outns, "t"), F_OK) == 0 && access(at(outns, ".domains/dx/slot.0"), F_OK) == 0);
    setenv("RPAL_DIR", ns, 1);
    REQUIRE(symlink(outns, at(ns, "lns")) == 0);
    REQUIRE(symlink(at(outns, ".domains/dx"), at(ns, ".domains/dl")) == 0);
    CHECK(rpal_gc(NULL, NULL) >= 0);
    const char *bin = getenv("RPAL_BIN");
    char cmd[700], buf[4096] = "";
    if (bin && *bin) {
        snprintf(cmd, sizeof cmd, "'%s/rpal' gc >/dev/null 2>&1", bin);
        CHECK(system(cmd) == 0);
        snprintf(cmd, sizeof cmd, "'%s/rpal' ls 2>&1", bin);
        FILE *f = popen(cmd, "r");
        REQUIRE(f);
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        CHECK(pclose(f) == 0);
        if (strstr(buf, "lns") || strstr(buf, "dl ")) {
            fprintf(stderr, "rpal ls walked a link:\n%s", buf);
            t_failures++;
        }
    } else {
        printf("RPAL_BIN not set: `rpal gc` and `rpal ls` not run (the API's gc was)\n");
    }
    CHECK(access(at(outns, "t"), F_OK) == 0);
    CHECK(access(at(outns, ".domains/dx/slot.0"), F_OK) == 0);

    /* The targets are as they were, and nothing was added beside them. */
    CHECK(target_same(&tf, "the file"));
    CHECK(target_same(&ts, "the socket"));
    CHECK(target_same(&td, "the directory"));
    listing(out, out_after, sizeof out_after);
    if (strcmp(out_before, out_after)) {
        fprintf(stderr, "the directory outside changed:\n--- before\n%s--- after\n%s",
                out_before, out_after);
        t_failures++;
    }
    close(lsock);
}

int main(void)
{
    t_init();
    if (geteuid() != 0)
        t_skip("needs root to switch to another uid (65534)");
    char saved[512];
    snprintf(saved, sizeof saved, "%s", rpal_ns_dir());
    snprintf(base, sizeof base, "/dev/shm/rpal-perm-XXXXXX");
    REQUIRE(mkdtemp(base) != NULL);
    atexit(cleanup_base);

    names();
    modes();
    symlinks();
    setenv("RPAL_DIR", saved, 1);
    other_uid();
    return t_done();
}
