/* The pod shape (docs/containers.md): an application and its sidecar in two
 * containers, each with its own pid and mount namespace (and, in one
 * variant, user namespace), sharing only a tmpfs volume that each mounts at
 * its own path. Neither can see the other's pid (SO_PEERCRED gives 0).
 *
 * - echo: rpal_uds_fdmap must return 1 on both ends (the rings are used:
 *   the connection's counters carry every message), rpal_domain_foreach
 *   shows the other member as being in another pid namespace;
 * - the same with the client in a user namespace (root mapped to root), and
 *   in a rootless one (uid 65534): refused (-EACCES) until root opens the
 *   domain to other users, then upgraded;
 * - consent and calls: a service in one container, a caller in the other;
 *   the caller SIGKILLs itself: the service gets RPAL_EV_PEER_GONE within
 *   100 ms; then a caller blocked in a call whose service is killed gets its
 *   error within 100 ms;
 * - an echo server killed mid-stream: the client's read fails in time;
 * - rpal_gc from a third container removes the dead members' claims and the
 *   dead service's socket, and leaves a live member's claim alone, and a
 *   transient region whose creator lives in another pid namespace;
 * - a volume too small: join says -ENOSPC, never a SIGBUS later.
 * Needs root (CI runs as root); otherwise a skip. */
#include "testlib.h"
#include "prim.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/un.h>

static char vol[256];   /* the volume as the test sees it */
static char rpal_dir_host[300];

/* The bound on seeing a death: 100 ms, as for peers side by side
 * (tests/domain_death.c); ten times that under an emulator. */
static uint64_t death_bound_ns(void)
{
    return getenv("RPAL_EMULATED") ? 1000000000ull : 100000000ull;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t); /* one clock in every pid namespace */
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, s, strlen(s));
    close(fd);
    return n == (ssize_t)strlen(s) ? 0 : -EIO;
}

enum { C_ROOT = 0, C_USERNS = 1, C_ROOTLESS = 2 };

/* In the container's first process, before its pid 1 exists: its own user
 * namespace for the variants (root mapped to root, or uid 65534 as a
 * rootless container), then pid and mount namespaces. */
static int enter_namespaces(int kind)
{
    if (kind == C_ROOTLESS && (setresgid(65534, 65534, 65534) < 0 ||
                               setresuid(65534, 65534, 65534) < 0))
        return -errno;
    /* A changed uid makes us undumpable: /proc/self would be root's, and
     * the maps could not be written. */
    if (kind == C_ROOTLESS)
        prctl(PR_SET_DUMPABLE, 1);
    if (kind != C_ROOT) {
        if (unshare(CLONE_NEWUSER) < 0)
            return -errno;
        const char *id = kind == C_ROOTLESS ? "0 65534 1\n" : "0 0 1\n";
        if (write_file("/proc/self/setgroups", "deny") < 0 ||
            write_file("/proc/self/uid_map", id) < 0 || write_file("/proc/self/gid_map", id) < 0)
            return -EPERM;
    }
    return unshare(CLONE_NEWPID | CLONE_NEWNS) < 0 ? -errno : 0;
}

/* In the container's pid 1: /proc of its own pid namespace, and the volume
 * at a path of its own (NAME beside the test's mount), the test's mount of it hidden. */
static int container_mounts(const char *name, char *dir, size_t len)
{
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        return -errno;
    snprintf(dir, len, "%s.%s", vol, name);
    if (mount(vol, dir, NULL, MS_BIND, NULL) < 0)
        return -errno;
    umount2(vol, MNT_DETACH);
    return 0;
}

/* Run FN(ARG, VOLUME_PATH) in a new container of KIND (as pid 2, its pid 1
 * waiting for it); returns the
 * pid (in our namespace) of its first process, which exits with FN's
 * status. */
static pid_t container(const char *name, int kind, int (*fn)(void *, const char *), void *arg)
{
    pid_t p = fork();
    if (p != 0)
        return p;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int err = enter_namespaces(kind);
    if (err < 0) {
        fprintf(stderr, "%s: namespaces: %s\n", name, strerror(-err));
        _exit(2);
    }
    pid_t init = fork();
    if (init == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        char dir[300], rd[320];
        if ((err = container_mounts(name, dir, sizeof dir)) < 0) {
            fprintf(stderr, "%s: mounts: %s\n", name, strerror(-err));
            _exit(2);
        }
        snprintf(rd, sizeof rd, "%s/rpal", dir);
        setenv("RPAL_DIR", rd, 1);
        if (getpid() != 1)
            _exit(3);
        /* The program runs as pid 2: the kernel ignores a pid 1's SIGKILL
         * of itself, and the test's deaths are suicides. */
        pid_t app = fork();
        if (app == 0)
            _exit(fn(arg, dir));
        _exit(t_wait(app));
    }
    _exit(t_wait(init));
}

