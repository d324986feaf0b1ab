/* Bad input gets a clear negative errno and changes nothing.
 *
 * Every failing call below is checked twice: for the exact errno of the
 * contract, and for leaving the namespace as it was. The namespace is
 * snapshotted (every path, hidden ones included, with its type, mode, size and
 * inode, the content of small files such as the address registry, and the
 * header and data of region files) together with this process's mappings
 * inside the rpal window, so that a failed call that leaves a directory, a
 * registry change or a stray mapping behind is caught. A failed call must not
 * write *out either. */
#include "testlib.h"
#include "internal.h" /* the window: elsewhere in a ThreadSanitizer build */

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stddef.h>
#include <sys/mman.h>

#define GRANULE (2ull << 20)
#define PAGE 4096ull
#define WINDOW_LO RPAL_WINDOW_BASE
#define WINDOW_HI (RPAL_WINDOW_BASE + RPAL_REGION_WINDOW_SIZE)

/* The on-disk header as the format defines it (struct region_hdr). */
struct hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t granule;
    uint64_t base;
    uint64_t size;
    uint32_t flags;
    int32_t creator_pid;
    uint32_t creator_uid;
    uint32_t reserved0;
    uint64_t creator_start;
    uint64_t created_ns;
    uint64_t check;
};
_Static_assert(offsetof(struct hdr, version) == 8, "version at byte 8");
_Static_assert(sizeof(struct hdr) == 80, "header layout");

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static void hdr_fix(struct hdr *h)
{
    h->check = fnv1a(h, offsetof(struct hdr, check));
}

/* ---- paths ---------------------------------------------------------------- */

static char ns[PATH_MAX];
static size_t ns_len;

static const char *nspath(const char *rel)
{
    static char buf[4][PATH_MAX];
    static unsigned k;
    char *b = buf[k];
    k = (k + 1) % 4;
    int n = snprintf(b, PATH_MAX, "%s/%s", ns, rel);
    REQUIRE(n > 0 && n < PATH_MAX);
    return b;
}

/* ---- the snapshot --------------------------------------------------------- */

struct snap {
    char **l;
    size_t n, cap;
};

static struct snap *cur; /* nftw has no user argument */

static void sadd(struct snap *s, const char *fmt, ...)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->l = realloc(s->l, s->cap * sizeof *s->l);
        REQUIRE(s->l);
    }
    va_list ap;
    va_start(ap, fmt);
    REQUIRE(vasprintf(&s->l[s->n], fmt, ap) >= 0);
    va_end(ap);
    s->n++;
}

static void sfree(struct snap *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->l[i]);
    free(s->l);
    memset(s, 0, sizeof *s);
}

static uint64_t hash_range(int fd, off_t off, off_t end, uint64_t h)
{
    static unsigned char buf[1 << 16];
    while (off < end) {
        size_t want = (size_t)(end - off) < sizeof buf ? (size_t)(end - off)
                                                       : sizeof buf;
        ssize_t n = pread(fd, buf, want, off);
        if (n <= 0)
            return h ^ 0xdead;
        size_t i = 0;
        for (; i + 8 <= (size_t)n; i += 8) {
            uint64_t w;
            memcpy(&w, buf + i, 8);
            h = (h ^ w) * 0x100000001b3ull;
            h ^= h >> 29;
        }
        for (; i < (size_t)n; i++)
            h = (h ^ buf[i]) * 0x100000001b3ull;
        off += n;
    }
    return h;
}

/* Small files (the registry) are hashed whole; a region file by its header
 * page and its data, skipping the hole between them. */
static uint64_t file_hash(const char *path, off_t size)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    if (size < (off_t)GRANULE) {
        h = hash_range(fd, 0, size, h);
    } else {
        h = hash_range(fd, 0, PAGE, h);
        off_t end = size < (off_t)(GRANULE + (16u << 20)) ? size
                                                           : (off_t)(GRANULE + (16u << 20));
        h = hash_range(fd, GRANULE, end, h);
    }
    close(fd);
    return h;
}

