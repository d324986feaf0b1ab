/* Peers' reads must not grow a service's memory (issue 16, item 5). Before,
 * a slot's memfd was its full size (64 GiB by default) from the start, and a
 * peer reading untouched pages through its read-only view made the kernel
 * allocate them in the service's file: a peer could exhaust the host's
 * memory just by reading. Now the file grows with the owner's heap (its
 * high-water mark plus less than a 4 MiB step) and peers cannot grow it.
 *
 * A service S (a 64 MiB slot) and a peer P, two processes:
 *
 *  - P calls S (64 KiB replies, read from S's slot); S then allocates 2 MiB
 *    (written) and 8 MiB (calloc, untouched); P calls again: the reply now
 *    lies where S's file did not reach when P mapped it, and must still be
 *    read (the library learns that the file grew);
 *  - P reads every page of S's slot view, raw under a SIGBUS handler of its
 *    own and with rpal_guard_copy: the pages S's file backs read, and they
 *    are a prefix of the slot as long as the file; every page past it is
 *    SIGBUS raw and -EIO guarded; S's file is no longer than its heap's use
 *    plus the slack, and holds no more pages than that after P's reads;
 *  - S hands P the descriptor it gives its peers: ftruncate, fallocate and
 *    F_ADD_SEALS fail on it, and a reopen for writing through /proc/self/fd
 *    is refused to a non-root process (root is tried as uid 65534);
 *  - P sends a request whose data lies in its own slot past the end of its
 *    file: S's library must refuse it (the channel breaks) instead of
 *    handing S a pointer whose read is SIGBUS; S lives on.
 *
 * On the code before, S's file is 64 MiB, P's reads allocate all of it, P
 * can fallocate it, and S dies of SIGBUS at the last step.
 */
#include "testlib.h"
#include "../src/internal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>

#define DOMAIN "tgrow"
#define SLOT (64ull << 20)
#define PAGE 4096ull
#define REPLY (64u << 10)
/* What S's heap reaches (header, 2 + 8 MiB, rings, small runs, reply
 * copies) plus one growth step: the most its file may be. */
#define FILE_MAX (SLOT_HDR_SIZE + (12ull << 20) + SLOT_GROW_STEP)

/* ---- the service ---- */

/* S's descriptor of its slot's file: the read-only one (what peers get)
 * if RDONLY and there is one, else any. */
static int s_slot_fd(int rdonly)
{
    DIR *dir = opendir("/proc/self/fd");
    REQUIRE(dir);
    int found = -1;
    struct dirent *de;
    while ((de = readdir(dir))) {
        char link[300], target[256];
        snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (de->d_name[0] == '.' || n <= 0)
            continue;
        target[n] = 0;
        if (!strstr(target, "memfd:rpal-slot"))
            continue;
        int fd = atoi(de->d_name);
        if (found < 0 || (rdonly && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY))
            found = fd;
    }
    closedir(dir);
    REQUIRE(found >= 0);
    return found;
}

/* A command from P on CMD, answered on ANS; 1 when told to quit. */
static int s_command(int cmd, int ans, int sock)
{
    char line[128];
    struct pollfd pf = {cmd, POLLIN, 0};
    if (poll(&pf, 1, 0) != 1)
        return 0;
    if (t_get_line(cmd, line, sizeof line, 1000) < 0)
        return 1; /* the end of the pipe: P is gone */
    if (!strcmp(line, "GROW")) {
        unsigned char *b = rpal_malloc(2u << 20);
        void *z = rpal_calloc(8u << 20, 1);
        REQUIRE(b && z);
        for (size_t i = 0; i < (2u << 20); i++)
            b[i] = (unsigned char)(i * 7 + 1);
        t_put_line(ans, "GREW %" PRIx64 "\n", (uint64_t)(uintptr_t)b);
    } else if (!strcmp(line, "STAT")) {
        struct stat st;
        REQUIRE(fstat(s_slot_fd(0), &st) == 0);
        t_put_line(ans, "STAT %" PRIu64 " %" PRIu64 "\n", (uint64_t)st.st_size,
                   (uint64_t)st.st_blocks * 512);
    } else if (!strcmp(line, "FD")) {
        t_send_fd(sock, s_slot_fd(1));
        t_put_line(ans, "SENT\n");
    } else if (!strcmp(line, "PING")) {
        t_put_line(ans, "ALIVE\n");
    } else if (!strcmp(line, "QUIT")) {
        return 1;
    }
    return 0;
}

