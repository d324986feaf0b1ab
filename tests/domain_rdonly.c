/* After consent each side sees the other's slot read-only, and the kernel,
 * not good manners, keeps it so (principle 2). A service and a client (two
 * processes, the client forked before either joins, so that it inherits
 * nothing) share; then each attacks the other's slot every way we know:
 *
 *  - a plain write faults (SIGSEGV, SEGV_ACCERR at the written address; the
 *    fault is caught in the process itself, since a forked child would not
 *    inherit the mapping: slots are MADV_DONTFORK);
 *  - mprotect cannot add PROT_WRITE, nor after moving the pages by mremap;
 *  - the peer's memfd, reopened read-write through /proc/self/map_files or
 *    through /proc/<owner pid>/fd/<n> (root only: the file is 0400, so
 *    others reopen it read-only), cannot be mapped writable and shared
 *    (EPERM: F_SEAL_FUTURE_WRITE), written, hole-punched, shrunk or
 *    resealed (its growth with the owner's heap is tests/slot_grow.c's);
 *  - /proc/self/mem and process_vm_writev cannot write it, MADV_REMOVE
 *    cannot zero it;
 *  - no descriptor of the peer's memfd is left in the process.
 *
 * After all that the owner still writes its own slot through its first
 * mapping (but cannot make a new writable one) and the peer sees the new
 * value.
 */
#include "testlib.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>

#define DOMAIN "trdonly"
#define SLOT_SIZE (1ull << 30)
#define PAGE 4096ull




struct mapping {
    uint64_t lo, hi, ino;
    dev_t dev;
    char perms[5];
    char path[256];
};

/* The /proc/self/maps line covering ADDR; 0, or -1 if nothing covers it. */
static int map_of(uint64_t addr, struct mapping *m)
{
    FILE *f = fopen("/proc/self/maps", "r");
    REQUIRE(f);
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        int off = 0;
        unsigned maj, min;
        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %4s %*s %x:%x %" SCNu64 " %n", &m->lo,
                   &m->hi, m->perms, &maj, &min, &m->ino, &off) < 6)
            continue;
        m->dev = makedev(maj, min);
        if (addr < m->lo || addr >= m->hi)
            continue;
        line[strcspn(line, "\n")] = 0;
        snprintf(m->path, sizeof m->path, "%s", off ? line + off : "");
        found = 0;
        break;
    }
    fclose(f);
    return found;
}

/* ---- catching faults in this process ---- */

static __thread sigjmp_buf *volatile fault_jb;
static __thread volatile int fault_sig, fault_code;
static __thread void *volatile fault_addr;

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    sigjmp_buf *jb = fault_jb;
    if (!jb) {
        /* Not expected: the default action, when the access is retried. */
        signal(sig, SIG_DFL);
        return;
    }
    fault_jb = NULL;
    fault_sig = sig;
    fault_code = si->si_code;
    fault_addr = si->si_addr;
    siglongjmp(*jb, 1);
}

static void catch_faults(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    REQUIRE(sigaction(SIGSEGV, &sa, NULL) == 0);
    REQUIRE(sigaction(SIGBUS, &sa, NULL) == 0);
}

/* Store V at ADDR: 0 if it went through, else the signal (with its code
 * and address in *CODE and *WHERE). */
static int try_write(uint64_t addr, uint64_t v, int *code, uint64_t *where)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1)) {
        *code = fault_code;
        *where = (uint64_t)(uintptr_t)fault_addr;
        return fault_sig;
    }
    fault_jb = &jb;
    *(volatile uint64_t *)(uintptr_t)addr = v;
    fault_jb = NULL;
    return 0;
}

/* Load the word at ADDR into *V: 0, or the signal it raised. */
static int try_read(uint64_t addr, uint64_t *v)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1))
        return fault_sig;
    fault_jb = &jb;
    *v = *(volatile uint64_t *)(uintptr_t)addr;
    fault_jb = NULL;
    return 0;
}