static int snap_cb(const char *path, const struct stat *st, int type,
                   struct FTW *ftw)
{
    (void)type;
    (void)ftw;
    const char *rel = path + ns_len;
    if (!*rel)
        rel = "/";
    if (S_ISREG(st->st_mode)) {
        sadd(cur, "%s mode=%o size=%lld ino=%llu hash=%016llx", rel,
             (unsigned)st->st_mode, (long long)st->st_size,
             (unsigned long long)st->st_ino,
             (unsigned long long)file_hash(path, st->st_size));
    } else if (S_ISLNK(st->st_mode)) {
        char t[PATH_MAX];
        ssize_t n = readlink(path, t, sizeof t - 1);
        t[n < 0 ? 0 : n] = 0;
        sadd(cur, "%s mode=%o ino=%llu -> %s", rel, (unsigned)st->st_mode,
             (unsigned long long)st->st_ino, t);
    } else {
        sadd(cur, "%s mode=%o size=%lld ino=%llu", rel, (unsigned)st->st_mode,
             (long long)st->st_size, (unsigned long long)st->st_ino);
    }
    return 0;
}

static int cmp_line(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void snap_take(struct snap *s)
{
    memset(s, 0, sizeof *s);
    cur = s;
    REQUIRE(nftw(ns, snap_cb, 32, FTW_PHYS) == 0);
    /* What a failed attach or create may leave mapped in this process. */
    FILE *f = fopen("/proc/self/maps", "re");
    REQUIRE(f);
    char line[512];
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo;
        if (sscanf(line, "%llx-", &lo) == 1 && lo >= WINDOW_LO && lo < WINDOW_HI) {
            line[strcspn(line, "\n")] = 0;
            sadd(s, "~maps %s", line);
        }
    }
    fclose(f);
    qsort(s->l, s->n, sizeof *s->l, cmp_line);
}

static int snap_equal(const struct snap *a, const struct snap *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->l[i], b->l[i]))
            return 0;
    return 1;
}

/* Print what differs. */
static void snap_diff(const struct snap *a, const struct snap *b)
{
    size_t i = 0, j = 0;
    while (i < a->n || j < b->n) {
        int c = i == a->n ? 1 : j == b->n ? -1 : strcmp(a->l[i], b->l[j]);
        if (c == 0) {
            i++, j++;
            continue;
        }
        if (c < 0)
            fprintf(stderr, "      before: %s\n", a->l[i++]);
        else
            fprintf(stderr, "      after:  %s\n", b->l[j++]);
    }
}

/* ---- checking a bad call -------------------------------------------------- */

static struct snap expected; /* the namespace as the test itself left it */

/* The test changed the namespace on purpose: this is the new baseline. */
static void settle(void)
{
    sfree(&expected);
    snap_take(&expected);
}

#define ANYNEG 1L /* any negative errno will do */
#define OUT_UNTOUCHED ((rpal_region *)(uintptr_t)0x5a5a5a5a5a50ull)
static rpal_region *out_ = OUT_UNTOUCHED;
static struct rpal_region_info info_;

static int diff_always; /* print this case's changes in full */

/* The case a loop is at, printed with its failures. */
static const char *what_;

static const char *shown(void)
{
    static char buf[96];
    if (!what_)
        return "";
    size_t k = 0;
    buf[k++] = ' ', buf[k++] = '[';
    const unsigned char *c = (const unsigned char *)what_;
    for (; *c && k < 70; c++) {
        if (*c >= 0x20 && *c < 0x7f)
            buf[k++] = (char)*c;
        else
            k += (size_t)snprintf(buf + k, 5, "\\x%02x", *c);
    }
    if (*c)
        buf[k++] = '.', buf[k++] = '.', buf[k++] = '.';
    buf[k++] = ']';
    buf[k] = 0;
    return buf;
}

static char whatbuf[64];
#define WHAT(...) (snprintf(whatbuf, sizeof whatbuf, __VA_ARGS__), what_ = whatbuf)

static void bad_(int line, const char *text, long got, long w1, long w2)
{
    int ok = w1 == ANYNEG ? got < 0 : (got == w1 || got == w2);
    if (!ok) {
        fprintf(stderr, "%s:%d: %s%s returned %ld (%s), want %ld (%s)", __FILE__,
                line, text, shown(), got, rpal_strerror((int)got),
                w1 == ANYNEG ? -1 : w1, w1 == ANYNEG ? "any error" : rpal_strerror((int)w1));
        if (w2 != w1)
            fprintf(stderr, " or %ld (%s)", w2, rpal_strerror((int)w2));
        fprintf(stderr, "\n");
        t_failures++;
    }
    if (got == 0 && out_ != OUT_UNTOUCHED && out_ != NULL) {
        rpal_region_detach(out_); /* an unexpected success: keep going */
    } else if (out_ != OUT_UNTOUCHED) {
        fprintf(stderr, "%s:%d: %s%s failed but wrote *out (%p)\n", __FILE__,
                line, text, shown(), (void *)out_);
        t_failures++;
    }
    out_ = OUT_UNTOUCHED;
    struct snap now;
    snap_take(&now);
    if (got < 0 && !snap_equal(&expected, &now)) {
        /* The details of the first few; the runner shows only the tail. */
        static int shown_diffs;
        if (diff_always)
            shown_diffs = 0;
        fprintf(stderr, "%s:%d: %s%s (returned %ld) changed the namespace or "
                "the process's mappings%s\n", __FILE__, line, text, shown(), got,
                shown_diffs < 3 ? ":" : "");
        if (shown_diffs++ < 3)
            snap_diff(&expected, &now);
        t_failures++;
    }
    sfree(&expected);
    expected = now;
}

