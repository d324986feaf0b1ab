/* Huge regions (RPAL_REGION_HUGE): sizes that are not whole GiB refused, no
 * hugetlbfs refused, too few huge pages refused, each leaving nothing behind;
 * a huge region created here is attached by another exec'd program at the
 * same 1 GiB-aligned address, in 2 MiB pages, with its contents shared both
 * ways, read-write and read-only; unlink and gc remove the hugetlbfs data
 * files. Needs a hugetlbfs and free huge pages, which it arranges as root
 * (tests/hugesetup.h: private mount, vm.nr_hugepages raised and put back);
 * otherwise it skips with the reason after the checks that need neither. */
#include "testlib.h"

#include <sys/mman.h>
#include "internal.h"
#include "hugesetup.h"

#include <fcntl.h>
#include <inttypes.h>

#define GIB (1ull << 30)

static struct huge_setup hs;

static void teardown(void)
{
    huge_teardown(&hs);
}

/* The KernelPageSize, in KiB, of our mapping that starts at ADDR; -1. */
static long kernel_page_kib(uint64_t addr)
{
    /* Not /proc/self/smaps: qemu-user (tests/vm/arm64.sh) writes its own, with
     * the emulated page size; the task's file is the kernel's everywhere. */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/smaps", (int)getpid());
    FILE *f = fopen(path, "r");
    REQUIRE(f);
    char line[512];
    int in = 0;
    long kib = -1;
    while (fgets(line, sizeof line, f)) {
        uint64_t lo, hi;
        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " ", &lo, &hi) == 2) {
            in = lo == addr;
            continue;
        }
        if (in && sscanf(line, "KernelPageSize: %ld kB", &kib) == 1)
            break;
    }
    fclose(f);
    return kib;
}

/* The exec'd side: attach NAME (read-only if MODE is "ro"), check it is at
 * BASE in 2 MiB pages with the parent's words, and (read-write) answer. */
static int child_main(const char *mode, const char *name, const char *base_s)
{
    uint64_t base = strtoull(base_s, NULL, 0);
    int ro = !strcmp(mode, "ro");
    rpal_region *r;
    int err = rpal_region_attach(name, ro ? RPAL_REGION_RDONLY : 0, &r);
    if (err < 0) {
        fprintf(stderr, "child: attach %s: %s\n", name, rpal_strerror(err));
        return 1;
    }
    CHECK((uint64_t)(uintptr_t)rpal_region_addr(r) == base);
    CHECK(rpal_region_size(r) == GIB);
    CHECK(kernel_page_kib(base) == 2048);
    volatile uint64_t *p = rpal_region_addr(r);
    CHECK(p[0] == 0x1111);
    CHECK(p[(GIB - 8) / 8] == 0x2222);
    if (!ro) {
        p[1] = 0x3333;
        p[(GIB / 2) / 8] = 0x4444;
    }
    CHECK(rpal_region_detach(r) == 0);
    return t_done();
}

static int run_child(const char *mode, const char *name, uint64_t base)
{
    char b[32];
    snprintf(b, sizeof b, "0x%" PRIx64, base);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        execl("/proc/self/exe", "region_huge", "child", mode, name, b, (char *)NULL);
        _exit(127);
    }
    return t_wait(pid);
}