static int t_reopen_needed;

/* A caught fault may leave the thread's protection-key rights reset by the
 * kernel's signal delivery: reopen P's window so that reads keep working. */
static void reopen(rpal_peer *p)
{
    if (!t_reopen_needed)
        return;
    rpal_peer_access_end(p);
    rpal_peer_access_begin(p);
}

#define CHECK_WRITE_FAULTS(who, p, addr)                                       \
    do {                                                                       \
        int code_ = 0;                                                         \
        uint64_t where_ = 0, a_ = (addr);                                      \
        int sig_ = try_write(a_, 0x4141414141414141ull, &code_, &where_);      \
        reopen(p);                                                             \
        if (sig_ != SIGSEGV || code_ != SEGV_ACCERR || where_ != a_) {         \
            fprintf(stderr,                                                    \
                    "%s:%d: %s: write at %#" PRIx64 ": signal %d code %d "     \
                    "at %#" PRIx64 ", want SIGSEGV SEGV_ACCERR there\n",       \
                    __FILE__, __LINE__, who, a_, sig_, code_, where_);         \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)

/* errno of a call that must fail: -1 and one of the errnos given. */
#define CHECK_FAILS(who, call, e1, e2)                                         \
    do {                                                                       \
        errno = 0;                                                             \
        long r_ = (long)(call);                                                \
        int e_ = errno;                                                        \
        if (r_ != -1 || (e_ != (e1) && e_ != (e2))) {                          \
            fprintf(stderr, "%s:%d: %s: %s returned %ld (%s), want -1 %s\n",   \
                    __FILE__, __LINE__, who, #call, r_, strerror(e_),          \
                    strerror(e1));                                             \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)

/* mmap of FD that must fail with EPERM; if it does not, undo it. */
static void check_map_refused(const char *who, int fd, void *at, size_t len, int flags)
{
    errno = 0;
    void *m = mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | flags, fd, 0);
    /* EACCES: a read-only descriptor, refused before the seals are asked. */
    if (m != MAP_FAILED || (errno != EPERM && errno != EACCES)) {
        fprintf(stderr, "%s: mmap(%p, PROT_WRITE, MAP_SHARED%s) of the sealed slot: %s, "
                "want EPERM\n", who, at, flags ? " | MAP_FIXED" : "",
                m != MAP_FAILED ? "mapped" : strerror(errno));
        t_failures++;
        if (m != MAP_FAILED && !flags)
            munmap(m, len);
    }
    /* Linux 6.1 (the kernel of tests/vm/pku.sh) unmaps what a MAP_FIXED
     * mmap replaces before the seal refuses the new mapping: the attacker
     * loses its own view, the owner nothing. Later kernels (6.18 here)
     * refuse first. Put the view back, read-only as before (under key 0
     * now, which opens it to every thread: this test reads it only inside
     * windows anyway). */
    struct mapping cur;
    if (flags && m == MAP_FAILED && (map_of((uint64_t)(uintptr_t)at, &cur) < 0 ||
                                     !strstr(cur.path, "memfd:rpal-slot"))) {
        printf("%s: this kernel unmapped the view before refusing MAP_FIXED; mapping it "
               "again\n", who);
        CHECK(mmap(at, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == at);
    }
}

/* Every way to write through a descriptor FD of a sealed slot must fail
 * (with EPERM from the seals; a read-only descriptor is refused sooner, with
 * EBADF, EINVAL or EACCES). Growing is not tried: the file grows with its
 * owner's heap, and a writable descriptor (root's) may grow it too. */
static void attack_fd(const char *who, int fd, uint64_t base, uint64_t size)
{
    struct stat st, st2;
    CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size <= size);
    check_map_refused(who, fd, NULL, PAGE, 0);
    check_map_refused(who, fd, NULL, size, 0);
    /* Over the peer's own range, where a success would replace the
     * read-only view by a writable one. */
    check_map_refused(who, fd, (void *)(uintptr_t)base, size, MAP_FIXED);
    uint64_t v = 0x4242424242424242ull;
    CHECK_FAILS(who, write(fd, &v, sizeof v), EPERM, EBADF);
    CHECK_FAILS(who, pwrite(fd, &v, sizeof v, 64), EPERM, EBADF);
    CHECK_FAILS(who, fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)size),
                EPERM, EBADF);
    CHECK_FAILS(who, ftruncate(fd, 0), EPERM, EINVAL);
    CHECK_FAILS(who, ftruncate(fd, PAGE), EPERM, EINVAL);
    CHECK_FAILS(who, fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), EPERM, EPERM);
    CHECK_FAILS(who, fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), EPERM, EPERM);
    /* A read-only shared mapping of it cannot be made writable either. */
    void *m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(m != MAP_FAILED);
    if (m != MAP_FAILED) {
        CHECK_FAILS(who, mprotect(m, PAGE, PROT_READ | PROT_WRITE), EACCES, EPERM);
        munmap(m, PAGE);
    }
    CHECK(fstat(fd, &st2) == 0 && st2.st_size == st.st_size);
}

