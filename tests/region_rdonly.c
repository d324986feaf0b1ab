/* Read-only attach is enforced by the kernel, not by good manners: a
 * read-only attacher sees every write made by read-write attachers, and
 * cannot write itself, neither directly nor by mprotect, mremap,
 * /proc/self/mem, process_vm_writev, hole punching or a descriptor it could
 * reopen read-write. The header page below the data is read-only for every
 * attacher. Faults are observed in child processes. */
#include "testlib.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>

#define GRANULE (2ul << 20)
#define PAGE 4096ul
#define NPAGES 16
#define SIZE (NPAGES * PAGE)

static const char *const NAME = "ro/data";

static uint64_t pat(size_t i, unsigned gen)
{
    return (i + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)gen << 56);
}

static void fill(void *p, unsigned gen)
{
    volatile uint64_t *w = p;
    for (size_t i = 0; i < SIZE / 8; i++)
        w[i] = pat(i, gen);
}

static int filled(const void *p, unsigned gen)
{
    const volatile uint64_t *w = p;
    for (size_t i = 0; i < SIZE / 8; i++)
        if (w[i] != pat(i, gen))
            return 0;
    return 1;
}

/* Run FN in a child whose SIGSEGV is the default action, so that a fault
 * kills it even where a sanitizer installed its own handler, and that dumps
 * no core. Returns t_wait(): 128 + SIGSEGV if FN faulted, else FN's exit. */
static int in_child(int (*fn)(void *), void *arg)
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
        struct rlimit no = {0, 0};
        setrlimit(RLIMIT_CORE, &no);
        _exit(fn(arg));
    }
    return t_wait(p);
}

#define CHECK_CHILD(call, want)                                                \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_ != (want)) {                                                   \
            fprintf(stderr, "%s:%d: %s: child ended with %d, want %d%s\n",     \
                    __FILE__, __LINE__, #call, rc_, (want),                    \
                    (want) == 128 + SIGSEGV ? " (SIGSEGV)" : "");              \
            t_failures++;                                                      \
        }                                                                      \
    } while (0)
#define CHECK_SEGV(call) CHECK_CHILD(call, 128 + SIGSEGV)

static int write_word(void *addr)
{
    *(volatile uint64_t *)addr = 42;
    return 0; /* survived the write */
}

static char *data;  /* the region's data in this process */
static char *hdrpg; /* its header page */

static int write_first(void *arg) { (void)arg; return write_word(data); }
static int write_last(void *arg) { (void)arg; return write_word(data + SIZE - 8); }
static int write_hdr(void *arg) { (void)arg; return write_word(hdrpg + 64); }

/* In a child holding this process's mapping: drop it and attach afresh
 * with FLAGS (0 on success). */
static rpal_region *held;
static int reattach(unsigned flags)
{
    rpal_region *r;
    if (rpal_region_detach(held) != 0)
        return 10;
    int err = rpal_region_attach(NAME, flags, &r);
    if (err < 0) {
        fprintf(stderr, "child: attach: %s\n", rpal_strerror(err));
        return 11;
    }
    if (rpal_region_addr(r) != data)
        return 12; /* not the same address in every process */
    held = r;
    return 0;
}

static int fresh_ro_write(void *arg)
{
    (void)arg;
    int e = reattach(RPAL_REGION_RDONLY);
    if (e)
        return e;
    if (!filled(data, 3))
        return 13;
    return write_word(data + PAGE);
}

static int fresh_rw_write(void *arg)
{
    int e = reattach(0);
    if (e)
        return e;
    fill(data, *(unsigned *)arg);
    return 0;
}

static int fresh_rw_write_hdr(void *arg)
{
    (void)arg;
    int e = reattach(0);
    if (e)
        return e;
    return write_word(hdrpg + 64);
}