#define BAD(call, want) bad_(__LINE__, #call, (long)(call), (long)(want), (long)(want))
#define BAD2(call, w1, w2) bad_(__LINE__, #call, (long)(call), (long)(w1), (long)(w2))

/* ---- the cases ------------------------------------------------------------ */

/* Names that break the grammar: -EINVAL wherever a name is taken. */
static const char *const einval_names[] = {
    "", "/", "/x", "//x", "/tmp/x", ".", "..", "./a", "../a", "../../etc/passwd",
    "a/.", "a/..", "a/./b", "a/../b", "a/../../b", "a//b", "a/", "a//", "//",
    ".hidden", "a/.b", ".rpal-registry", "a b", "a\\b", "a:b", "a*", "a?",
    "a\nb", "a\tb", "a~", "a$b", "a%b", "a\"b", "a'b", "a\xc3\xa9", "a\x7f",
    "\xff", "a,b", "a@b", "a+b",
};

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    REQUIRE(s);
    memset(s, c, n);
    s[n] = 0;
    return s;
}

/* A name of exactly LEN bytes made of components of at most 64. */
static char *long_name(size_t len)
{
    char *s = repeat('n', len);
    for (size_t i = 64; i < len; i += 65)
        s[i] = '/';
    if (s[len - 1] == '/')
        s[len - 1] = 'n', s[len - 2] = '/';
    return s;
}

/* Every entry point that takes a name refuses NAME with WANT. */
#define BAD_NAME(name, want)                                                   \
    do {                                                                       \
        what_ = (name) ? (name) : "NULL";                                      \
        BAD(rpal_region_create((name), 4096, 0600, 0, &out_), (want));        \
        BAD(rpal_region_create((name), 4096, 0600, RPAL_REGION_TRANSIENT,    \
                               &out_), (want));                                \
        BAD(rpal_region_attach((name), 0, &out_), (want));                     \
        BAD(rpal_region_attach((name), RPAL_REGION_RDONLY, &out_), (want));    \
        BAD(rpal_region_unlink((name)), (want));                               \
        BAD(rpal_region_stat((name), &info_), (want));                         \
        what_ = NULL;                                                          \
    } while (0)

static void bad_names(void)
{
    for (size_t i = 0; i < sizeof einval_names / sizeof *einval_names; i++) {
        const char *n = einval_names[i];
        BAD_NAME(n, -EINVAL);
    }
    BAD_NAME(NULL, -EINVAL);

    char *n201 = long_name(RPAL_NAME_MAX + 1);
    BAD_NAME(n201, -ENAMETOOLONG);
    char *n4k = long_name(4096);
    BAD_NAME(n4k, -ENAMETOOLONG);
    char *c65 = repeat('c', 65);
    BAD_NAME(c65, -ENAMETOOLONG);
    char *c65in = malloc(80);
    REQUIRE(c65in);
    snprintf(c65in, 80, "dir/%s/x", c65);
    BAD_NAME(c65in, -ENAMETOOLONG);
    free(n201);
    free(n4k);
    free(c65);
    free(c65in);
}