/* Descriptors of this process that refer to the file DEV:INO. */
static int own_fds_to(dev_t dev, uint64_t ino)
{
    DIR *dir = opendir("/proc/self/fd");
    REQUIRE(dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        struct stat st;
        if (de->d_name[0] == '.' || atoi(de->d_name) == dirfd(dir))
            continue;
        if (fstat(atoi(de->d_name), &st) == 0 && st.st_ino == ino && st.st_dev == dev)
            n++;
    }
    closedir(dir);
    return n;
}

/* Try to write the peer P's slot, which OWNER owns and where TARGET holds
 * WANT, every way we know. */
static void attack(const char *who, rpal_peer *p, pid_t owner, uint64_t target,
                   uint64_t want)
{
    uint64_t base = (uint64_t)(uintptr_t)rpal_peer_base(p);
    uint64_t size = rpal_peer_size(p);
    REQUIRE(base && size == SLOT_SIZE);
    REQUIRE(target >= base + PAGE && target < base + size - 2 * PAGE);
    struct mapping m;
    REQUIRE(map_of(base, &m) == 0);
    CHECK(m.lo == base && m.hi == base + size);
    CHECK(strcmp(m.perms, "r--s") == 0);
    CHECK(strstr(m.path, "memfd:rpal-slot") != NULL);
    uint64_t ino = m.ino;
    dev_t dev = m.dev;
    uint64_t v = 0;

    /* Inside a window: reading is allowed, writing is not, whatever the
     * protection keys say. */
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(try_read(target, &v) == 0 && v == want);

    /* A plain store, at the target, at the first and at the last word. */
    CHECK_WRITE_FAULTS(who, p, target);
    CHECK_WRITE_FAULTS(who, p, base);
    CHECK_WRITE_FAULTS(who, p, base + size - 8);

    /* mprotect cannot add PROT_WRITE. */
    CHECK_FAILS(who, mprotect((void *)(uintptr_t)base, PAGE, PROT_READ | PROT_WRITE), EACCES,
                EPERM);
    CHECK_FAILS(who, mprotect((void *)(uintptr_t)(target & ~(PAGE - 1)), PAGE,
                              PROT_READ | PROT_WRITE), EACCES, EPERM);
    CHECK_FAILS(who, mprotect((void *)(uintptr_t)base, size, PROT_READ | PROT_WRITE | PROT_EXEC),
                EACCES, EPERM);
    CHECK_FAILS(who, mprotect((void *)(uintptr_t)base, size, PROT_WRITE), EACCES, EPERM);
    CHECK_WRITE_FAULTS(who, p, target);

    /* The file behind the mapping, reopened read-write through
     * /proc/self/map_files (allowed to root) is sealed. */
    char mf[128];
    snprintf(mf, sizeof mf, "/proc/self/map_files/%" PRIx64 "-%" PRIx64, m.lo, m.hi);
    int fd = open(mf, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        attack_fd(who, fd, base, size);
        close(fd);
    } else {
        CHECK(errno == EPERM || errno == EACCES);
        printf("%s: %s not openable (%s): that way is closed already\n", who, mf,
               strerror(errno));
    }
    CHECK(try_read(target, &v) == 0 && v == want);

    /* The owner's descriptor, reopened through /proc/<owner>/fd. */
    char dirpath[64];
    snprintf(dirpath, sizeof dirpath, "/proc/%d/fd", (int)owner);
    DIR *dir = opendir(dirpath);
    REQUIRE(dir);
    int found = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        char link[512], target_name[PATH_MAX];
        if (de->d_name[0] == '.')
            continue;
        snprintf(link, sizeof link, "%s/%s", dirpath, de->d_name);
        ssize_t n = readlink(link, target_name, sizeof target_name - 1);
        if (n <= 0)
            continue;
        target_name[n] = 0;
        if (!strstr(target_name, "memfd:rpal-slot"))
            continue;
        int ofd = open(link, O_RDWR | O_CLOEXEC);
        if (ofd < 0 && errno == EACCES && getuid() != 0) {
            /* The slot's file is 0400: only root reopens it for writing. */
            ofd = open(link, O_RDONLY | O_CLOEXEC);
        }
        if (ofd < 0) {
            fprintf(stderr, "%s: cannot open %s: %s\n", who, link, strerror(errno));
            t_failures++;
            continue;
        }
        struct stat st;
        if (fstat(ofd, &st) == 0 && st.st_ino == ino && st.st_dev == dev) {
            found++;
            attack_fd(who, ofd, base, size);
        }
        close(ofd);
    }
    closedir(dir);
    if (!found) {
        fprintf(stderr, "%s: no descriptor of the peer's slot in %s\n", who, dirpath);
        t_failures++;
    }
    CHECK(try_read(target, &v) == 0 && v == want);
    CHECK_WRITE_FAULTS(who, p, target);

    /* Moving the last page elsewhere does not make it writable. */
    void *q = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(q != MAP_FAILED);
    void *last = (void *)(uintptr_t)(base + size - PAGE);
    void *moved = mremap(last, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, q);
    CHECK(moved == q);
    if (moved == q) {
        CHECK_FAILS(who, mprotect(q, PAGE, PROT_READ | PROT_WRITE), EACCES, EPERM);
        CHECK_WRITE_FAULTS(who, p, (uint64_t)(uintptr_t)q + 8);
        CHECK(mremap(q, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, last) == last);
    }
    CHECK(map_of(base + size - PAGE, &m) == 0 && strcmp(m.perms, "r--s") == 0 &&
          m.ino == ino && m.dev == dev);

    /* Nor do the paths that bypass page protections. */
    v = 0x4343434343434343ull;
    int memfd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    if (memfd >= 0) {
        CHECK(pwrite(memfd, &v, sizeof v, (off_t)target) == -1);
        CHECK(pwrite(memfd, &v, sizeof v, (off_t)base) == -1);
        close(memfd);
    }
    struct iovec liov = {&v, sizeof v}, riov = {(void *)(uintptr_t)target, sizeof v};
    CHECK(process_vm_writev(getpid(), &liov, 1, &riov, 1, 0) == -1);
    /* qemu-user (tests/vm/arm64.sh) answers 0 to advice it does not pass on
     * to the kernel, MADV_REMOVE among them: the reads below still show
     * that nothing changed. */
    const char *emu = getenv("RPAL_EMULATED");
    CHECK(madvise((void *)(uintptr_t)base, size, MADV_REMOVE) == -1 ||
          (emu && strcmp(emu, "qemu-user") == 0));

    /* Nothing changed, and we keep no descriptor of the peer's slot. */
    CHECK(try_read(target, &v) == 0 && v == want);
    CHECK(own_fds_to(dev, ino) == 0);
    CHECK_ERR(rpal_peer_access_end(p), 0);
}