static int service(int cmd, int ans, int sock)
{
    struct rpal_domain_opts o = {.slot_size = SLOT};
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, &o, &d) == 0);
    rpal_service *s;
    REQUIRE(rpal_service_register(d, "svc", 0600, NULL, NULL, &s) == 0);
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(s, NULL, &r) == 0);
    rpal_key key;
    char text[33];
    REQUIRE(rpal_service_key(s, &key) == 0 && rpal_key_format(&key, text) == 0);
    t_put_line(ans, "KEY %s\n", text);
    static unsigned char out[REPLY];
    for (;;) {
        struct rpal_msg m;
        struct rpal_event ev;
        int n = rpal_serve(r, &m, &ev, 20);
        if (n == RPAL_SERVE_MSG) {
            /* Reading the request: SIGBUS here if the library handed us a
             * pointer past the end of the caller's file. */
            unsigned char first = m.len ? ((const unsigned char *)m.data)[m.len - 1] : 0;
            memset(out, first ^ 0x5A, sizeof out);
            int err = rpal_reply(r, &m, out, sizeof out);
            CHECK(err == 0 || err == -ESHUTDOWN);
        } else {
            CHECK(n == RPAL_SERVE_EVENT || n == -ETIMEDOUT || n == -EINTR);
        }
        if (s_command(cmd, ans, sock))
            break;
    }
    rpal_receiver_destroy(r);
    rpal_domain_leave(d);
    return t_done();
}

/* ---- the peer ---- */

static void stat_of(int cmd, int ans, uint64_t *size, uint64_t *bytes)
{
    char line[128];
    t_put_line(cmd, "STAT\n");
    REQUIRE(t_get_line(ans, line, sizeof line, 10000) == 0);
    REQUIRE(sscanf(line, "STAT %" SCNu64 " %" SCNu64, size, bytes) == 2);
}

static int call_ok(rpal_chan *c, unsigned char tag)
{
    static unsigned char rep[REPLY];
    unsigned char req[100];
    memset(req, tag, sizeof req);
    size_t len = 0;
    int err = rpal_call(c, req, sizeof req, rep, sizeof rep, &len, 5000);
    if (err < 0) {
        fprintf(stderr, "call: %s\n", rpal_strerror(err));
        return 0;
    }
    size_t bad = 0;
    for (size_t i = 0; i < len; i++)
        bad += rep[i] != (tag ^ 0x5A);
    return len == REPLY && bad == 0;
}

/* Every page of [BASE, BASE+SIZE), read raw under our own handler and
 * with rpal_guard_copy: *RAW and *GUARDED pages read, *PREFIX the first
 * page that did not (raw), *EIO guarded reads that said -EIO, *OTHER
 * anything else (a page that read after one that did not, a raw SIGSEGV). */
struct sweep {
    uint64_t raw, guarded, prefix, eio, other;
};