/* Move the read-only mapping elsewhere, then try to make it writable. */
static int remap_then_write(void *arg)
{
    (void)arg;
    void *q = mmap(NULL, SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED)
        return 20;
    void *m = mremap(data, SIZE, SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, q);
    if (m != q) {
        fprintf(stderr, "child: mremap: %s\n", strerror(errno));
        return 21;
    }
    if (!filled(q, 3))
        return 22;
    if (mprotect(q, SIZE, PROT_READ | PROT_WRITE) == 0) {
        fprintf(stderr, "child: mprotect(PROT_WRITE) of the moved range worked\n");
        return 23;
    }
    if (errno != EACCES)
        fprintf(stderr, "child: mprotect failed with %s, want EACCES\n",
                strerror(errno));
    return write_word(q);
}

/* A grown or shrunk remap is no way to write either. */
static int remap_shrink_then_write(void *arg)
{
    (void)arg;
    void *m = mremap(data, SIZE, PAGE, 0);
    if (m != data)
        return 30;
    if (mprotect(m, PAGE, PROT_READ | PROT_WRITE) == 0)
        return 31;
    return write_word(m);
}

static int fds_to(dev_t dev, ino_t ino, const char *path)
{
    DIR *d = opendir("/proc/self/fd");
    REQUIRE(d);
    int found = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || atoi(de->d_name) == dirfd(d))
            continue;
        char link[300], target[PATH_MAX];
        struct stat st;
        snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        target[n < 0 ? 0 : n] = 0;
        int same = stat(link, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
        if (same || (n > 0 && strstr(target, path))) {
            fprintf(stderr, "fd %s still refers to the region (%s)\n",
                    de->d_name, target);
            found++;
        }
    }
    closedir(d);
    return found;
}

/* Where mremap cannot duplicate a shared mapping (old size 0: qemu-user,
 * tests/vm/arm64.sh), the library keeps one descriptor per attached region to
 * map its views from (src/layout.c, dup_by_fd): the descriptors expected. */