/* The owner: its first mapping stays writable, a new one cannot be made. */
static void owner_checks(const char *who, uint64_t own_base)
{
    struct mapping m;
    REQUIRE(map_of(own_base, &m) == 0);
    CHECK(strcmp(m.perms, "rw-s") == 0);
    int found = 0;
    DIR *dir = opendir("/proc/self/fd");
    REQUIRE(dir);
    struct dirent *de;
    while ((de = readdir(dir))) {
        struct stat st;
        int fd = atoi(de->d_name);
        if (de->d_name[0] == '.' || fd == dirfd(dir) || fstat(fd, &st) < 0 ||
            st.st_ino != m.ino || st.st_dev != m.dev)
            continue;
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        int ofd = open(link, O_RDWR | O_CLOEXEC);
        if (ofd < 0 && errno == EACCES && getuid() != 0)
            ofd = open(link, O_RDONLY | O_CLOEXEC); /* the file is 0400 */
        CHECK(ofd >= 0);
        if (ofd >= 0) {
            found++;
            check_map_refused(who, ofd, NULL, PAGE, 0);
            uint64_t v = 1;
            CHECK_FAILS(who, pwrite(ofd, &v, sizeof v, 0), EPERM, EBADF);
            CHECK_FAILS(who, ftruncate(ofd, 0), EPERM, EINVAL);
            close(ofd);
        }
    }
    closedir(dir);
    CHECK(found >= 1);
}

