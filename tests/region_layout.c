/* Layout changes reach every sharer before the call returns. Eight
 * processes attach a region by name; one of them spins in a loop that makes
 * no rpal call (nor any system call). A protect to read-only, a file object
 * mapped, an unmap: each child checks, after the change returned in the
 * parent, that it sees it (a write faults, the file reads back, the
 * unmapped range faults). Then bad requests change nothing, and changes
 * from three processes at once are serialised.
 */
#include "testlib.h"

#include <fcntl.h>
#include <sys/mman.h>

#define NAME   "lay"
#define NCHILD 8
#define SIZE   (1u << 20)
#define PAGE   4096u
#define DATA   0u            /* anonymous, 64 KiB: the object we protect */
#define CTL    0x10000u      /* anonymous, one page, stays read-write */
#define FILEAT 0x20000u      /* a file object, 16 KiB */
#define TOGGLE 0x30000u      /* anonymous, 16 pages, for the concurrent part */

static uint64_t base;

static volatile uint64_t *word(uint64_t off)
{
    return (volatile uint64_t *)(uintptr_t)(base + off);
}

static char file_path[64];

/* ---- the children ---------------------------------------------------------- */

static int child(int id, int up, int down)
{
    t_catch_faults();
    if (t_get(down) != 'a')
        return 2;
    rpal_region *r;
    int err = rpal_region_attach(NAME, 0, &r);
    if (err != 0) {
        fprintf(stderr, "child %d: attach: %s\n", id, rpal_strerror(err));
        return 3;
    }
    base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    /* The layout as the parent left it: DATA filled, writable. */
    t_put(up, *word(DATA + 8) == 0x1234 && t_write_faults(base + DATA + 16, 7) == 0 ? 'A' : 'a');
    if (id == 0) {
        /* Busy: no rpal call, no system call, until the parent says. */
        word(CTL)[1] = 1;
        while (word(CTL)[0] == 0)
            ;
        word(CTL)[2] = t_write_faults(base + DATA + 8, 99) == SIGSEGV ? 'F' : 'W';
        word(CTL)[3] = *word(DATA + 8) == 0x1234 ? 'R' : 'x';
    }
    for (;;) {
        char c = t_get(down), res = '?';
        int code;
        switch (c) {
        case 'w': /* DATA is read-only now */
            res = t_write_faults(base + DATA + 8, 99) == SIGSEGV && *word(DATA + 8) == 0x1234
                      ? 'F' : 'W';
            break;
        case 'f': /* the file object */
            res = memcmp((const void *)(uintptr_t)(base + FILEAT), "FILEDATA", 8) == 0 &&
                          t_write_faults(base + FILEAT, 1) == SIGSEGV
                      ? 'R' : 'x';
            break;
        case 'u': /* DATA unmapped */
            res = t_read_faults(base + DATA, &code) == SIGSEGV ? 'F' : 'x';
            break;
        case 't': { /* toggle our page of TOGGLE */
            err = 0;
            uint64_t at = TOGGLE + (uint64_t)id * PAGE;
            for (int i = 0; i < 20 && err == 0; i++)
                err = rpal_region_protect(r, at, PAGE,
                                          i % 2 ? PROT_READ | PROT_WRITE : PROT_READ, NULL);
            res = err == 0 ? 'T' : 'x';
            if (err)
                fprintf(stderr, "child %d: protect: %s\n", id, rpal_strerror(err));
            break;
        }
        case 'q':
        case 0:
            rpal_region_detach(r);
            return 0;
        }
        t_put(up, res);
    }
}

/* ---- the parent -------------------------------------------------------------- */

static pid_t kids[NCHILD];
static int down[NCHILD], up_rd;

static void tell(int i, char c) { t_put(down[i], c); }

/* Send C to children FROM..NCHILD-1 and check each answers WANT. */
static void ask(int from, char c, char want, const char *what)
{
    for (int i = from; i < NCHILD; i++)
        tell(i, c);
    for (int i = from; i < NCHILD; i++) {
        char got = t_get(up_rd);
        if (got != want) {
            fprintf(stderr, "%s: a child answered '%c', want '%c'\n", what, got ? got : '0',
                    want);
            t_failures++;
        }
    }
}

static uint32_t generation(void)
{
    uint32_t g = 0;
    struct rpal_region_object o[8];
    REQUIRE(rpal_region_layout(NAME, &g, o, 8) >= 0);
    return g;
}