/* Can a child make the namespaces of KIND (as enter_namespaces)? */
/* 1 if a child can enter the namespaces of KIND; else 0, and why in
 * *WHY (an errno, where the child could say). */
static int can_enter_why(int kind, int *why)
{
    pid_t p = fork();
    if (p == 0) {
        int err = enter_namespaces(kind);
        _exit(err < 0 && -err < 126 ? -err : err < 0);
    }
    int rc = p > 0 ? t_wait(p) : -1;
    if (why)
        *why = rc > 0 ? rc : 0;
    return rc == 0;
}

static int can_enter(int kind)
{
    return can_enter_why(kind, NULL);
}

static int have_pidns(void)
{
    return can_enter(C_ROOT);
}

static int userns_why; /* why no user namespace could be made (an errno) */

static int have_userns(void)
{
    return can_enter_why(C_USERNS, &userns_why) && can_enter_why(C_ROOTLESS, &userns_why);
}

/* ---- the echo pair over an upgraded connection ---- */

#define ECHO_N 20000

struct echo_arg {
    const char *sock;    /* the socket's name in the volume */
    int ready[2];        /* the server says it listens */
    int stamp[2];        /* a killed side's last words: when it died */
    int kill_at;         /* server: SIGKILL itself after this many (0: never) */
    int expect_join;     /* the client's join must return this */
};

static int other_pidns_members(const struct rpal_member_info *m, void *arg)
{
    if (m->other_pidns)
        ++*(int *)arg;
    return 0;
}

static int echo_server(void *p, const char *dir)
{
    struct echo_arg *a = p;
    rpal_domain *d;
    int err = rpal_domain_join("pod", NULL, &d);
    if (err < 0) {
        fprintf(stderr, "server: join: %s\n", rpal_strerror(err));
        return 1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, a->sock);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(sa.sun_path);
    if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1) < 0 ||
        chmod(sa.sun_path, 0666) < 0)
        return 1;
    if (write(a->ready[1], "r", 1) != 1)
        return 1;
    struct timeval tv = {10, 0}; /* accept() gives up: a client that never came */
    setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    int up = c < 0 ? -1 : rpal_uds_fdmap(d, c, 5000);
    if (up != 1) {
        fprintf(stderr, "server: rpal_uds_fdmap returned %d (%s)\n", up, rpal_strerror(up));
        return 1;
    }
    char buf[32];
    for (int i = 0;; i++) {
        if (a->kill_at && i == a->kill_at) {
            uint64_t t = now_ns();
            (void)!write(a->stamp[1], &t, sizeof t);
            raise(SIGKILL);
        }
        size_t have = 0;
        while (have < sizeof buf) {
            ssize_t r = rpal_read(c, buf + have, sizeof buf - have);
            if (r == 0 || (r < 0 && r != -EINTR && r != -EAGAIN))
                goto end;
            have += r > 0 ? (size_t)r : 0;
        }
        if (rpal_write(c, buf, sizeof buf) != (ssize_t)sizeof buf)
            return 1;
    }
end:;
    struct rpal_stats st;
    CHECK(rpal_fd_stats(c, &st) == 0 && st.msgs_in >= ECHO_N && st.msgs_out >= ECHO_N);
    rpal_close(c);
    rpal_domain_leave(d);
    return t_done();
}