static uint64_t gen_value(int side, int gen) { return 0x1000000000000000ull * (uint64_t)side + (uint64_t)gen * 0x10001u + 0x77; }

/* Dispatch until a peer is accepted (10 s at most). */
static rpal_peer *accept_one(rpal_domain *d)
{
    int64_t deadline = t_now_ms() + 10000;
    while (t_now_ms() < deadline) {
        struct rpal_event ev[8];
        int n = rpal_domain_dispatch(d, ev, 8, 100);
        for (int i = 0; i < n; i++)
            if (ev[i].type == RPAL_EV_PEER_ACCEPTED)
                return ev[i].peer;
    }
    return NULL;
}

static int client(int rfd, int wfd)
{
    alarm(60);
    catch_faults();
    struct rpal_domain_opts o = {.slot_size = SLOT_SIZE};
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, &o, &d) == 0);
    void *bp;
    REQUIRE(rpal_domain_slot(d, NULL, &bp, NULL) == 0);
    uint64_t *mine = rpal_malloc(64);
    REQUIRE(mine);
    *mine = gen_value(2, 0);

    char line[512], keytext[64];
    uint64_t starget, sbase, ssize;
    int spid;
    REQUIRE(t_get_line(rfd, line, sizeof line, 10000) == 0);
    REQUIRE(sscanf(line, "KEY %40s BASE %" SCNx64 " SIZE %" SCNu64 " TARGET %" SCNx64
                   " PID %d", keytext, &sbase, &ssize, &starget, &spid) == 5);
    rpal_key key;
    REQUIRE(rpal_key_parse(keytext, &key) == 0);
    rpal_peer *p;
    int err = rpal_service_request(d, "svc", &key, 5000, &p);
    if (err < 0) {
        fprintf(stderr, "client: request: %s\n", rpal_strerror(err));
        return 1;
    }
    CHECK((uint64_t)(uintptr_t)rpal_peer_base(p) == sbase);
    t_put_line(wfd, "TARGET %" PRIx64 "\n", (uint64_t)(uintptr_t)mine);

    attack("client", p, spid, starget, gen_value(1, 0));
    t_put_line(wfd, "ATTACKED\n");
    /* The service writes its own slot; we see it. */
    REQUIRE(t_get_line(rfd, line, sizeof line, 20000) == 0);
    CHECK(strcmp(line, "WROTE") == 0);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(*(volatile uint64_t *)(uintptr_t)starget == gen_value(1, 1));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    owner_checks("client", (uint64_t)(uintptr_t)bp);
    *(volatile uint64_t *)mine = gen_value(2, 1);
    t_put_line(wfd, "WROTE\n");
    REQUIRE(t_get_line(rfd, line, sizeof line, 20000) == 0);
    CHECK(strcmp(line, "BYE") == 0);
    CHECK_ERR(rpal_peer_release(p), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}