static void check_change(const struct rpal_region_change *c, unsigned applied, const char *what)
{
    if (c->applied != applied || c->failed || c->dead || c->detached) {
        fprintf(stderr, "%s: applied %u failed %u dead %u detached %u, want %u applied\n",
                what, c->applied, c->failed, c->dead, c->detached, applied);
        t_failures++;
    }
}

static void bad_requests(rpal_region *r)
{
    uint32_t g = generation();
    struct rpal_region_object before[16], after[16];
    int n = rpal_region_layout(NAME, NULL, before, 16);
    CHECK(n > 0);
    CHECK_ERR(rpal_region_map(r, CTL, PAGE, PROT_READ, -1, 0, NULL), -EEXIST);
    CHECK_ERR(rpal_region_map(r, CTL - PAGE, 2 * PAGE, PROT_READ, -1, 0, NULL), -EEXIST);
    CHECK_ERR(rpal_region_map(r, SIZE - PAGE, 2 * PAGE, PROT_READ, -1, 0, NULL), -ERANGE);
    CHECK_ERR(rpal_region_map(r, SIZE, PAGE, PROT_READ, -1, 0, NULL), -ERANGE);
    CHECK_ERR(rpal_region_map(r, UINT64_MAX - PAGE + 1, PAGE, PROT_READ, -1, 0, NULL), -ERANGE);
    CHECK_ERR(rpal_region_map(r, 100, PAGE, PROT_READ, -1, 0, NULL), -EINVAL);
    CHECK_ERR(rpal_region_map(r, 0x80000, 100, PROT_READ, -1, 0, NULL), -EINVAL);
    CHECK_ERR(rpal_region_map(r, 0x80000, 0, PROT_READ, -1, 0, NULL), -EINVAL);
    CHECK_ERR(rpal_region_map(r, 0x80000, PAGE, 0x100, -1, 0, NULL), -EINVAL);
    CHECK_ERR(rpal_region_map(r, 0x80000, PAGE, PROT_READ, -1, PAGE, NULL), -EINVAL);
    CHECK_ERR(rpal_region_map(r, 0x80000, PAGE, PROT_READ, 0x7ffff, 0, NULL), -EBADF);
    CHECK_ERR(rpal_region_protect(r, DATA, PAGE, PROT_READ, NULL), -ENXIO); /* unmapped */
    CHECK_ERR(rpal_region_protect(r, CTL, 2 * PAGE, PROT_READ, NULL), -ENXIO); /* a hole after */
    CHECK_ERR(rpal_region_unmap(r, CTL - PAGE, 2 * PAGE, NULL), -ENXIO);
    CHECK_ERR(rpal_region_unmap(r, SIZE - PAGE, 2 * PAGE, NULL), -ERANGE);
    CHECK_ERR(rpal_region_protect(NULL, CTL, PAGE, PROT_READ, NULL), -EINVAL);
    /* A file opened read-only cannot be made writable. */
    CHECK_ERR(rpal_region_protect(r, FILEAT, PAGE, PROT_READ | PROT_WRITE, NULL), -EACCES);
    int fd = open(file_path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK_ERR(rpal_region_map(r, 0x80000, PAGE, PROT_READ | PROT_WRITE, fd, 0, NULL), -EACCES);
    close(fd);
    CHECK(generation() == g);
    CHECK(rpal_region_layout(NAME, NULL, after, 16) == n);
    CHECK(memcmp(before, after, (size_t)n * sizeof *after) == 0);
}

int main(void)
{
    t_init();
    alarm(60);
    int up[2];
    REQUIRE(pipe(up) == 0);
    up_rd = up[0];
    for (int i = 0; i < NCHILD; i++) {
        int d[2];
        REQUIRE(pipe(d) == 0);
        kids[i] = fork();
        REQUIRE(kids[i] >= 0);
        if (kids[i] == 0) {
            close(up[0]);
            close(d[1]);
            _exit(child(i, up[1], d[0]));
        }
        close(d[0]);
        down[i] = d[1];
    }
    close(up[1]);
    t_catch_faults();

    rpal_region *r;
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    int code;
    CHECK(t_read_faults(base, &code) == SIGSEGV); /* empty: nothing mapped */
    struct rpal_region_change chg = {0};
    CHECK_ERR(rpal_region_map(r, DATA, 0x10000, PROT_READ | PROT_WRITE, -1, 0, &chg), 0);
    check_change(&chg, 0, "first map");
    CHECK_ERR(rpal_region_map(r, CTL, PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    *word(DATA + 8) = 0x1234;

    /* Eight late attachers get the layout. */
    for (int i = 0; i < NCHILD; i++)
        tell(i, 'a');
    for (int i = 0; i < NCHILD; i++)
        CHECK(t_get(up_rd) == 'A');
    while (word(CTL)[1] == 0) /* child 0 is in its busy loop */
        usleep(1000);

    /* Read-only, for everyone at once. */
    CHECK_ERR(rpal_region_protect(r, DATA, 0x10000, PROT_READ, &chg), 0);
    check_change(&chg, NCHILD, "protect");
    CHECK(t_write_faults(base + DATA + 8, 5) == SIGSEGV);
    word(CTL)[0] = 1;
    ask(1, 'w', 'F', "write after protect");
    for (int i = 0; i < 2000 && word(CTL)[3] == 0; i++)
        usleep(1000);
    CHECK(word(CTL)[2] == 'F'); /* the busy child's write faulted */
    CHECK(word(CTL)[3] == 'R');

    /* A file object, opened through the changer's descriptor. */
    snprintf(file_path, sizeof file_path, "/dev/shm/rpal-layfile-XXXXXX");
    int fd = mkstemp(file_path);
    REQUIRE(fd >= 0);
    char buf[4 * PAGE];
    memset(buf, 'z', sizeof buf);
    memcpy(buf, "FILEDATA", 8);
    REQUIRE(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf);
    close(fd);
    fd = open(file_path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK_ERR(rpal_region_map(r, FILEAT, sizeof buf, PROT_READ, fd, 0, &chg), 0);
    check_change(&chg, NCHILD, "map file");
    close(fd);
    CHECK(memcmp((void *)(uintptr_t)(base + FILEAT), "FILEDATA", 8) == 0);
    ask(0, 'f', 'R', "file object");

    struct rpal_region_object o[8];
    uint32_t g0;
    int n = rpal_region_layout(NAME, &g0, o, 8);
    CHECK(n == 3);
    if (n == 3) {
        CHECK(o[0].offset == DATA && o[0].length == 0x10000 && o[0].kind == RPAL_OBJ_ANON &&
              o[0].prot == PROT_READ);
        CHECK(o[1].offset == CTL && o[1].prot == (PROT_READ | PROT_WRITE));
        CHECK(o[2].offset == FILEAT && o[2].kind == RPAL_OBJ_FILE && o[2].length == sizeof buf &&
              strcmp(o[2].path, file_path) == 0);
    }

    /* Unmap: the range faults everywhere. */
    CHECK_ERR(rpal_region_unmap(r, DATA, 0x10000, &chg), 0);
    check_change(&chg, NCHILD, "unmap");
    CHECK(t_read_faults(base + DATA, &code) == SIGSEGV);
    ask(0, 'u', 'F', "read after unmap");

    bad_requests(r);

    /* Three processes change the layout at once: every change counts. */
    CHECK_ERR(rpal_region_map(r, TOGGLE, 16 * PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    uint32_t g1 = generation();
    tell(1, 't');
    tell(2, 't');
    int err = 0;
    for (int i = 0; i < 20 && err == 0; i++)
        err = rpal_region_protect(r, TOGGLE + 15 * PAGE, PAGE,
                                  i % 2 ? PROT_READ | PROT_WRITE : PROT_READ, NULL);
    CHECK_ERR(err, 0);
    CHECK(t_get(up_rd) == 'T');
    CHECK(t_get(up_rd) == 'T');
    CHECK(generation() == g1 + 60);
    n = rpal_region_layout(NAME, NULL, o, 8);
    CHECK(n == 3); /* CTL, FILEAT, and TOGGLE merged back into one object */
    if (n == 3)
        CHECK(o[2].offset == TOGGLE && o[2].length == 16 * PAGE &&
              o[2].prot == (PROT_READ | PROT_WRITE));
    CHECK(t_write_faults(base + TOGGLE + 15 * PAGE, 1) == 0);

    for (int i = 0; i < NCHILD; i++) {
        tell(i, 'q');
        close(down[i]);
    }
    for (int i = 0; i < NCHILD; i++)
        CHECK(t_wait(kids[i]) == 0);
    close(up_rd);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    unlink(file_path);
    return t_done();
}