static int echo_client(void *p, const char *dir)
{
    struct echo_arg *a = p;
    rpal_domain *d;
    int err = rpal_domain_join("pod", NULL, &d);
    if (err != a->expect_join) {
        fprintf(stderr, "client: join: %s, want %s\n", rpal_strerror(err),
                rpal_strerror(a->expect_join));
        return 1;
    }
    if (err < 0)
        return 0; /* refused as it must be */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, a->sock);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(c >= 0 && connect(c, (struct sockaddr *)&sa, sizeof sa) == 0);
    struct ucred cr;
    socklen_t cl = sizeof cr;
    REQUIRE(getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0);
    CHECK(cr.pid == 0); /* the shape is right: the server is not visible here */
    int up = rpal_uds_fdmap(d, c, 5000);
    if (up != 1) {
        fprintf(stderr, "client: rpal_uds_fdmap returned %d (%s)\n", up, rpal_strerror(up));
        return 1;
    }
    int others = 0;
    CHECK(rpal_domain_foreach(other_pidns_members, &others) == 0 && others == 1);
    char buf[32], back[32];
    int n = a->kill_at ? ECHO_N * 10 : ECHO_N;
    for (int i = 0; i < n; i++) {
        memset(buf, i & 0xff, sizeof buf);
        ssize_t w = rpal_write(c, buf, sizeof buf);
        size_t have = 0;
        while (w == (ssize_t)sizeof buf && have < sizeof back) {
            ssize_t r = rpal_read(c, back + have, sizeof back - have);
            if (r == -EINTR || r == -EAGAIN)
                continue;
            if (r <= 0) {
                w = r;
                break;
            }
            have += (size_t)r;
        }
        if (w != (ssize_t)sizeof buf && a->kill_at) {
            /* The server was killed: we must know within the bound. */
            uint64_t t, late = now_ns();
            CHECK(read(a->stamp[0], &t, sizeof t) == (ssize_t)sizeof t);
            printf("echo: server killed after %d messages; the client's %s came %.1f ms later\n",
                   i, w == 0 ? "end of file" : rpal_strerror((int)w), (late - t) / 1e6);
            CHECK(late - t < death_bound_ns());
            break;
        }
        CHECK(w == (ssize_t)sizeof buf && !memcmp(buf, back, sizeof buf));
        if (t_failures)
            break;
    }
    struct rpal_stats st;
    CHECK(rpal_fd_stats(c, &st) == 0 && st.msgs_out >= (a->kill_at ? (uint64_t)a->kill_at : ECHO_N));
    rpal_close(c);
    rpal_domain_leave(d);
    return t_done();
}

/* Open the namespace, .domains and the domain "pod" to every user, as
 * docs/hardening.md says root may (the sticky bit on each). */
static void open_domain_to_all(void)
{
    char p[400];
    snprintf(p, sizeof p, "%s", rpal_dir_host);
    CHECK(chmod(p, 01777) == 0);
    snprintf(p, sizeof p, "%s/.domains", rpal_dir_host);
    CHECK(chmod(p, 01777) == 0);
    snprintf(p, sizeof p, "%s/.domains/pod", rpal_dir_host);
    CHECK(chmod(p, 01777) == 0);
}

static void echo_pair(const char *what, int client_kind, int kill_at, int expect_join)
{
    struct echo_arg a = {.sock = "echo.sock", .kill_at = kill_at, .expect_join = expect_join};
    REQUIRE(pipe(a.ready) == 0 && pipe(a.stamp) == 0);
    pid_t s = container("app", C_ROOT, echo_server, &a);
    char r;
    REQUIRE(read(a.ready[0], &r, 1) == 1);
    if (client_kind == C_ROOTLESS && expect_join == 0)
        open_domain_to_all();
    uint64_t t0 = now_ns();
    pid_t c = container("sidecar", client_kind, echo_client, &a);
    int cs = t_wait(c);
    if (expect_join < 0) {
        kill(s, SIGKILL); /* never connected: not waited for */
    }
    int ss = t_wait(s);
    printf("%s: client %d, server %d, %.0f ms\n", what, cs, ss, (now_ns() - t0) / 1e6);
    CHECK(cs == 0);
    CHECK(expect_join < 0 || ss == (kill_at ? 128 + SIGKILL : 0));
    close(a.ready[0]);
    close(a.ready[1]);
    close(a.stamp[0]);
    close(a.stamp[1]);
}

/* ---- consent, calls, deaths ---- */

#define CALLS 2000

struct svc_arg {
    int key[2];      /* the service hands its key to the caller (a pipe) */
    int stamp[2];    /* a killed side's last words */
    int victim;      /* 0: the caller kills itself, 1: the service does */
};