/* Data files of this namespace in the hugetlbfs directory. */
static int data_files(void)
{
    char dir[HUGE_DIR_MAX], prefix[96];
    struct stat st;
    REQUIRE(rpal__prim_huge_dir(dir, sizeof dir) == 0);
    REQUIRE(stat(getenv("RPAL_DIR"), &st) == 0);
    snprintf(prefix, sizeof prefix, "rpal.%" PRIu64 ".%" PRIu64 ".", (uint64_t)st.st_dev,
             (uint64_t)st.st_ino);
    DIR *d = opendir(dir);
    REQUIRE(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += !strncmp(de->d_name, prefix, strlen(prefix));
    closedir(d);
    return n;
}

static int gc_count(void)
{
    int n = rpal_gc(NULL, NULL);
    CHECK(n >= 0);
    return n;
}

static void gone(const char *name)
{
    struct rpal_region_info info;
    CHECK_ERR(rpal_region_stat(name, &info), -ENOENT);
}

/* A forked (not exec'd) child creates NAME with FLAGS and exits without
 * unlinking it. */
static void create_and_die(const char *name, unsigned flags)
{
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        huge_setup_child(&hs);
        rpal_region *r;
        int err = rpal_region_create(name, GIB, 0600, flags, &r);
        if (err < 0)
            fprintf(stderr, "create %s: %s\n", name, rpal_strerror(err));
        _exit(err < 0);
    }
    CHECK(t_wait(pid) == 0);
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "child"))
        return child_main(argv[2], argv[3], argv[4]);
    t_init();
    rpal_region *r;

    /* Sizes that are not whole GiB: refused before anything else. */
    static const uint64_t bad[] = {4096, 2ull << 20, GIB / 2, GIB + (2ull << 20),
                                   3 * GIB / 2};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_ERR(rpal_region_create("badsize", bad[i], 0600, RPAL_REGION_HUGE, &r), -EINVAL);
        gone("badsize");
    }
    /* Huge is not an attach flag. */
    CHECK_ERR(rpal_region_attach("badsize", RPAL_REGION_HUGE, &r), -EINVAL);

    /* A directory that is not on hugetlbfs. */
    setenv("RPAL_HUGE_DIR", getenv("RPAL_DIR"), 1);
    CHECK_ERR(rpal_region_create("nohuge", GIB, 0600, RPAL_REGION_HUGE, &r), -ENODEV);
    gone("nohuge");
    CHECK(gc_count() == 0); /* no reservation left either */
    unsetenv("RPAL_HUGE_DIR");

    hs.owner = getpid();
    atexit(teardown);
    /* Two 1 GiB regions at once. */
    if (huge_setup(&hs, 2 * GIB / RPAL_HUGE_PAGE) < 0) {
        if (t_failures)
            return t_done();
        t_skip("%s", hs.why);
    }

    /* Too few free huge pages: -ENOSPC, and nothing left. */
    uint64_t avail = 0;
    REQUIRE(rpal__prim_huge_avail(&avail) == 0);
    uint64_t toobig = (avail * RPAL_HUGE_PAGE / GIB + 1) * GIB;
    CHECK_ERR(rpal_region_create("toobig", toobig, 0600, RPAL_REGION_HUGE, &r), -ENOSPC);
    gone("toobig");
    CHECK(data_files() == 0);
    CHECK(gc_count() == 0);

    /* One region, seen by another program. A small region first, so that
     * the huge one's base has to be aligned past it. */
    rpal_region *small, *two_;
    REQUIRE(rpal_region_create("small", 64 << 10, 0600, 0, &small) == 0);
    int err = rpal_region_create("h/one", GIB, 0600, RPAL_REGION_HUGE, &r);
    if (err < 0)
        fprintf(stderr, "create h/one: %s\n", rpal_strerror(err));
    REQUIRE(err == 0);
    uint64_t base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    CHECK(base % GIB == 0);
    CHECK(rpal_region_size(r) == GIB);
    CHECK(kernel_page_kib(base) == 2048);
    CHECK(data_files() == 1);
    volatile uint64_t *p = rpal_region_addr(r);
    p[0] = 0x1111;
    p[(GIB - 8) / 8] = 0x2222;
    CHECK(run_child("rw", "h/one", base) == 0);
    CHECK(p[1] == 0x3333);
    CHECK(p[(GIB / 2) / 8] == 0x4444);
    CHECK(run_child("ro", "h/one", base) == 0);
    /* One object, no layout. */
    CHECK_ERR(rpal_region_protect(r, 0, 2 << 20, PROT_READ, NULL), -EOPNOTSUPP);
    CHECK_ERR(rpal_region_unmap(r, 0, 2 << 20, NULL), -EOPNOTSUPP);
    CHECK_ERR(rpal_region_create("h/empty", GIB, 0600, RPAL_REGION_HUGE | RPAL_REGION_EMPTY, &two_),
              -EINVAL);

    struct rpal_region_info info;
    CHECK(rpal_region_stat("h/one", &info) == 0);
    CHECK(info.flags == RPAL_REGION_HUGE);
    CHECK(info.size == GIB && info.base == base);
    CHECK(info.nattached == 1); /* us */

    /* A second huge region, also on its own 1 GiB ranges. */
    rpal_region *two;
    REQUIRE(rpal_region_create("h/two", GIB, 0600, RPAL_REGION_HUGE, &two) == 0);
    uint64_t base2 = (uint64_t)(uintptr_t)rpal_region_addr(two);
    CHECK(base2 % GIB == 0 && base2 != base);
    CHECK(data_files() == 2);
    /* Without free huge pages for a third, it is refused. */
    if (rpal__prim_huge_avail(&avail) == 0 && avail < GIB / RPAL_HUGE_PAGE) {
        CHECK_ERR(rpal_region_create("h/three", GIB, 0600, RPAL_REGION_HUGE, &r), -ENOSPC);
        gone("h/three");
        CHECK(data_files() == 2);
    }
    CHECK(rpal_region_detach(two) == 0);

    /* Unlink takes the data file; the attached mapping stays usable. */
    CHECK(rpal_region_unlink("h/one") == 0);
    CHECK(data_files() == 1);
    CHECK(p[1] == 0x3333);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink("h/two") == 0);
    CHECK(data_files() == 0);

    /* gc: a transient huge region whose creator died goes with its data. */
    create_and_die("h/tr", RPAL_REGION_HUGE | RPAL_REGION_TRANSIENT);
    CHECK(data_files() == 1);
    CHECK(gc_count() == 1);
    gone("h/tr");
    CHECK(data_files() == 0);

    /* gc: a header removed by hand (its creator dead) leaves a reservation
     * and a data file, both removed. */
    create_and_die("h/orphan", RPAL_REGION_HUGE);
    char path[512];
    snprintf(path, sizeof path, "%s/h/orphan", getenv("RPAL_DIR"));
    CHECK(unlink(path) == 0);
    CHECK(data_files() == 1);
    CHECK(gc_count() == 2);
    CHECK(data_files() == 0);

    /* A persistent one whose creator died stays, data and all. */
    create_and_die("h/keep", RPAL_REGION_HUGE);
    CHECK(gc_count() == 0);
    CHECK(data_files() == 1);
    CHECK(rpal_region_stat("h/keep", &info) == 0);
    CHECK(info.flags == RPAL_REGION_HUGE && !info.creator_alive);
    CHECK(rpal_region_unlink("h/keep") == 0);
    CHECK(data_files() == 0);

    CHECK(rpal_region_detach(small) == 0);
    CHECK(rpal_region_unlink("small") == 0);
    return t_done();
}