int main(void)
{
    t_init();
    alarm(60);
    t_reopen_needed = (rpal_capabilities() & RPAL_CAP_PKU) != 0;
    int down[2], up[2];
    REQUIRE(pipe(down) == 0 && pipe(up) == 0);
    /* The client first, so that it inherits nothing of the service. */
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        close(down[1]);
        close(up[0]);
        _exit(client(down[0], up[1]));
    }
    close(down[0]);
    close(up[1]);
    catch_faults();

    struct rpal_domain_opts o = {.slot_size = SLOT_SIZE};
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, &o, &d) == 0);
    void *bp;
    uint64_t size;
    REQUIRE(rpal_domain_slot(d, NULL, &bp, &size) == 0);
    uint64_t base = (uint64_t)(uintptr_t)bp;
    uint64_t *mine = rpal_malloc(64);
    REQUIRE(mine);
    *mine = gen_value(1, 0);
    rpal_service *s;
    REQUIRE(rpal_service_register(d, "svc", 0600, NULL, NULL, &s) == 0);
    rpal_key key;
    char keytext[33];
    REQUIRE(rpal_service_key(s, &key) == 0 && rpal_key_format(&key, keytext) == 0);
    t_put_line(down[1], "KEY %s BASE %" PRIx64 " SIZE %" PRIu64 " TARGET %" PRIx64 " PID %d\n",
             keytext, base, size, (uint64_t)(uintptr_t)mine, (int)getpid());

    rpal_peer *p = accept_one(d);
    if (!p) {
        fprintf(stderr, "no client accepted within 10 s\n");
        kill(child, SIGKILL);
        t_wait(child);
        return 1;
    }
    char line[512];
    uint64_t ctarget;
    REQUIRE(t_get_line(up[0], line, sizeof line, 10000) == 0);
    REQUIRE(sscanf(line, "TARGET %" SCNx64, &ctarget) == 1);

    attack("service", p, child, ctarget, gen_value(2, 0));
    REQUIRE(t_get_line(up[0], line, sizeof line, 30000) == 0);
    CHECK(strcmp(line, "ATTACKED") == 0);

    /* Our own slot: untouched by the client's attempts, still ours to
     * write through the first mapping. */
    CHECK(*mine == gen_value(1, 0));
    owner_checks("service", base);
    *(volatile uint64_t *)mine = gen_value(1, 1);
    t_put_line(down[1], "WROTE\n");
    REQUIRE(t_get_line(up[0], line, sizeof line, 20000) == 0);
    CHECK(strcmp(line, "WROTE") == 0);
    CHECK_ERR(rpal_peer_access_begin(p), 0);
    CHECK(*(volatile uint64_t *)(uintptr_t)ctarget == gen_value(2, 1));
    CHECK_ERR(rpal_peer_access_end(p), 0);
    t_put_line(down[1], "BYE\n");
    int rc = t_wait(child);
    if (rc != 0) {
        fprintf(stderr, "client exited with %d\n", rc);
        t_failures++;
    }
    CHECK_ERR(rpal_peer_release(p), 0);
    CHECK_ERR(rpal_service_unregister(s), 0);
    CHECK_ERR(rpal_domain_leave(d), 0);
    return t_done();
}