/* Sizes, modes and flags, with a name that is valid and free. */
static void bad_args(void)
{
    const char *n = "fresh/never";
    static const size_t sizes[] = {0, 1, 100, 4095, 4097, 8191, 4096 * 3 + 1,
                                   GRANULE + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        WHAT("size %zu", sizes[i]);
        BAD(rpal_region_create(n, sizes[i], 0600, 0, &out_), -EINVAL);
    }
    BAD(rpal_region_create(n, (size_t)1 << 45, 0600, 0, &out_), -EFBIG);
    BAD(rpal_region_create(n, (size_t)1 << 50, 0600, 0, &out_), -EFBIG);
    BAD(rpal_region_create(n, SIZE_MAX & ~(size_t)4095, 0600, 0, &out_), -EFBIG);
    BAD(rpal_region_create(n, ((size_t)1 << 44) + 4096, 0600, 0, &out_), -EFBIG);
    /* Exactly the window cannot hold the header granule as well. */
    BAD2(rpal_region_create(n, (size_t)1 << 44, 0600, 0, &out_), -EFBIG, -ENOSPC);

    static const unsigned modes[] = {01000, 02000, 04000, 07777, 01600, 010000,
                                     0100600, 0x80000000u, ~0u};
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) {
        WHAT("mode %#o", modes[i]);
        BAD(rpal_region_create(n, 4096, modes[i], 0, &out_), -EINVAL);
    }

    /* RPAL_REGION_HUGE (0x4) and RPAL_REGION_EMPTY (0x10) are create flags
     * (tests/region_huge.c, tests/region_layout.c); together they are not. */
    static const unsigned cflags[] = {0x8, 0x20, 0x100, 0x80000000u,
                                      RPAL_REGION_TRANSIENT | 0x8,
                                      RPAL_REGION_HUGE | RPAL_REGION_EMPTY, ~0u};
    for (size_t i = 0; i < sizeof cflags / sizeof *cflags; i++) {
        WHAT("flags %#x", cflags[i]);
        BAD(rpal_region_create(n, 4096, 0600, cflags[i], &out_), -EINVAL);
    }
    what_ = NULL;

    BAD(rpal_region_attach("fresh/never", 0, &out_), -ENOENT);
    BAD(rpal_region_attach("never", RPAL_REGION_RDONLY, &out_), -ENOENT);
    BAD(rpal_region_attach("no/such/dir/x", 0, &out_), -ENOENT);
}

/* Plant a file at REL with header H (as is) and SIZE bytes in all; HLEN is
 * how much of the header to write. */
static void plant(const char *rel, const struct hdr *h, size_t hlen, off_t size)
{
    int fd = open(nspath(rel), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, size) == 0);
    if (hlen)
        REQUIRE(pwrite(fd, h, hlen, 0) == (ssize_t)hlen);
    close(fd);
}