static struct sweep sweep(uint64_t base, uint64_t size)
{
    struct sweep w = {0};
    w.prefix = UINT64_MAX;
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer's runtime delivers SIGBUS itself: neither our handler
     * nor rpal_guard's can recover from one (region_guard skips there). The
     * kernel reads each page instead, as the library does past a peer's
     * cached length: it faults the page in just as a load does (a page
     * the file backs is allocated by it) and says EFAULT past the end. */
    for (uint64_t off = 0; off < size; off += PAGE) {
        static unsigned char buf[PAGE];
        struct iovec to = {buf, PAGE}, from = {(void *)(uintptr_t)(base + off), PAGE};
        ssize_t n = process_vm_readv(getpid(), &to, 1, &from, 1, 0);
        if (n == PAGE && w.prefix == UINT64_MAX)
            w.raw++, w.guarded++;
        else if (n < 0 && errno == EFAULT) {
            if (w.prefix == UINT64_MAX)
                w.prefix = off;
            w.eio++;
        } else
            w.other++;
    }
    return w;
#endif
    t_catch_faults();
    for (uint64_t off = 0; off < size; off += PAGE) {
        uint64_t v, where;
        int code, sig = t_try_read(base + off, &v, &code, &where);
        if (sig == 0 && w.prefix == UINT64_MAX)
            w.raw++;
        else if (sig == SIGBUS && w.prefix == UINT64_MAX)
            w.prefix = off;
        else if (sig != SIGBUS)
            w.other++;
    }
    /* Back to the default, under which rpal_guard installs its own. */
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    static unsigned char buf[PAGE];
    for (uint64_t off = 0; off < size; off += PAGE) {
        int err = rpal_guard_copy(buf, (const void *)(uintptr_t)(base + off), PAGE);
        if (err == 0)
            w.guarded++;
        else if (err == -EIO && off >= w.prefix)
            w.eio++;
        else
            w.other++;
    }
    return w;
}

/* The descriptor S gives its peers cannot make S's file grow. */
static void attack_fd(int fd, uint64_t size0)
{
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size == size0);
    CHECK(ftruncate(fd, (off_t)SLOT) < 0);
    CHECK(ftruncate(fd, (off_t)(size0 + SLOT_GROW_STEP)) < 0);
    CHECK(fallocate(fd, 0, 0, (off_t)(16u << 20)) < 0);
    CHECK(fallocate(fd, 0, (off_t)size0, (off_t)(16u << 20)) < 0);
    CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW) < 0);
    CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) < 0);
    void *w = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(w == MAP_FAILED);
    /* Reopened for writing: the kernel checks the file's mode (0400),
     * which only root overrides; root tries it as uid 65534. */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (getuid() != 0) {
        int rw = open(path, O_RDWR | O_CLOEXEC);
        CHECK(rw < 0 && errno == EACCES);
        if (rw >= 0)
            close(rw);
    } else {
        pid_t c = fork();
        REQUIRE(c >= 0);
        if (c == 0) {
            if (setgid(65534) < 0 || setuid(65534) < 0)
                _exit(3);
            int rw = open(path, O_RDWR | O_CLOEXEC);
            int bad = rw >= 0 || errno != EACCES || fchmod(fd, 0600) == 0 ||
                      ftruncate(fd, (off_t)SLOT) == 0;
            _exit(bad ? 1 : 0);
        }
        int st2 = t_wait(c);
        if (st2 == 3)
            printf("setuid(65534) failed: the other-user reopen was not tried\n");
        else
            CHECK(st2 == 0);
    }
    CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size == size0);
}

/* A request whose data lies in our own slot past the end of our file:
 * sent in place, never read by our side; the service must refuse it. */
static void hostile_request(rpal_domain *d, rpal_chan *c, int cmd, int ans)
{
    void *mybase;
    uint64_t mysize;
    REQUIRE(rpal_domain_slot(d, NULL, &mybase, &mysize) == 0);
    const void *past = (const char *)mybase + mysize - 2 * PAGE;
    CHECK_ERR(rpal_send(c, past, PAGE, 7), 0);
    static unsigned char rep[REPLY];
    size_t len;
    uint64_t tag;
    int err = rpal_complete(c, &tag, rep, sizeof rep, &len, 3000);
    printf("a request past the end of our file: %s\n", rpal_strerror(err));
    CHECK(err < 0);
    char line[64];
    t_put_line(cmd, "PING\n");
    CHECK(t_get_line(ans, line, sizeof line, 10000) == 0 && !strcmp(line, "ALIVE"));
}