static int kept_fds(void)
{
    void *a = mmap(NULL, PAGE, PROT_NONE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(a != MAP_FAILED);
    void *b = mremap(a, 0, PAGE, MREMAP_MAYMOVE);
    if (b != MAP_FAILED)
        munmap(b, PAGE);
    munmap(a, PAGE);
    if (b == MAP_FAILED)
        printf("mremap cannot duplicate a mapping here: one descriptor per region is kept\n");
    return b == MAP_FAILED;
}

int main(void)
{
    t_init();
    alarm(60);
    if (access("/proc/self/maps", R_OK) != 0)
        t_skip("/proc is not mounted");

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", rpal_ns_dir(), NAME);

    /* The creator writes; its header page is read-only all the same. */
    rpal_region *w;
    int err = rpal_region_create(NAME, SIZE, 0644, 0, &w);
    if (err < 0) {
        fprintf(stderr, "create: %s\n", rpal_strerror(err));
        return 1;
    }
    data = rpal_region_addr(w);
    hdrpg = data - GRANULE;
    held = w;
    fill(data, 1);
    CHECK(memcmp(hdrpg, "RPALREG1", 8) == 0);
    CHECK_SEGV(in_child(write_hdr, NULL));
    CHECK(memcmp(hdrpg, "RPALREG1", 8) == 0);

    struct stat fst;
    REQUIRE(stat(path, &fst) == 0);
    int kept = kept_fds();
    CHECK(fds_to(fst.st_dev, fst.st_ino, path) == kept);

    /* A read-write attacher writes and a second process sees it. */
    CHECK(rpal_region_detach(w) == 0);
    rpal_region *rw;
    REQUIRE(rpal_region_attach(NAME, 0, &rw) == 0);
    REQUIRE(rpal_region_addr(rw) == data);
    held = rw;
    CHECK(filled(data, 1));
    CHECK(fds_to(fst.st_dev, fst.st_ino, path) == kept);
    unsigned gen = 2;
    CHECK_CHILD(in_child(fresh_rw_write, &gen), 0);
    CHECK(filled(data, 2));
    fill(data, 7);
    CHECK(filled(data, 7));
    fill(data, 2);
    /* Header page read-only for a read-write attacher, inherited or not. */
    CHECK_SEGV(in_child(write_hdr, NULL));
    CHECK_SEGV(in_child(fresh_rw_write_hdr, NULL));
    CHECK(rpal_region_detach(rw) == 0);

    /* (a) A read-only attacher sees the data, and later writes too. */
    rpal_region *ro;
    REQUIRE(rpal_region_attach(NAME, RPAL_REGION_RDONLY, &ro) == 0);
    REQUIRE(rpal_region_addr(ro) == data);
    held = ro;
    CHECK(filled(data, 2));
    gen = 3;
    CHECK_CHILD(in_child(fresh_rw_write, &gen), 0);
    CHECK(filled(data, 3));

    /* (f) No descriptor is left to reopen read-write via /proc/self/fd
     * (but the one kept where mremap cannot duplicate, see kept_fds). */
    CHECK(fds_to(fst.st_dev, fst.st_ino, path) == kept);

    /* (b) A write faults, on the inherited mapping and on a fresh one. */
    CHECK_SEGV(in_child(write_first, NULL));
    CHECK_SEGV(in_child(write_last, NULL));
    CHECK_SEGV(in_child(fresh_ro_write, NULL));

    /* (c) mprotect cannot add PROT_WRITE. */
    errno = 0;
    CHECK(mprotect(data, SIZE, PROT_READ | PROT_WRITE) == -1 && errno == EACCES);
    errno = 0;
    CHECK(mprotect(data + PAGE, PAGE, PROT_READ | PROT_WRITE) == -1 && errno == EACCES);
    errno = 0;
    CHECK(mprotect(data, SIZE, PROT_READ | PROT_WRITE | PROT_EXEC) == -1 && errno == EACCES);
    errno = 0;
    CHECK(mprotect(hdrpg, PAGE, PROT_READ | PROT_WRITE) == -1 && errno == EACCES);
    CHECK_SEGV(in_child(write_first, NULL));

    /* (d) Nor can moving the mapping first. */
    CHECK_SEGV(in_child(remap_then_write, NULL));
    CHECK_SEGV(in_child(remap_shrink_then_write, NULL));

    /* (e) Nor writing through /proc/self/mem or process_vm_writev, which
     * bypass the page protections but not the missing write permission. */
    uint64_t v = 0x6a6a6a6a6a6a6a6aull;
    int memfd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    if (memfd >= 0) {
        CHECK(pwrite(memfd, &v, sizeof v, (off_t)(uintptr_t)data) == -1);
        CHECK(pwrite(memfd, &v, sizeof v, (off_t)(uintptr_t)(data + SIZE - 8)) == -1);
        CHECK(pwrite(memfd, &v, sizeof v, (off_t)(uintptr_t)(hdrpg + 64)) == -1);
        close(memfd);
    }
    struct iovec liov = {&v, sizeof v}, riov = {data + 8, sizeof v};
    CHECK(process_vm_writev(getpid(), &liov, 1, &riov, 1, 0) == -1);

    /* Punching a hole would zero the data for everyone. */
    /* qemu-user answers 0 to advice it does not pass on (MADV_REMOVE among
     * them): the data below shows that nothing happened. */
    const char *emu = getenv("RPAL_EMULATED");
    CHECK(madvise(data, SIZE, MADV_REMOVE) == -1 || (emu && strcmp(emu, "qemu-user") == 0));
    CHECK(filled(data, 3));
    CHECK(memcmp(hdrpg, "RPALREG1", 8) == 0);

    /* (g) The header page faults for a read-only attacher too. */
    CHECK_SEGV(in_child(write_hdr, NULL));

    /* Still attached and following the writers after all of that. */
    gen = 4;
    CHECK_CHILD(in_child(fresh_rw_write, &gen), 0);
    CHECK(filled(data, 4));
    CHECK(rpal_region_detach(ro) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    return t_done();
}