static void bad_files(const struct hdr *good)
{
    off_t full = (off_t)(GRANULE + good->size);
    struct hdr h;
    REQUIRE(mkdir(nspath("bad"), 0700) == 0);

    /* Truncated, empty or grown. */
    plant("bad/empty", good, 0, 0);
    plant("bad/ten", good, 10, 10);
    plant("bad/hdronly", good, sizeof *good, sizeof *good);
    plant("bad/page", good, sizeof *good, PAGE);
    plant("bad/granule", good, sizeof *good, GRANULE);
    plant("bad/short", good, sizeof *good, full - PAGE);
    plant("bad/short1", good, sizeof *good, full - 1);
    plant("bad/long", good, sizeof *good, full + PAGE);
    plant("bad/long1", good, sizeof *good, full + 1);
    plant("bad/zeros", &(struct hdr){0}, sizeof h, full);

    /* Magic and checksum. */
    h = *good, h.magic ^= 1;
    plant("bad/magic", &h, sizeof h, full);
    h = *good, h.magic ^= 1, hdr_fix(&h);
    plant("bad/magicfix", &h, sizeof h, full);
    h = *good, memcpy(&h.magic, "RPALREG2", 8), hdr_fix(&h);
    plant("bad/magic2", &h, sizeof h, full);
    h = *good, h.created_ns ^= 1;
    plant("bad/check", &h, sizeof h, full);
    h = *good, h.check ^= 1ull << 63;
    plant("bad/check2", &h, sizeof h, full);
    h = *good, h.creator_pid ^= 4;
    plant("bad/check3", &h, sizeof h, full);

    /* Fields that pass the checksum but not the format (principle 3). */
    h = *good, h.hdr_size = 72, hdr_fix(&h);
    plant("bad/hdrsize", &h, sizeof h, full);
    h = *good, h.granule = PAGE, hdr_fix(&h);
    plant("bad/granule4k", &h, sizeof h, (off_t)(PAGE + h.size));
    h = *good, h.base += PAGE, hdr_fix(&h);
    plant("bad/misaligned", &h, sizeof h, full);
    h = *good, h.base = 0, hdr_fix(&h);
    plant("bad/base0", &h, sizeof h, full);
    h = *good, h.base = 0x7f0000000000ull, hdr_fix(&h);
    plant("bad/basehigh", &h, sizeof h, full);
    h = *good, h.base = WINDOW_LO, hdr_fix(&h); /* header would fall below */
    plant("bad/basebelow", &h, sizeof h, full);
    h = *good, h.base = WINDOW_HI - GRANULE,
    h.size = 2 * GRANULE, hdr_fix(&h); /* data runs past the window's end */
    plant("bad/pastend", &h, sizeof h, (off_t)(GRANULE + h.size));
    h = *good, h.size = 0, hdr_fix(&h);
    plant("bad/size0", &h, sizeof h, GRANULE);
    h = *good, h.size = 100, hdr_fix(&h);
    plant("bad/size100", &h, sizeof h, GRANULE + 100);
    h = *good, h.size = 1ull << 45, hdr_fix(&h);
    plant("bad/sizehuge", &h, sizeof h, full);
    h = *good, h.size += PAGE, hdr_fix(&h); /* file shorter than its header says */
    plant("bad/sizebig", &h, sizeof h, full);
    h = *good, h.flags = 0x80, hdr_fix(&h);
    plant("bad/flags", &h, sizeof h, full);

    /* The version is checked right after the magic, before the checksum. */
    h = *good, h.version = 2;
    plant("bad/v2", &h, sizeof h, full);
    h = *good, h.version = 2, hdr_fix(&h);
    plant("bad/v2fix", &h, sizeof h, full);
    h = *good, h.version = 0, hdr_fix(&h);
    plant("bad/v0", &h, sizeof h, full);
    h = *good, h.version = ~0u;
    plant("bad/vmax", &h, sizeof h, full);
    h = *good, h.version = 2, h.size = 12345; /* other fields bad as well */
    plant("bad/v2junk", &h, sizeof h, 4 * PAGE);
    settle();

    static const char *const ebadmsg[] = {
        "bad/empty", "bad/ten", "bad/hdronly", "bad/page", "bad/granule",
        "bad/short", "bad/short1", "bad/long", "bad/long1", "bad/zeros",
        "bad/magic", "bad/magicfix", "bad/magic2", "bad/check", "bad/check2",
        "bad/check3", "bad/hdrsize", "bad/granule4k", "bad/misaligned",
        "bad/base0", "bad/basehigh", "bad/basebelow", "bad/pastend",
        "bad/size0", "bad/size100", "bad/sizehuge", "bad/sizebig", "bad/flags",
    };
    for (size_t i = 0; i < sizeof ebadmsg / sizeof *ebadmsg; i++) {
        what_ = ebadmsg[i];
        BAD(rpal_region_attach(ebadmsg[i], 0, &out_), -EBADMSG);
        BAD(rpal_region_attach(ebadmsg[i], RPAL_REGION_RDONLY, &out_), -EBADMSG);
    }
    static const char *const eproto[] = {"bad/v2", "bad/v2fix", "bad/v0",
                                         "bad/vmax", "bad/v2junk"};
    for (size_t i = 0; i < sizeof eproto / sizeof *eproto; i++) {
        what_ = eproto[i];
        BAD(rpal_region_attach(eproto[i], 0, &out_), -EPROTO);
        BAD(rpal_region_attach(eproto[i], RPAL_REGION_RDONLY, &out_), -EPROTO);
    }
    what_ = NULL;
    /* A name that exists, whatever it holds, is not created over. */
    BAD(rpal_region_create("bad/magic", 4096, 0600, 0, &out_), -EEXIST);
    BAD(rpal_region_create("bad/empty", 4096, 0600, 0, &out_), -EEXIST);
}

/* A directory outside the namespace, that nothing may create into. */
static char outside[] = "/dev/shm/rpal-outside-XXXXXX";