static int service(void *p, const char *dir)
{
    (void)dir;
    struct svc_arg *a = p;
    rpal_domain *d;
    rpal_service *s;
    rpal_receiver *r;
    rpal_key key;
    int err;
    if ((err = rpal_domain_join("pod", NULL, &d)) < 0 ||
        (err = rpal_service_register(d, "sidecar", 0600, NULL, NULL, &s)) < 0 ||
        (err = rpal_receiver_create(s, NULL, &r)) < 0) {
        fprintf(stderr, "service: %s\n", rpal_strerror(err));
        return 1;
    }
    rpal_service_key(s, &key);
    REQUIRE(write(a->key[1], &key, sizeof key) == (ssize_t)sizeof key);
    int served = 0, accepted = 0;
    for (;;) {
        struct rpal_msg m;
        struct rpal_event ev;
        int n = rpal_serve(r, &m, &ev, 10000);
        if (n == RPAL_SERVE_MSG) {
            if (a->victim == 1 && served == CALLS / 2) {
                uint64_t t = now_ns();
                (void)!write(a->stamp[1], &t, sizeof t);
                raise(SIGKILL); /* with a call in flight */
            }
            rpal_reply(r, &m, m.data, m.len);
            served++;
        } else if (n == RPAL_SERVE_EVENT && ev.type == RPAL_EV_PEER_ACCEPTED) {
            accepted++;
            struct rpal_peer_info info;
            CHECK(rpal_peer_info(ev.peer, &info) == 0 && info.pid == 0); /* not visible here */
        } else if (n == RPAL_SERVE_EVENT && ev.type == RPAL_EV_PEER_GONE) {
            uint64_t t, late = now_ns();
            CHECK(read(a->stamp[0], &t, sizeof t) == (ssize_t)sizeof t);
            printf("consent: caller killed after %d calls; PEER_GONE (%s) %.1f ms later\n",
                   served, rpal_strerror(ev.reason), (late - t) / 1e6);
            CHECK(ev.reason == -ESRCH);
            CHECK(late - t < death_bound_ns());
            rpal_peer_release(ev.peer);
            break;
        } else if (n != RPAL_SERVE_EVENT) {
            fprintf(stderr, "service: rpal_serve: %s\n", rpal_strerror(n));
            return 1;
        }
    }
    CHECK(accepted == 1 && served >= CALLS);
    rpal_receiver_destroy(r);
    rpal_service_unregister(s);
    rpal_domain_leave(d);
    return t_done();
}

static int caller(void *p, const char *dir)
{
    (void)dir;
    struct svc_arg *a = p;
    rpal_domain *d;
    rpal_peer *peer;
    rpal_chan *c;
    rpal_key key;
    int err;
    REQUIRE(read(a->key[0], &key, sizeof key) == (ssize_t)sizeof key);
    if ((err = rpal_domain_join("pod", NULL, &d)) < 0 ||
        (err = rpal_service_request(d, "sidecar", &key, 5000, &peer)) < 0 ||
        (err = rpal_chan_open(peer, NULL, 5000, &c)) < 0) {
        fprintf(stderr, "caller: %s\n", rpal_strerror(err));
        return 1;
    }
    for (int i = 0; i < CALLS * 2; i++) {
        char reply[64];
        size_t n = 0;
        uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ull;
        err = rpal_call(c, &x, sizeof x, reply, sizeof reply, &n, 5000);
        if (err < 0 && a->victim == 1) {
            uint64_t t, late = now_ns();
            CHECK(read(a->stamp[0], &t, sizeof t) == (ssize_t)sizeof t);
            printf("consent: service killed during call %d; rpal_call said %s %.1f ms later\n",
                   i, rpal_strerror(err), (late - t) / 1e6);
            CHECK(late - t < death_bound_ns());
            break;
        }
        CHECK(err == 0 && n == sizeof x && !memcmp(reply, &x, sizeof x));
        if (t_failures)
            return t_done();
    }
    struct rpal_stats st;
    CHECK(rpal_chan_stats(c, &st) == 0 && st.msgs_out >= CALLS / 2);
    if (a->victim == 0) {
        uint64_t t = now_ns();
        (void)!write(a->stamp[1], &t, sizeof t);
        raise(SIGKILL);
    }
    rpal_chan_close(c);
    rpal_peer_release(peer);
    rpal_domain_leave(d);
    return t_done();
}

static void consent_pair(int victim)
{
    struct svc_arg a = {.victim = victim};
    REQUIRE(pipe(a.key) == 0 && pipe(a.stamp) == 0);
    pid_t s = container("app", C_ROOT, service, &a);
    pid_t c = container("sidecar", C_ROOT, caller, &a);
    int cs = t_wait(c);
    if (victim == 1)
        t_wait(s);
    else
        CHECK(t_wait(s) == 0);
    CHECK(cs == (victim == 0 ? 128 + SIGKILL : 0));
    close(a.key[0]);
    close(a.key[1]);
    close(a.stamp[0]);
    close(a.stamp[1]);
}