static int peer(int cmd, int ans, int sock)
{
    char line[128], text[33];
    REQUIRE(t_get_line(ans, line, sizeof line, 10000) == 0);
    REQUIRE(sscanf(line, "KEY %32s", text) == 1);
    rpal_key key;
    REQUIRE(rpal_key_parse(text, &key) == 0);
    struct rpal_domain_opts o = {.slot_size = SLOT};
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, &o, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "svc", &key, 5000, &p) == 0);
    rpal_chan *c;
    REQUIRE(rpal_chan_open(p, NULL, 5000, &c) == 0);
    CHECK(call_ok(c, 1));

    /* S's heap grows past what its file was when we mapped it. */
    uint64_t blk;
    t_put_line(cmd, "GROW\n");
    REQUIRE(t_get_line(ans, line, sizeof line, 10000) == 0);
    REQUIRE(sscanf(line, "GREW %" SCNx64, &blk) == 1);
    CHECK(call_ok(c, 2));
    uint64_t base = (uint64_t)(uintptr_t)rpal_peer_base(p);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    size_t bad = 0;
    for (size_t i = 0; i < (2u << 20); i++)
        bad += ((const unsigned char *)(uintptr_t)blk)[i] != (unsigned char)(i * 7 + 1);
    CHECK(bad == 0);

    uint64_t size0, bytes0, size1, bytes1;
    stat_of(cmd, ans, &size0, &bytes0);
    struct sweep w = sweep(base, SLOT);
    CHECK_ERR(rpal_peer_access_end(p), 0);
    stat_of(cmd, ans, &size1, &bytes1);
    printf("service's file: %" PRIu64 " KiB, %" PRIu64 " KiB allocated before our reads, "
           "%" PRIu64 " KiB after (at most %llu KiB)\n",
           size0 >> 10, bytes0 >> 10, bytes1 >> 10, FILE_MAX >> 10);
    printf("pages: %" PRIu64 " read raw, %" PRIu64 " guarded, first SIGBUS at %" PRIu64
           " KiB, %" PRIu64 " -EIO, %" PRIu64 " other\n",
           w.raw, w.guarded, w.prefix == UINT64_MAX ? 0 : w.prefix >> 10, w.eio, w.other);
    CHECK(size0 <= FILE_MAX && size0 >= SLOT_HDR_SIZE + (10ull << 20));
    CHECK(size1 == size0);
    CHECK(bytes1 <= size0);
    CHECK(w.raw * PAGE == size0 && w.guarded * PAGE == size0 && w.prefix == size0);
    CHECK(w.eio == SLOT / PAGE - w.raw && w.other == 0);

    t_put_line(cmd, "FD\n");
    int fd = t_recv_fd(sock);
    REQUIRE(t_get_line(ans, line, sizeof line, 10000) == 0 && !strcmp(line, "SENT"));
    attack_fd(fd, size0);
    close(fd);
    stat_of(cmd, ans, &size1, &bytes1);
    CHECK(size1 == size0 && bytes1 <= size0);

    hostile_request(d, c, cmd, ans);
    rpal_chan_close(c);
    rpal_peer_release(p);
    rpal_domain_leave(d);
    t_put_line(cmd, "QUIT\n");
    return t_done();
}

/* FN(A, B, SOCK) in a child process, which closes the pipe ends C and D
 * that belong to the other side. */
static pid_t spawn(int (*fn)(int, int, int), int a, int b, int sock, int c, int d)
{
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(c);
        close(d);
        _exit(fn(a, b, sock));
    }
    return pid;
}

int main(void)
{
    t_init();
    int cmd[2], ans[2], sv[2];
    REQUIRE(pipe(cmd) == 0 && pipe(ans) == 0);
    REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) == 0);
    pid_t s = spawn(service, cmd[0], ans[1], sv[0], cmd[1], ans[0]);
    pid_t pp = spawn(peer, cmd[1], ans[0], sv[1], cmd[0], ans[1]);
    close(cmd[0]);
    close(cmd[1]);
    close(ans[0]);
    close(ans[1]);
    int ps = t_wait(pp), ss = t_wait(s);
    if (ps != 0)
        fprintf(stderr, "the peer ended with %d\n", ps);
    if (ss != 0)
        fprintf(stderr, "the service ended with %d (%d: SIGBUS)\n", ss, 128 + SIGBUS);
    CHECK(ps == 0);
    CHECK(ss == 0);
    return t_done();
}