/* Directories, FIFOs and symlinks planted where a region is looked for. */
static void bad_nodes(void)
{
    REQUIRE(mkfifo(nspath("fifo"), 0600) == 0);
    REQUIRE(mkfifo(nspath("sub/fifo"), 0666) == 0);
    REQUIRE(symlink("good", nspath("lnk")) == 0);
    REQUIRE(symlink(nspath("good"), nspath("labs")) == 0);
    REQUIRE(symlink("sub", nspath("lsub")) == 0);
    REQUIRE(symlink(nspath("sub"), nspath("lsubabs")) == 0);
    REQUIRE(symlink("..", nspath("sub/up")) == 0);
    REQUIRE(symlink("good2", nspath("sub/lgood2")) == 0);
    REQUIRE(symlink("b", nspath("deep/a/lb")) == 0);
    REQUIRE(symlink("nowhere", nspath("ldangling")) == 0);
    REQUIRE(symlink(outside, nspath("lout")) == 0);
    REQUIRE(symlink(".", nspath("lself")) == 0);
    settle();

    /* A FIFO must be refused without blocking on it (alarm() set in main). */
    BAD(rpal_region_attach("fifo", 0, &out_), -EBADMSG);
    BAD(rpal_region_attach("fifo", RPAL_REGION_RDONLY, &out_), -EBADMSG);
    BAD(rpal_region_attach("sub/fifo", 0, &out_), -EBADMSG);
    BAD(rpal_region_attach("sub/fifo", RPAL_REGION_RDONLY, &out_), -EBADMSG);
    BAD(rpal_region_create("fifo", 4096, 0600, 0, &out_), -EEXIST);

    BAD(rpal_region_attach("sub", 0, &out_), -EISDIR);
    BAD(rpal_region_attach("sub", RPAL_REGION_RDONLY, &out_), -EISDIR);
    BAD(rpal_region_attach("deep/a", 0, &out_), -EISDIR);
    BAD(rpal_region_attach("deep/a/b", RPAL_REGION_RDONLY, &out_), -EISDIR);
    BAD(rpal_region_create("sub", 4096, 0600, 0, &out_), -EEXIST);
    BAD(rpal_region_create("deep/a", 4096, 0755, 0, &out_), -EEXIST);

    /* Symlinks are never followed, even to a valid region inside the
     * namespace: as the leaf or on the way. */
    static const char *const eloop[] = {
        "lnk", "labs", "lsub/good2", "lsubabs/good2", "sub/up/good",
        "sub/lgood2", "deep/a/lb/c", "lself/good", "lself/sub/good2",
    };
    for (size_t i = 0; i < sizeof eloop / sizeof *eloop; i++) {
        what_ = eloop[i];
        BAD(rpal_region_attach(eloop[i], 0, &out_), -ELOOP);
        BAD(rpal_region_attach(eloop[i], RPAL_REGION_RDONLY, &out_), -ELOOP);
        BAD(rpal_region_stat(eloop[i], &info_), -ELOOP);
    }
    what_ = NULL;
    BAD2(rpal_region_attach("ldangling", 0, &out_), -ELOOP, -ENOENT);
    BAD(rpal_region_attach("lout/x", 0, &out_), -ELOOP);
    BAD(rpal_region_unlink("lsub/good2"), -ELOOP);
    BAD(rpal_region_unlink("lsubabs/good2"), -ELOOP);
    BAD(rpal_region_unlink("sub/up/good"), -ELOOP);

    /* Creating through a symlink would write where the link points. */
    BAD(rpal_region_create("lsub/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_create("lsubabs/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_create("sub/up/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_create("lself/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_create("lout/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_create("lout/d/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_create("lsub/d/e/new", 4096, 0600, 0, &out_), -ELOOP);
    BAD2(rpal_region_create("lnk", 4096, 0600, 0, &out_), -EEXIST, -ELOOP);
    BAD2(rpal_region_create("ldangling", 4096, 0600, 0, &out_), -EEXIST, -ELOOP);
    BAD2(rpal_region_create("lout", 4096, 0600, 0, &out_), -EEXIST, -ELOOP);
    BAD2(rpal_region_create("sub/lgood2", 4096, 0600, 0, &out_), -EEXIST, -ELOOP);

    /* A region file used as a directory. */
    BAD(rpal_region_create("good/x", 4096, 0600, 0, &out_), ANYNEG);
    BAD(rpal_region_attach("good/x", 0, &out_), ANYNEG);
}

static void *map_page_at(uint64_t addr)
{
    void *p = mmap((void *)(uintptr_t)addr, PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    REQUIRE(p == (void *)(uintptr_t)addr);
    memset(p, 0xa5, PAGE);
    return p;
}

static void check_page(const void *p)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < PAGE; i++)
        if (b[i] != 0xa5) {
            fprintf(stderr, "our page at %p was overwritten\n", p);
            t_failures++;
            return;
        }
}

/* The region's address range is already taken in this process. */
static void bad_addr(const char *name, size_t size)
{
    rpal_region *r;
    REQUIRE(rpal_region_attach(name, 0, &r) == 0);
    uint64_t base = (uint64_t)(uintptr_t)rpal_region_addr(r);
    unsigned char *d = rpal_region_addr(r);
    settle();
    BAD(rpal_region_attach(name, 0, &out_), -EADDRINUSE);
    BAD(rpal_region_attach(name, RPAL_REGION_RDONLY, &out_), -EADDRINUSE);
    /* The failed attaches did not unmap the first one. */
    d[0] ^= 0xff;
    d[size - 1] ^= 0xff;
    d[0] ^= 0xff;
    d[size - 1] ^= 0xff;
    CHECK(memcmp(d - GRANULE, "RPALREG1", 8) == 0);
    CHECK(rpal_region_detach(r) == 0);

    const uint64_t at[] = {base - GRANULE, base, base + size / 2 / PAGE * PAGE,
                           base + size - PAGE};
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        WHAT("page at base%+lld", (long long)(at[i] - base));
        void *p = map_page_at(at[i]);
        settle();
        BAD(rpal_region_attach(name, 0, &out_), -EADDRINUSE);
        BAD(rpal_region_attach(name, RPAL_REGION_RDONLY, &out_), -EADDRINUSE);
        check_page(p);
        munmap(p, PAGE);
        /* Nothing of the failed attach was left behind in the way. */
        CHECK_ERR(rpal_region_attach(name, 0, &r), 0);
        CHECK(rpal_region_detach(r) == 0);
    }
    what_ = NULL;
    settle();
}

/* The registry's next-fit cursor (struct reg_file: magic, version, cap,
 * cursor at byte 16): where the next region will be placed. */
static uint64_t registry_cursor(void)
{
    uint64_t c = 0;
    int fd = open(nspath(".rpal-registry"), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (pread(fd, &c, 8, 16) != 8)
            c = 0;
        close(fd);
    }
    return c;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7 + seed);
}