/* ---- rpal gc from a third container ---- */

struct gc_arg {
    int ready[2], done[2];
};

static int live_member(void *p, const char *dir)
{
    (void)dir;
    struct gc_arg *a = p;
    rpal_domain *d;
    REQUIRE(rpal_domain_join("pod", NULL, &d) == 0);
    /* A transient region that its creator (alive) no longer maps: rpal_gc
     * removes such a region only once the creator is gone, which a gc in
     * another pid namespace cannot judge. */
    rpal_region *r;
    REQUIRE(rpal_region_create("pod-scratch", 1 << 20, 0600, RPAL_REGION_TRANSIENT, &r) == 0);
    REQUIRE(rpal_region_detach(r) == 0);
    REQUIRE(write(a->ready[1], "r", 1) == 1);
    char c;
    REQUIRE(read(a->done[0], &c, 1) == 1);
    rpal_domain_leave(d);
    return 0;
}

static int die_member(void *p, const char *dir)
{
    (void)p;
    (void)dir;
    rpal_domain *d;
    REQUIRE(rpal_domain_join("pod", NULL, &d) == 0);
    raise(SIGKILL); /* its claim stays, unlocked */
    return 1;
}

static void gc_count(const char *kind, const char *name, void *arg)
{
    int *n = arg;
    if (!strcmp(kind, "member"))
        n[0]++;
    else if (!strcmp(kind, "service"))
        n[1]++;
    printf("gc: removed %s %s\n", kind, name);
}

static int count_members(const struct rpal_member_info *m, void *arg)
{
    int *n = arg;
    n[0]++;
    n[1] += m->other_pidns;
    return 0;
}

static int gc_third(void *p, const char *dir)
{
    (void)p;
    (void)dir;
    int removed[2] = {0, 0}, members[2] = {0, 0};
    CHECK(rpal_gc(gc_count, removed) >= 0);
    /* A dead member's claim (the second joiner reused the first's), and
     * the killed service's socket; the live member's claim stays. */
    CHECK(removed[0] >= 1 && removed[1] >= 1);
    CHECK(rpal_domain_foreach(count_members, members) == 0);
    printf("gc: %d member(s), service(s) %d removed; %d live member(s), %d in another pid ns\n",
           removed[0], removed[1], members[0], members[1]);
    CHECK(members[0] == 1 && members[1] == 1);
    struct rpal_region_info info;
    CHECK(rpal_region_stat("pod-scratch", &info) == 0 && info.creator_alive == 2);
    return t_done();
}

/* ---- a volume too small ---- */

static int join_full(void *p, const char *dir)
{
    (void)p;
    char fill[320];
    snprintf(fill, sizeof fill, "%s/fill", dir);
    int fd = open(fill, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char page[4096] = {1};
    while (fd >= 0 && write(fd, page, sizeof page) == (ssize_t)sizeof page)
        ;
    rpal_domain *d;
    int err = rpal_domain_join("full", NULL, &d);
    printf("full volume: join says %s\n", rpal_strerror(err));
    CHECK(err == -ENOSPC);
    rpal_region *r;
    err = rpal_region_create("big", 1 << 20, 0600, 0, &r);
    printf("full volume: region create says %s\n", rpal_strerror(err));
    CHECK(err == -ENOSPC);
    unlink(fill);
    return t_done();
}

/* Across pid namespaces a member is known by its pidfs inode (Linux 6.9)
 * and the pidfd the kernel gives for a socket's other end (SO_PEERPIDFD,
 * 6.5) or with a message (SCM_PIDFD, 6.5); without them rpal falls back to
 * pids, which mean nothing across namespaces (docs/containers.md). A skip
 * with the reason where the kernel, or an emulator (qemu-user passes no
 * SCM_PIDFD), cannot. */
static void cross_pidns_probe(void)
{
    int sp[2], one = 1, got = -1;
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    int pfd = rpal__prim_sock_pidfd(sp[0]);
    if (pfd >= 0 && setsockopt(sp[1], SOL_SOCKET, 76 /* SO_PASSPIDFD */, &one, sizeof one) == 0 &&
        write(sp[0], "x", 1) == 1) {
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int)) * 2];
        } u;
        char c;
        struct iovec iov = {&c, 1};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                           .msg_controllen = sizeof u.b};
        if (recvmsg(sp[1], &m, MSG_CMSG_CLOEXEC) == 1)
            for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h))
                if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == 0x04 /* SCM_PIDFD */)
                    memcpy(&got, CMSG_DATA(h), sizeof got);
    }
    uint64_t self = rpal__prim_self_ino();
    int same = got >= 0 && self && rpal__prim_pidfd_ino(got) == self;
    close(sp[0]);
    close(sp[1]);
    if (got >= 0)
        close(got);
    if (pfd >= 0)
        close(pfd);
    if (pfd < 0 || !self || !same)
        t_skip("this kernel (or emulator) cannot name a process across pid namespaces: %s "
               "(docs/containers.md: share the pid namespace there)",
               pfd < 0 ? "no SO_PEERPIDFD (Linux 6.5)"
               : !self ? "no pidfs inodes (Linux 6.9)"
                       : "no SCM_PIDFD with a message (Linux 6.5; qemu-user passes none)");
}