static int filled(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 7 + seed))
            return 0;
    return 1;
}

static void make_region(const char *name, size_t size, unsigned mode,
                        unsigned seed)
{
    rpal_region *r;
    int err = rpal_region_create(name, size, mode, 0, &r);
    if (err < 0) {
        fprintf(stderr, "create %s: %s\n", name, rpal_strerror(err));
        exit(1);
    }
    fill(rpal_region_addr(r), size, seed);
    REQUIRE(rpal_region_detach(r) == 0);
}

static void check_region(const char *name, size_t size, unsigned seed)
{
    rpal_region *r;
    int err = rpal_region_attach(name, RPAL_REGION_RDONLY, &r);
    if (err < 0) {
        fprintf(stderr, "attach %s: %s\n", name, rpal_strerror(err));
        t_failures++;
        return;
    }
    CHECK(rpal_region_size(r) == size);
    if (!filled(rpal_region_addr(r), size, seed)) {
        fprintf(stderr, "region %s: content changed\n", name);
        t_failures++;
    }
    CHECK(rpal_region_detach(r) == 0);
}

static void on_alarm(int sig)
{
    (void)sig;
    rmdir(outside);
    static const char msg[] = "timed out: a call blocked (on a FIFO?)\n";
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
    _exit(1);
}

int main(void)
{
    t_init();
    signal(SIGALRM, on_alarm);
    /* A call blocking on a FIFO is a failure, not a hang; the bound is
     * loose, for sanitizer builds on a loaded machine (the runner's is 120 s). */
    alarm(100);
    REQUIRE(realpath(rpal_ns_dir(), ns) != NULL);
    ns_len = strlen(ns);

    /* 1. An empty namespace: no registry yet, and none may appear. */
    settle();
    bad_names();
    bad_args();
    REQUIRE(mkdir(nspath("pd"), 0755) == 0);
    REQUIRE(mkfifo(nspath("pf"), 0600) == 0);
    int fd = open(nspath("pe"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    close(fd);
    REQUIRE(symlink("pd", nspath("pl")) == 0);
    settle();
    BAD(rpal_region_create("pd", 4096, 0600, 0, &out_), -EEXIST);
    BAD(rpal_region_create("pf", 4096, 0600, 0, &out_), -EEXIST);
    BAD(rpal_region_create("pe", 4096, 0600, 0, &out_), -EEXIST);
    BAD2(rpal_region_create("pl", 4096, 0600, 0, &out_), -EEXIST, -ELOOP);
    BAD(rpal_region_create("pl/x", 4096, 0600, 0, &out_), -ELOOP);
    BAD(rpal_region_attach("pd", 0, &out_), -EISDIR);
    BAD(rpal_region_attach("pf", 0, &out_), -EBADMSG);
    BAD(rpal_region_attach("pe", 0, &out_), -EBADMSG);
    BAD(rpal_region_attach("pl", 0, &out_), -ELOOP);

    /* 2. A namespace with regions in it. */
    const size_t gsize = 4 * PAGE;
    make_region("good", gsize, 0644, 1);
    make_region("sub/good2", 2 * PAGE, 0640, 2);
    make_region("deep/a/b/c", PAGE, 0600, 3);
    CHECK(access(nspath("deep/a/b"), F_OK) == 0); /* made on the way */
    settle();
    bad_names();
    bad_args();

    /* Unknown attach flags, on a region that exists. */
    static const unsigned aflags[] = {RPAL_REGION_TRANSIENT, 0x4, 0x100,
                                      0x80000000u, RPAL_REGION_RDONLY | 0x8, ~0u};
    for (size_t i = 0; i < sizeof aflags / sizeof *aflags; i++) {
        WHAT("flags %#x", aflags[i]);
        BAD(rpal_region_attach("good", aflags[i], &out_), -EINVAL);
    }
    what_ = NULL;
    BAD(rpal_region_attach("good", 0, NULL), -EINVAL);
    BAD(rpal_region_create("fresh/x", 4096, 0600, 0, NULL), -EINVAL);

    /* An existing name: not replaced, not resized, its content untouched,
     * whether or not this process has it attached. */
    BAD(rpal_region_create("good", gsize, 0644, 0, &out_), -EEXIST);
    BAD(rpal_region_create("good", 8 * PAGE, 0600, RPAL_REGION_TRANSIENT, &out_), -EEXIST);
    BAD(rpal_region_create("sub/good2", PAGE, 0666, 0, &out_), -EEXIST);
    BAD(rpal_region_create("deep/a/b/c", PAGE, 0600, 0, &out_), -EEXIST);
    {
        rpal_region *g;
        REQUIRE(rpal_region_attach("good", 0, &g) == 0);
        settle();
        BAD(rpal_region_create("good", gsize, 0644, 0, &out_), -EEXIST);
        CHECK(filled(rpal_region_addr(g), gsize, 1));
        CHECK(rpal_region_detach(g) == 0);
        settle();
    }
    check_region("good", gsize, 1);
    check_region("sub/good2", 2 * PAGE, 2);

    /* Files that are not regions. */
    struct hdr good;
    fd = open(nspath("good"), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(pread(fd, &good, sizeof good, 0) == (ssize_t)sizeof good);
    close(fd);
    REQUIRE(memcmp(&good.magic, "RPALREG1", 8) == 0);
    REQUIRE(good.size == gsize && good.granule == GRANULE);
    bad_files(&good);

    REQUIRE(mkdtemp(outside) != NULL);
    bad_nodes();
    if (rmdir(outside) != 0) {
        fprintf(stderr, "something was created outside the namespace, in %s\n",
                outside);
        t_failures++;
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", outside);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", outside);
    }

    bad_addr("good", gsize);

    /* Create, when the address it is about to take is already mapped in
     * this process: success elsewhere is fine, failure must change nothing
     * (no directory made on the way, no registry change). */
    {
        uint64_t c = registry_cursor();
        void *p = NULL;
        if (c >= WINDOW_LO && c < WINDOW_HI - 2 * GRANULE && c % GRANULE == 0)
            p = map_page_at(c + GRANULE);
        settle();
        out_ = NULL;
        long err = rpal_region_create("taken/dir/r", PAGE, 0600, 0, &out_);
        if (err == 0) {
            rpal_region_detach(out_);
            rpal_region_unlink("taken/dir/r");
            out_ = OUT_UNTOUCHED;
            settle();
        } else {
            out_ = OUT_UNTOUCHED;
            diff_always = 1;
            bad_(__LINE__, "rpal_region_create(\"taken/dir/r\") over a mapped address",
                 err, ANYNEG, ANYNEG);
        }
        if (p) {
            check_page(p);
            munmap(p, PAGE);
        }
    }

    /* Names at the limits are fine. */
    char *n200 = long_name(RPAL_NAME_MAX);
    char *c64 = repeat('c', 64);
    const char *okn[] = {n200, c64, "a.b", "x..y", "z.", "A-b_C.9", "-", "_"};
    for (size_t i = 0; i < sizeof okn / sizeof *okn; i++) {
        rpal_region *r;
        int err = rpal_region_create(okn[i], PAGE, 0600, 0, &r);
        if (err < 0) {
            fprintf(stderr, "create of the valid name \"%s\": %s\n", okn[i],
                    rpal_strerror(err));
            t_failures++;
            continue;
        }
        CHECK(rpal_region_detach(r) == 0);
        CHECK_ERR(rpal_region_attach(okn[i], RPAL_REGION_RDONLY, &r), 0);
        CHECK(rpal_region_detach(r) == 0);
        CHECK_ERR(rpal_region_unlink(okn[i]), 0);
    }
    free(n200);
    free(c64);

    /* After all of it, the real regions are intact. */
    check_region("good", gsize, 1);
    check_region("sub/good2", 2 * PAGE, 2);
    check_region("deep/a/b/c", PAGE, 3);
    sfree(&expected);
    return t_done();
}