int main(int argc, char **argv)
{
    t_init();
    /* tests/container_unshare.sh asks first. */
    if (argc > 1 && !strcmp(argv[1], "--probe")) {
        cross_pidns_probe();
        return 0;
    }
    if (geteuid() != 0)
        t_skip("needs root to make pid, mount and user namespaces (CI runs as root)");
    /* Our own mount namespace, so that nothing mounted here outlives us. */
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        t_skip("no mount namespace: %s", strerror(errno));
    if (!have_pidns())
        t_skip("no pid namespaces in this kernel (CONFIG_PID_NS)");
    cross_pidns_probe();
    snprintf(vol, sizeof vol, "/tmp/rpal-pod-XXXXXX");
    if (!mkdtemp(vol))
        t_skip("no /tmp to make the volume in: %s", strerror(errno));
    char path[300];
    const char *sides[] = {"app", "sidecar", "gc"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s.%s", vol, sides[i]);
        REQUIRE(mkdir(path, 0755) == 0);
    }
    /* The emptyDir: a tmpfs of limited size, every container's mount of it. */
    REQUIRE(mount("tmpfs", vol, "tmpfs", 0, "size=64m,mode=1777") == 0);
    snprintf(rpal_dir_host, sizeof rpal_dir_host, "%s/rpal", vol);

    echo_pair("echo, pid + mount namespaces", C_ROOT, 0, 0);
    int userns = have_userns();
    if (userns) {
        echo_pair("echo, the sidecar in a user namespace too", C_USERNS, 0, 0);
        echo_pair("echo, a rootless sidecar, domain not opened", C_ROOTLESS, 0, -EACCES);
        echo_pair("echo, a rootless sidecar, domain opened", C_ROOTLESS, 0, 0);
    }
    echo_pair("echo, server killed", C_ROOT, ECHO_N / 2, 0);
    consent_pair(0);
    consent_pair(1); /* last: its dead service's socket is left for gc */

    struct gc_arg g;
    REQUIRE(pipe(g.ready) == 0 && pipe(g.done) == 0);
    pid_t live = container("app", C_ROOT, live_member, &g);
    char c;
    REQUIRE(read(g.ready[0], &c, 1) == 1);
    for (int i = 0; i < 2; i++)
        CHECK(t_wait(container("app", C_ROOT, die_member, NULL)) == 128 + SIGKILL);
    CHECK(t_wait(container("gc", C_ROOT, gc_third, NULL)) == 0);
    REQUIRE(write(g.done[1], "d", 1) == 1);
    CHECK(t_wait(live) == 0);

    /* A volume of 2 MiB, full. */
    REQUIRE(umount2(vol, MNT_DETACH) == 0 && mount("tmpfs", vol, "tmpfs", 0, "size=2m,mode=1777") == 0);
    CHECK(t_wait(container("app", C_ROOT, join_full, NULL)) == 0);

    umount2(vol, MNT_DETACH);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s.%s", vol, sides[i]);
        rmdir(path);
    }
    rmdir(vol);
    if (!t_failures && !userns)
        t_skip("the rest passed; no user namespace could be made here (%s: the kernel without "
               "CONFIG_USER_NS, user.max_user_namespaces 0, or, EINVAL, a process with threads: "
               "ThreadSanitizer's)",
               userns_why ? strerror(userns_why) : "unknown");
    return t_done();
}
