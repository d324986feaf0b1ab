/* region: named same-address shared regions (the mshare model in user space).
 *
 * A region is a file in the namespace directory. Its first granule holds a
 * header page; the data follows at file offset `granule`. Every process maps
 * the data at the address recorded in the header, so plain pointers stored in
 * it mean the same thing everywhere. Addresses are handed out by a small
 * registry file at the namespace root, under flock(2), so that two regions of
 * one namespace never overlap. See docs/regions.md.
 */
#include "rpal.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RPAL_DEFAULT_DIR "/dev/shm/rpal"
#define COMPONENT_MAX 64

/* ---- the header ---------------------------------------------------------- */

/* struct region_hdr is in src/internal.h (the fuzz targets build them). */

uint64_t rpal__region_hdr_check(const struct region_hdr *h)
{
    return rpal__prim_fnv1a(h, offsetof(struct region_hdr, check));
}

/* The header comes from a file anybody with write access may have changed:
 * validate every field before any of it is used (nothing read from another
 * process is trusted: a bad header is an error, never a crash). */
int rpal__region_hdr_validate(const struct region_hdr *h, uint64_t file_size)
{
    if (h->magic != REGION_MAGIC)
        return -EBADMSG;
    if (h->version != REGION_VERSION)
        return -EPROTO;
    if (h->hdr_size != sizeof *h || h->check != rpal__region_hdr_check(h))
        return -EBADMSG;
    uint64_t g = h->granule, end = RPAL_WINDOW_BASE + RPAL_REGION_WINDOW_SIZE;
    if (g != RPAL_REGION_GRANULE)
        return -EBADMSG;
    if (h->size == 0 || h->size % RPAL_PAGE || h->size > RPAL_REGION_WINDOW_SIZE)
        return -EBADMSG;
    if (h->base % g || h->base < RPAL_WINDOW_BASE + g || h->base > end ||
        h->size > end - h->base)
        return -EBADMSG;
    if (h->flags & ~(RPAL_REGION_TRANSIENT | RPAL_REGION_HUGE))
        return -EBADMSG;
    /* A huge region's file is the header granule only; its data is on
     * hugetlbfs (src/huge.c), on whole 1 GiB ranges. */
    int huge = !!(h->flags & RPAL_REGION_HUGE);
    if (huge && (h->base % RPAL_HUGE_ALIGN || h->size % RPAL_HUGE_ALIGN))
        return -EBADMSG;
    if (file_size != g + (huge ? 0 : h->size))
        return -EBADMSG; /* truncated or grown behind our back */
    return 0;
}

/* ---- names and the namespace directory ----------------------------------- */

const char *rpal_ns_dir(void)
{
    const char *d = getenv("RPAL_DIR");
    return d && *d ? d : RPAL_DEFAULT_DIR;
}

RPAL_HIDDEN int rpal__ns_name_validate(const char *name)
{
    if (!name || !*name)
        return -EINVAL;
    size_t len = strnlen(name, RPAL_NAME_MAX + 1);
    if (len > RPAL_NAME_MAX)
        return -ENAMETOOLONG;
    size_t comp = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = name[i];
        if (c == '/' || c == 0) {
            if (comp == 0)
                return -EINVAL; /* absolute, empty component, trailing '/' */
            comp = 0;
            continue;
        }
        if (comp == 0 && c == '.')
            return -EINVAL; /* ".", "..", and names hidden from listings */
        if (++comp > COMPONENT_MAX)
            return -ENAMETOOLONG;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return -EINVAL;
    }
    return 0;
}

/* FD, the namespace root, if we may trust it (owned by us or root, sticky
 * if others may write it: issue 16); else closed and -EPERM. */
static int ns_trusted(int fd)
{
    int err = rpal__prim_dir_trusted(fd);
    if (err < 0)
        close(fd);
    return err < 0 ? err : fd;
}

/* Open the namespace root as an O_PATH descriptor. With CREATE, a missing
 * root is made: the default one shared by all users like /tmp (1777), one
 * named by RPAL_DIR private to its creator (0700). */
RPAL_HIDDEN int rpal__ns_open(int create)
{
    const char *dir = rpal_ns_dir();
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT || !create)
        return fd >= 0 ? ns_trusted(fd) : -errno;
    mode_t m = getenv("RPAL_DIR") && *getenv("RPAL_DIR") ? 0700 : 01777;
    if (mkdir(dir, m) == 0)
        chmod(dir, m); /* mkdir applied the umask */
    else if (errno != EEXIST)
        return -errno;
    fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    return fd >= 0 ? ns_trusted(fd) : -errno;
}

/* ---- the address registry ------------------------------------------------ */

#define REG_FILE    ".rpal-registry"
#define REG_MAGIC   0x3147455259524c52ull
#define REG_CAP     4096u
#define REG_FREE    0u
#define REG_RESERVED 1u /* a creator is between reserving and linking */
#define REG_LIVE    2u

struct reg_entry {
    uint64_t base;  /* data address */
    uint64_t len;   /* bytes of address space from base - granule */
    uint64_t ino;   /* the region file's inode once LIVE */
    uint64_t pid_start;
    int32_t pid;    /* the reserving process */
    uint32_t state;
    char name[RPAL_NAME_MAX + 16];
};

struct reg_file {
    uint64_t magic;
    uint32_t version, cap;
    uint64_t cursor; /* next-fit: where the last allocation ended */
    uint32_t used;   /* entries at or past this index were never used: */
    uint32_t pad0;   /* scans stop there, so that pages of the file's */
    uint64_t pad[4]; /* holes are never faulted in (tmpfs fills them) */
    struct reg_entry e[REG_CAP];
};

struct reg {
    int fd;
    unsigned used0; /* entries read: all of them are written back */
    struct reg_file *f;
};

/* How many entries to scan; the header is as untrusted as the entries. */
static unsigned reg_used(const struct reg_file *f)
{
    return f->used < REG_CAP ? f->used : REG_CAP;
}

static void reg_rebuild(int nsfd, struct reg_file *f);
static int region_open(int nsfd, const char *name, int oflags,
                       struct region_hdr *h, struct stat *st);
static int quota_reclaim(int nsfd, struct reg_file *f);

/* Quotas (below): what one user may hold of a shared registry. */
struct quota {
    uint64_t window;  /* bytes of the window a user may hold */
    unsigned regions; /* registry entries a user may hold */
};

/* The registry judged once, for the attaches and listings that need it. */
struct qtab {
    int state;          /* 0 not read yet, 1 read, 2 judged, -1 unreadable */
    struct reg_file *f; /* a copy of the entries in use */
    struct qent *j;     /* judged, when a region needed it */
    struct quota q;
};

static int quota_check(int nsfd, struct qtab *t, const struct region_hdr *h,
                       const struct stat *st);
static void qtab_free(struct qtab *t);

/* The thread's buffer for a copy of the registry (NULL: out of memory).
 * One lock at a time per thread: a second reg_lock in the thread would
 * wait for its own flock forever, so nothing nests. */
static pthread_key_t reg_key;
static pthread_once_t reg_key_once = PTHREAD_ONCE_INIT;

static void reg_key_make(void)
{
    (void)pthread_key_create(&reg_key, free);
}

static struct reg_file *reg_buf(void)
{
    pthread_once(&reg_key_once, reg_key_make);
    struct reg_file *f = pthread_getspecific(reg_key);
    if (!f && (f = malloc(sizeof *f)) && pthread_setspecific(reg_key, f) != 0) {
        free(f);
        f = NULL;
    }
    return f;
}

static int reg_lock(int nsfd, struct reg *r)
{
    struct stat st;
    /* The registry lives in a directory that may be shared by all users: it
     * is read like a peer's memory, never trusted (entries are checked). */
    /* Open without O_CREAT first: with fs.protected_regular, O_CREAT on
     * another user's file in a sticky directory is refused even when it
     * exists. A new registry gets the directory's group and other write
     * permission, so that everyone who may create regions may reserve. */
    int fd = rpal__prim_open_beneath(nsfd, REG_FILE, O_RDWR, 0);
    if (fd == -ENOENT) {
        struct stat ns;
        unsigned m = 0600;
        if (fstat(nsfd, &ns) == 0)
            m |= ((ns.st_mode & 0020) ? 0060 : 0) | ((ns.st_mode & 0002) ? 0006 : 0);
        fd = rpal__prim_open_beneath(nsfd, REG_FILE, O_RDWR | O_CREAT | O_EXCL, m);
        if (fd >= 0)
            fchmod(fd, m); /* the umask applied */
        else if (fd == -EEXIST)
            fd = rpal__prim_open_beneath(nsfd, REG_FILE, O_RDWR, 0);
    }
    if (fd < 0)
        return fd;
    if (flock(fd, LOCK_EX) < 0 || fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EBADMSG;
    }
    /* New (empty), or cut or grown by someone who may write it (issue 16:
     * `truncate -s 1` stopped every other user's region creation): set to
     * its size; what was cut reads as zeros (free entries, or a header that
     * starts over below), like a corrupt one. */
    if ((uint64_t)st.st_size != sizeof(struct reg_file) &&
        ftruncate(fd, sizeof(struct reg_file)) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    /* Read into private memory, not mapped: anyone who may write the
     * registry may also truncate it, and a mapping of a truncated file
     * raises SIGBUS in whoever touches it. Only the entries in use are read
     * (and written back), and only they are ever looked at (an entry is
     * appended at index `used` by writing it whole): the rest of the copy
     * is left as it is, not cleared, in a buffer of the thread's that is
     * kept (clearing, or even allocating, 1 MiB for every create was most
     * of the time of 4,096 creates). */
    struct reg_file *f = reg_buf();
    const size_t head = offsetof(struct reg_file, e);
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    if (pread(fd, f, head, 0) != (ssize_t)head ||
        (f->magic == REG_MAGIC &&
         pread(fd, f->e, reg_used(f) * sizeof f->e[0], (off_t)head) !=
             (ssize_t)(reg_used(f) * sizeof f->e[0]))) {
        /* shrunk under our lock by someone who ignores it */
        close(fd);
        return -EBADMSG;
    }
    r->fd = fd;
    r->f = f;
    r->used0 = f->magic == REG_MAGIC ? reg_used(f) : 0;
    if (f->magic != REG_MAGIC) {
        /* A fresh file reads as zeros; a corrupt one starts over, from the
         * region files we can read (issue 16: the reservations of regions
         * that exist must not be handed out again). */
        memset(f, 0, head);
        f->version = 1;
        f->cap = REG_CAP;
        f->cursor = 0;
        f->magic = REG_MAGIC;
        reg_rebuild(nsfd, f);
    }
    return 0;
}

/* Write the registry back and unlock it: 0, or -EIO if it could not be
 * written (the file keeps what it had). */
static int reg_unlock(struct reg *r)
{
    unsigned n = reg_used(r->f);
    while (n > 0 && r->f->e[n - 1].state == REG_FREE)
        n--;
    r->f->used = n;
    /* Entries freed past the new end are written too (as zeros). */
    size_t len = offsetof(struct reg_file, e) +
                 (n > r->used0 ? n : r->used0) * sizeof r->f->e[0];
    ssize_t w = pwrite(r->fd, r->f, len, 0);
    /* A full volume (a small tmpfs) says so rather than "I/O error". */
    int err = w == (ssize_t)len ? 0 : w < 0 && (errno == ENOSPC || errno == EDQUOT) ? -ENOSPC : -EIO;
    close(r->fd); /* releases the flock */
    return err;
}

/* An entry is used only if every field is in range; a corrupt one counts as
 * free space (worst case a later attach reports -EADDRINUSE). */
static int entry_valid(const struct reg_entry *e)
{
    uint64_t lo = RPAL_WINDOW_BASE, hi = lo + RPAL_REGION_WINDOW_SIZE;
    if (e->state != REG_RESERVED && e->state != REG_LIVE)
        return 0;
    if (e->base < lo + RPAL_REGION_GRANULE || e->base > hi ||
        e->len < RPAL_REGION_GRANULE || e->len > hi - lo ||
        e->base - RPAL_REGION_GRANULE > hi - e->len)
        return 0;
    return memchr(e->name, 0, sizeof e->name) != NULL;
}

static int overlaps(const struct reg_file *f, uint64_t start, uint64_t len,
                    uint64_t *next)
{
    for (unsigned i = 0; i < reg_used(f); i++) {
        const struct reg_entry *e = &f->e[i];
        if (!entry_valid(e))
            continue;
        uint64_t s = e->base - RPAL_REGION_GRANULE, end = s + e->len;
        if (start < end && s < start + len) {
            *next = end;
            return 1;
        }
    }
    return 0;
}

/* The first start at or after C whose data (a granule later) is aligned to
 * ALIGN, a multiple of the granule. */
static uint64_t align_start(uint64_t c, uint64_t align)
{
    uint64_t g = RPAL_REGION_GRANULE;
    return (c + g + align - 1) / align * align - g;
}

/* A free range of LEN bytes in the window of the registry F, at *START:
 * next-fit, so that a freed range is reused only after the whole window
 * went round: a process that still maps an unlinked region is
 * unlikely to meet its address again. */
static int reg_alloc(struct reg_file *f, uint64_t len, uint64_t align,
                     uint64_t *start)
{
    uint64_t lo = RPAL_WINDOW_BASE, hi = lo + RPAL_REGION_WINDOW_SIZE;
    uint64_t g = RPAL_REGION_GRANULE;
    uint64_t c = f->cursor;
    if (c < lo || c >= hi || c % g)
        c = lo;
    c = align_start(c, align);
    int wrapped = 0;
    for (;;) {
        uint64_t next;
        if (c > hi || len > hi - c) {
            if (wrapped)
                return -ENOSPC;
            wrapped = 1;
            c = align_start(lo, align);
            continue;
        }
        if (!overlaps(f, c, len, &next)) {
            *start = c;
            f->cursor = c + len;
            return 0;
        }
        c = align_start((next + g - 1) / g * g, align);
        if (wrapped && c >= f->cursor && f->cursor >= lo)
            return -ENOSPC;
    }
}

/* A free entry *SLOT and a free range of LEN bytes at *START in F. */
static int reg_place(struct reg_file *f, uint64_t len, uint64_t align, unsigned *slot,
                     uint64_t *start)
{
    unsigned i;
    for (i = 0; i < reg_used(f); i++)
        if (!entry_valid(&f->e[i]))
            break;
    if (i == REG_CAP)
        return -ENOSPC;
    int err = reg_alloc(f, len, align, start);
    if (err == 0 && i == reg_used(f))
        f->used = i + 1;
    *slot = i;
    return err;
}

static int reg_reserve(int nsfd, const char *name, uint64_t size,
                       uint64_t align, uint64_t *base, unsigned *slot)
{
    struct reg r;
    int err = reg_lock(nsfd, &r);
    if (err < 0)
        return err;
    uint64_t g = RPAL_REGION_GRANULE;
    uint64_t len = g + (size + g - 1) / g * g, start = 0;
    unsigned i = 0;
    err = reg_place(r.f, len, align, &i, &start);
    /* No room: what other users hold beyond their quota, and entries that
     * stand for nothing, are taken back (issue 16), then tried again. The
     * usual create never pays for judging the entries. */
    if (err == -ENOSPC && quota_reclaim(nsfd, r.f) > 0)
        err = reg_place(r.f, len, align, &i, &start);
    if (err == 0) {
        struct reg_entry *e = &r.f->e[i];
        memset(e, 0, sizeof *e);
        e->base = start + g;
        e->len = len;
        e->pid = getpid();
        e->pid_start = rpal__prim_self_start();
        snprintf(e->name, sizeof e->name, "%s", name);
        e->state = REG_RESERVED;
        *base = e->base;
        *slot = i;
    }
    int werr = reg_unlock(&r);
    return err ? err : werr;
}

/* Turn our reservation SLOT live (INO != 0) or give it back (INO == 0). */
static void reg_settle(int nsfd, unsigned slot, uint64_t base, uint64_t ino)
{
    struct reg r;
    if (reg_lock(nsfd, &r) < 0)
        return; /* gc frees the reservation once we are gone */
    /* SLOT is past the entries in use if someone cut `used` meanwhile. */
    struct reg_entry *e = &r.f->e[slot < reg_used(r.f) ? slot : 0];
    if (slot < reg_used(r.f) && e->state == REG_RESERVED && e->pid == getpid() && e->base == base) {
        if (ino) {
            e->ino = ino;
            e->state = REG_LIVE;
        } else {
            /* Undo the cursor move too, so that a refused create leaves the
             * registry as it found it (unless another create came between). */
            if (r.f->cursor == e->base - RPAL_REGION_GRANULE + e->len)
                r.f->cursor = e->base - RPAL_REGION_GRANULE;
            memset(e, 0, sizeof *e);
        }
    }
    reg_unlock(&r);
}

static void reg_forget(int nsfd, const char *name, uint64_t ino)
{
    struct reg r;
    if (reg_lock(nsfd, &r) < 0)
        return;
    for (unsigned i = 0; i < reg_used(r.f); i++) {
        struct reg_entry *e = &r.f->e[i];
        if (entry_valid(e) && e->state == REG_LIVE && e->ino == ino &&
            strcmp(e->name, name) == 0)
            memset(e, 0, sizeof *e);
    }
    reg_unlock(&r);
}

/* ---- regions ------------------------------------------------------------- */

struct rpal_region {
    uint64_t base, size, granule;
    unsigned flags;
    struct lay *lay; /* what is mapped inside (src/layout.c) */
};

static void unmap_region(uint64_t base, uint64_t granule, uint64_t size)
{
    munmap((void *)(uintptr_t)(base - granule), REGION_HDR_MAP);
    munmap((void *)(uintptr_t)base, size);
}

/* Test hook: called inside rpal_region_create() after the address is
 * reserved and before the region is linked into the namespace, so that a
 * test can kill a creator at that point. Not exported. */
RPAL_HIDDEN void (*rpal__hook_create_reserved)(void);

/* The header area read-only; the data PROT_NONE from FD, for the layout
 * (which rpal__lay_attach applies) to say what becomes accessible, or, for a huge
 * region (no layout), its data file DFD on hugetlbfs, mapped as WRITABLE says. */
static int map_region(int fd, int dfd, const struct region_hdr *h, int writable)
{
    int err = rpal__prim_map_fixed(h->base - h->granule, REGION_HDR_MAP, PROT_READ,
                             MAP_SHARED, fd, 0);
    if (err < 0)
        return err;
    if (dfd == fd) {
        err = rpal__prim_map_fixed(h->base, h->size, PROT_NONE, MAP_SHARED | MAP_NORESERVE, fd,
                             (off_t)h->granule);
    } else {
        err = rpal__prim_map_fixed(h->base, h->size, PROT_READ | (writable ? PROT_WRITE : 0),
                             MAP_SHARED, dfd, 0);
        if (err == -ENOMEM)
            err = -ENOSPC; /* hugetlbfs could not reserve the huge pages */
    }
    if (err < 0)
        munmap((void *)(uintptr_t)(h->base - h->granule), REGION_HDR_MAP);
    return err;
}

static void region_set(rpal_region *r, const struct region_hdr *h)
{
    r->base = h->base;
    r->size = h->size;
    r->granule = h->granule;
    r->flags = h->flags;
}

static int region_new(const struct region_hdr *h, rpal_region **out)
{
    rpal_region *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    region_set(r, h);
    *out = r;
    return 0;
}

/* Split NAME into the directory part (or ".") and the last component. */
static void split_name(const char *name, char *dir, const char **leaf)
{
    const char *s = strrchr(name, '/');
    if (!s) {
        strcpy(dir, ".");
        *leaf = name;
    } else {
        memcpy(dir, name, (size_t)(s - name));
        dir[s - name] = 0;
        *leaf = s + 1;
    }
}

/* The arguments of rpal_region_create, checked before anything is opened
 * (so a bad call touches nothing). *MODE 0 means 0600. */
static int create_args(const char *name, size_t size, unsigned *mode,
                       unsigned flags, rpal_region **out)
{
    int err = rpal__ns_name_validate(name);
    if (err < 0)
        return err;
    if (!out || (*mode & ~0777u) ||
        (flags & ~(RPAL_REGION_TRANSIENT | RPAL_REGION_EMPTY | RPAL_REGION_HUGE)))
        return -EINVAL;
    /* A huge region is one object over its whole size: no layout (its data
     * is another file, mapped as it is). */
    if ((flags & RPAL_REGION_HUGE) && (flags & RPAL_REGION_EMPTY))
        return -EINVAL;
    int huge = !!(flags & RPAL_REGION_HUGE);
    if (size == 0 || size % (huge ? RPAL_HUGE_ALIGN : RPAL_PAGE))
        return -EINVAL;
    if (size > RPAL_REGION_WINDOW_SIZE - (huge ? RPAL_HUGE_ALIGN : 2 * RPAL_REGION_GRANULE))
        return -EFBIG;
    if (*mode == 0)
        *mode = 0600;
    return huge ? rpal__huge_check_avail(size) : 0;
}

/* What a create has made so far, so that each step can fail and the end
 * (create_undo, create_end) gives back exactly what was made. */
struct create {
    const char *name, *leaf;
    uint64_t size;
    unsigned mode, flags;
    int huge;
    char dir[RPAL_NAME_MAX + 2];
    int nsfd, dfd, fd, lkfd, datafd;
    size_t made;             /* parent directories made (SIZE_MAX: none) */
    uint64_t base, ino;      /* ino != 0: the lock file exists */
    unsigned slot;           /* our reservation in the registry */
    struct huge_ext x;
    struct region_hdr h;
    struct stat st;
    rpal_region *r;
};

/* The parent directories (made if missing), and the name still free.
 * Every check that can refuse comes before anything is changed, so that
 * a refused create leaves the namespace as it was. Parent directories
 * grant others only read and search: write stays with the owner, or
 * anyone could replace the regions inside. */
static int create_dir(struct create *c)
{
    if (strcmp(c->dir, ".")) {
        unsigned dmode = 0700 | (c->mode & 0044) | ((c->mode & 0044) >> 2);
        int err = rpal__prim_mkdirs_beneath(c->nsfd, c->dir, dmode, &c->made);
        if (err == 0 && (c->dfd = rpal__prim_open_beneath(c->nsfd, c->dir,
                                                    O_PATH | O_DIRECTORY, 0)) < 0)
            err = c->dfd;
        if (err < 0) {
            c->dfd = c->nsfd;
            return err;
        }
    }
    if (fstatat(c->dfd, c->leaf, &c->st, AT_SYMLINK_NOFOLLOW) == 0)
        return -EEXIST;
    return errno != ENOENT ? -errno : 0;
}

/* The unnamed file, the handle and the address. The file is built unnamed
 * (O_TMPFILE) and linked under its name only when complete: nobody ever
 * sees half a region, and a creator killed half-way leaves no file behind.
 * 1 once the address is reserved (from then on, failures give it back). */
static int create_reserve(struct create *c)
{
    c->fd = rpal__prim_open_beneath(c->dfd, ".", O_TMPFILE | O_RDWR, c->mode);
    if (c->fd < 0)
        return c->fd == -EISDIR ? -EOPNOTSUPP : c->fd; /* no O_TMPFILE there */
    if (!(c->r = calloc(1, sizeof *c->r)))
        return -ENOMEM;
    int err = reg_reserve(c->nsfd, c->name, c->size,
                          c->huge ? RPAL_HUGE_ALIGN : RPAL_REGION_GRANULE,
                          &c->base, &c->slot);
    if (err < 0)
        return err;
    if (rpal__hook_create_reserved)
        rpal__hook_create_reserved();
    return 1;
}

static void create_hdr(struct create *c)
{
    struct region_hdr *h = &c->h;
    memset(h, 0, sizeof *h); /* written whole, padding too */
    h->magic = REGION_MAGIC;
    h->version = REGION_VERSION;
    h->hdr_size = sizeof *h;
    h->granule = RPAL_REGION_GRANULE;
    h->base = c->base;
    h->size = c->size;
    h->flags = c->flags & (RPAL_REGION_TRANSIENT | RPAL_REGION_HUGE);
    h->creator_pid = getpid();
    h->creator_uid = getuid();
    h->creator_start = rpal__prim_self_start();
    h->creator_pidns = (uint32_t)rpal__prim_self_pidns();
    h->created_ns = rpal__prim_now_realtime_ns();
    h->check = rpal__region_hdr_check(h);
}

/* On a volume of limited size, the header granule and the data are taken
 * from it now: -ENOSPC here rather than SIGBUS in whoever touches a page
 * later (docs/containers.md). Elsewhere the data stays sparse. */
static int create_space(struct create *c)
{
    if (!rpal__prim_fs_limited(c->fd))
        return 0;
    /* The header's pages (the rest of its granule is a guard, never
     * touched), then the data, which a huge region keeps elsewhere. */
    int err = rpal__prim_reserve(c->fd, 0, REGION_HDR_MAP);
    if (err == 0 && !c->huge)
        err = rpal__prim_reserve(c->fd, c->h.granule, c->size);
    return err;
}

/* The file's contents: a huge region's data file, the header (and the
 * huge extension), the layout and its lock file. */
static int create_fill(struct create *c)
{
    int err = 0;
    if (c->huge) {
        if (fstat(c->fd, &c->st) < 0)
            return -errno;
        if ((c->datafd = rpal__huge_create(c->nsfd, c->st.st_ino, c->size, c->mode, &c->x)) < 0)
            return c->datafd;
    }
    create_hdr(c);
    if (fchmod(c->fd, c->mode) < 0 ||
        ftruncate(c->fd, (off_t)(c->h.granule + (c->huge ? 0 : c->size))) < 0 ||
        fstat(c->fd, &c->st) < 0)
        return -errno;
    if ((err = create_space(c)) < 0)
        return err;
    ssize_t w = pwrite(c->fd, &c->h, sizeof c->h, 0);
    if (w == (ssize_t)sizeof c->h && c->huge) {
        rpal__huge_seal(&c->x, c->h.check);
        w = pwrite(c->fd, &c->x, sizeof c->x, HUGE_EXT_OFF) == (ssize_t)sizeof c->x ? w : -1;
    }
    if (w != (ssize_t)sizeof c->h)
        return w < 0 ? -errno : -EIO;
    if (c->huge)
        return 0;
    if ((err = rpal__lay_init(c->fd, c->size, !!(c->flags & RPAL_REGION_EMPTY))) < 0)
        return err;
    /* The lock file is named after the inode, so it exists before the
     * region has a name and no attacher can come without it. */
    c->ino = (uint64_t)c->st.st_ino;
    if ((c->lkfd = rpal__lay_lock_open(c->nsfd, c->name, c->ino, c->mode & 0666, 1)) < 0)
        return c->lkfd;
    return 0;
}

/* Mapped at its address, following its layout, and linked under its name. */
static int create_publish(struct create *c)
{
    const struct region_hdr *h = &c->h;
    int err = map_region(c->fd, c->huge ? c->datafd : c->fd, h, 1);
    if (err < 0)
        return err;
    if (!c->huge)
        err = rpal__lay_attach(c->fd, c->lkfd, h->base, h->size, h->granule, 0, &c->r->lay);
    c->lkfd = -1; /* taken over */
    if (err != 0) {
        unmap_region(c->base, h->granule, c->size);
        return err < 0 ? err : -EIO;
    }
    char proc[PRIM_FD_PATH];
    /* linkat fails with EEXIST if the name exists: exclusive creation, also
     * against a racer that passed the check in create_dir at the same time. */
    if (linkat(AT_FDCWD, rpal__prim_fd_path(proc, c->fd), c->dfd, c->leaf, AT_SYMLINK_FOLLOW) < 0 ||
        fstat(c->fd, &c->st) < 0) {
        err = -errno;
        rpal__lay_detach(c->r->lay);
        unmap_region(c->base, h->granule, c->size);
        return err;
    }
    reg_settle(c->nsfd, c->slot, c->base, c->st.st_ino);
    return 0;
}

/* A failed create after the reservation: the address, the lock file and
 * the huge data file given back. */
static void create_undo(struct create *c)
{
    reg_settle(c->nsfd, c->slot, c->base, 0);
    if (c->ino)
        rpal__lay_lock_unlink(c->dfd, c->leaf, c->ino);
    if (c->datafd >= 0)
        rpal__huge_remove(&c->x);
}

/* Descriptors closed; on failure, the parent directories we made removed. */
static void create_end(struct create *c, int err)
{
    if (c->lkfd >= 0)
        close(c->lkfd);
    if (c->datafd >= 0)
        close(c->datafd);
    if (err < 0 && c->made != SIZE_MAX)
        rpal__prim_rmdirs_beneath(c->nsfd, c->dir, c->made);
    if (c->fd >= 0)
        close(c->fd);
    if (c->dfd != c->nsfd)
        close(c->dfd);
    close(c->nsfd);
    free(c->r);
}

int rpal_region_create(const char *name, size_t size, unsigned mode,
                       unsigned flags, rpal_region **out)
{
    int err = create_args(name, size, &mode, flags, out);
    if (err < 0)
        return err;
    struct create c = {.name = name, .size = size, .mode = mode, .flags = flags,
                       .huge = !!(flags & RPAL_REGION_HUGE), .fd = -1, .lkfd = -1,
                       .datafd = -1, .made = SIZE_MAX};
    if ((c.nsfd = rpal__ns_open(1)) < 0)
        return c.nsfd;
    c.dfd = c.nsfd;
    split_name(name, c.dir, &c.leaf);
    err = create_dir(&c);
    if (err == 0 && (err = create_reserve(&c)) > 0) {
        err = create_fill(&c);
        if (err == 0)
            err = create_publish(&c);
        if (err < 0)
            create_undo(&c);
    }
    if (err == 0) {
        region_set(c.r, &c.h);
        *out = c.r;
        c.r = NULL;
    }
    create_end(&c, err);
    return err;
}

/* Open NAME for reading its header: descriptor, validated header, stat. */
static int region_open(int nsfd, const char *name, int oflags,
                       struct region_hdr *h, struct stat *st)
{
    /* O_NONBLOCK: a FIFO planted under a region's name must not hang us. */
    int fd = rpal__prim_open_beneath(nsfd, name, oflags | O_NONBLOCK, 0);
    if (fd < 0)
        return fd;
    int err = 0;
    if (fstat(fd, st) < 0)
        err = -errno;
    else if (S_ISDIR(st->st_mode))
        err = -EISDIR;
    else if (!S_ISREG(st->st_mode) || st->st_size < (off_t)sizeof *h)
        err = -EBADMSG;
    else if (pread(fd, h, sizeof *h, 0) != (ssize_t)sizeof *h)
        err = -EBADMSG;
    else
        err = rpal__region_hdr_validate(h, (uint64_t)st->st_size);
    if (err < 0) {
        close(fd);
        return err;
    }
    return fd;
}

int rpal_region_attach(const char *name, unsigned flags, rpal_region **out)
{
    int err = rpal__ns_name_validate(name);
    if (err < 0)
        return err;
    if (!out || (flags & ~RPAL_REGION_RDONLY))
        return -EINVAL;
    int nsfd = rpal__ns_open(0);
    if (nsfd < 0)
        return nsfd;
    int writable = !(flags & RPAL_REGION_RDONLY);
    struct region_hdr h;
    struct stat st;
    int fd = region_open(nsfd, name, writable ? O_RDWR : O_RDONLY, &h, &st);
    /* Another user's region beyond its quota: its range may have been
     * handed out again (issue 16). */
    struct qtab qt = {0};
    if (fd >= 0 && (err = quota_check(nsfd, &qt, &h, &st)) < 0) {
        close(fd);
        fd = err;
    }
    qtab_free(&qt);
    if (fd < 0) {
        close(nsfd);
        return fd;
    }
    rpal_region *r = NULL;
    int lkfd = -1, datafd = fd, huge = !!(h.flags & RPAL_REGION_HUGE);
    if (huge) {
        struct huge_ext x;
        datafd = rpal__huge_open(fd, h.check, h.size, st.st_uid, writable ? O_RDWR : O_RDONLY, &x);
    }
    err = datafd < 0 ? datafd : map_region(fd, datafd, &h, writable);
    if (err == 0 && (err = region_new(&h, &r)) == 0 && !huge &&
        (lkfd = rpal__lay_lock_open(nsfd, name, (uint64_t)st.st_ino, st.st_mode & 0666,
                              writable)) < 0)
        err = lkfd;
    if (err == 0 && !huge)
        err = rpal__lay_attach(fd, lkfd, h.base, h.size, h.granule, !writable, &r->lay);
    /* The descriptors are closed at once: a read-only attacher keeps no
     * descriptor it could reopen read-write through /proc/self/fd (the
     * layout code keeps a PROT_NONE view of the file instead). */
    if (datafd >= 0 && datafd != fd)
        close(datafd);
    close(fd);
    close(nsfd);
    if (err < 0) {
        if (r)
            unmap_region(h.base, h.granule, h.size);
        free(r);
        return err;
    }
    *out = r;
    return err; /* > 0: file objects that could not be mapped here */
}

int rpal_region_detach(rpal_region *r)
{
    if (!r)
        return -EINVAL;
    rpal__lay_detach(r->lay);
    unmap_region(r->base, r->granule, r->size);
    free(r);
    return 0;
}

void *rpal_region_addr(const rpal_region *r)
{
    return r ? (void *)(uintptr_t)r->base : NULL;
}

size_t rpal_region_size(const rpal_region *r)
{
    return r ? (size_t)r->size : 0;
}

int rpal_region_unlink(const char *name)
{
    int err = rpal__ns_name_validate(name);
    if (err < 0)
        return err;
    int nsfd = rpal__ns_open(0);
    if (nsfd < 0)
        return nsfd;
    char dir[RPAL_NAME_MAX + 2];
    const char *leaf;
    split_name(name, dir, &leaf);
    struct stat st;
    /* O_PATH needs no read permission: removal is governed, as for any
     * file, by write permission on the directory. */
    int fd = rpal__prim_open_beneath(nsfd, name, O_PATH, 0);
    if (fd >= 0 && fstat(fd, &st) < 0)
        st.st_mode = 0;
    if (fd >= 0)
        close(fd);
    if (fd < 0) {
        close(nsfd);
        return fd;
    }
    /* A huge region's data file goes with it. Finding it takes reading the
     * header; one we may not read leaves its data file to `rpal gc`. */
    struct huge_ext x;
    int have_x = 0;
    if (S_ISREG(st.st_mode)) {
        struct region_hdr h;
        struct stat st2;
        int rfd = region_open(nsfd, name, O_RDONLY, &h, &st2);
        if (rfd >= 0) {
            have_x = (h.flags & RPAL_REGION_HUGE) && st2.st_ino == st.st_ino &&
                     st2.st_dev == st.st_dev && rpal__huge_read(rfd, h.check, &x) == 0;
            close(rfd);
        }
    }
    if (S_ISDIR(st.st_mode) || !S_ISREG(st.st_mode)) {
        close(nsfd);
        return S_ISDIR(st.st_mode) ? -EISDIR : -EBADMSG;
    }
    int dfd = strcmp(dir, ".") ? rpal__prim_open_beneath(nsfd, dir, O_PATH | O_DIRECTORY, 0)
                               : nsfd;
    if (dfd < 0) {
        close(nsfd);
        return dfd;
    }
    err = unlinkat(dfd, leaf, 0) < 0 ? -errno : 0;
    if (err == 0)
        rpal__lay_lock_unlink(dfd, leaf, (uint64_t)st.st_ino);
    if (dfd != nsfd)
        close(dfd);
    if (err == 0)
        reg_forget(nsfd, name, st.st_ino);
    if (err == 0 && have_x)
        rpal__huge_remove(&x);
    close(nsfd);
    return err;
}

/* ---- listing ------------------------------------------------------------- */

struct attach_scan {
    uint64_t dev, ino;
    int n;
    pid_t *pids;
    int max;
    pid_t last;
};

static void count_attached(pid_t pid, uint64_t dev, uint64_t ino, void *arg)
{
    struct attach_scan *s = arg;
    /* A region is two mappings, and calls come grouped by pid. */
    if (dev != s->dev || ino != s->ino || (s->n && s->last == pid))
        return;
    s->last = pid;
    if (s->n < s->max)
        s->pids[s->n] = pid;
    s->n++;
}

/* 1 if the creator runs, 0 if not; 2 if it is in another pid namespace,
 * where its pid means nothing here: counted as running, so that `rpal gc`
 * run in another container never removes what it cannot judge. */
static int region_creator_alive(const struct region_hdr *h)
{
    uint32_t ns = (uint32_t)rpal__prim_self_pidns();
    if (h->creator_pidns && ns && h->creator_pidns != ns)
        return 2;
    return rpal__prim_proc_alive(h->creator_pid, h->creator_start);
}

static void info_fill(struct rpal_region_info *info, const char *name,
                      const struct region_hdr *h, const struct stat *st)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", name);
    info->size = h->size;
    info->base = h->base;
    info->mode = st->st_mode & 07777;
    info->flags = h->flags;
    info->uid = st->st_uid;
    info->gid = st->st_gid;
    info->creator_pid = h->creator_pid;
    info->creator_uid = h->creator_uid;
    info->creator_alive = region_creator_alive(h);
    info->created_ns = h->created_ns;
    struct attach_scan s = {st->st_dev, st->st_ino, 0, info->attached,
                            (int)(sizeof info->attached / sizeof info->attached[0]), 0};
    rpal__prim_maps_scan(count_attached, &s);
    info->nattached = s.n;
}

/* With T, another user's region beyond its quota is flagged. */
static int stat_at(int nsfd, const char *name, struct rpal_region_info *info, struct qtab *t)
{
    struct region_hdr h;
    struct stat st;
    /* Reading the header needs read permission, like attaching does. */
    int fd = region_open(nsfd, name, O_RDONLY, &h, &st);
    if (fd < 0)
        return fd;
    close(fd);
    info_fill(info, name, &h, &st);
    if (t && quota_check(nsfd, t, &h, &st) < 0)
        info->flags |= RPAL_REGION_OVERQUOTA;
    return 0;
}

int rpal_region_stat(const char *name, struct rpal_region_info *info)
{
    int err = rpal__ns_name_validate(name);
    if (err < 0)
        return err;
    if (!info)
        return -EINVAL;
    int nsfd = rpal__ns_open(0);
    if (nsfd < 0)
        return nsfd;
    struct qtab qt = {0};
    err = stat_at(nsfd, name, info, &qt);
    qtab_free(&qt);
    close(nsfd);
    return err;
}

/* ---- objects inside a region: the calls, over the layout (layout.c) ---- */

static int region_change(rpal_region *r, const struct lay_op *op,
                         struct rpal_region_change *chg)
{
    if (!r)
        return -EINVAL;
    if (!r->lay)
        return -EOPNOTSUPP; /* a huge region: one object, no layout */
    return rpal__lay_change(r->lay, op, chg);
}

int rpal_region_map(rpal_region *r, uint64_t offset, uint64_t length, int prot,
                    int fd, uint64_t file_offset, struct rpal_region_change *chg)
{
    if (fd < -1 || (fd == -1 && file_offset))
        return -EINVAL;
    struct lay_op op = {OP_MAP, offset, length, prot, fd, file_offset, 0};
    return region_change(r, &op, chg);
}

int rpal_region_protect(rpal_region *r, uint64_t offset, uint64_t length, int prot,
                        struct rpal_region_change *chg)
{
    struct lay_op op = {OP_PROTECT, offset, length, prot, -1, 0, 0};
    return region_change(r, &op, chg);
}

int rpal_region_unmap(rpal_region *r, uint64_t offset, uint64_t length,
                      struct rpal_region_change *chg)
{
    struct lay_op op = {OP_UNMAP, offset, length, 0, -1, 0, 0};
    return region_change(r, &op, chg);
}

int rpal_region_layout(const char *name, uint32_t *generation,
                       struct rpal_region_object *objs, unsigned max)
{
    int err = rpal__ns_name_validate(name);
    if (err < 0)
        return err;
    if (!objs && max)
        return -EINVAL;
    int nsfd = rpal__ns_open(0);
    if (nsfd < 0)
        return nsfd;
    struct region_hdr h;
    struct stat st;
    int fd = region_open(nsfd, name, O_RDONLY, &h, &st);
    close(nsfd);
    if (fd < 0)
        return fd;
    err = rpal__lay_read(fd, h.size, generation, objs, max);
    close(fd);
    return err;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Is LEAF a layout lock file's name, ".REGIONLEAF.INO.lock"? */
static int is_lock_leaf(const char *leaf)
{
    size_t l = strlen(leaf);
    return leaf[0] == '.' && l > 7 && !strcmp(leaf + l - 5, ".lock");
}

/* Collect the names of regular files below PREFIX (relative to NSFD),
 * recursing into the directories the caller may read: region names, or
 * with LOCKS the names of the lock files instead. */
static int collect(int nsfd, const char *prefix, char ***names, size_t *n,
                   size_t *cap, int depth, int locks)
{
    if (depth > RPAL_NAME_MAX / 2)
        return 0;
    int fd = rpal__prim_open_beneath(nsfd, prefix, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return fd == -EACCES ? 0 : fd; /* a directory we may not see */
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    struct dirent *de;
    int err = 0;
    while (!err && (de = readdir(d))) {
        int lock = locks && is_lock_leaf(de->d_name);
        if (de->d_name[0] == '.' && !lock)
            continue;
        char path[RPAL_NAME_MAX + 48];
        int l = strcmp(prefix, ".")
                    ? snprintf(path, sizeof path, "%s/%s", prefix, de->d_name)
                    : snprintf(path, sizeof path, "%s", de->d_name);
        if (l < 0 || (size_t)l >= sizeof path || (!lock && rpal__ns_name_validate(path) < 0))
            continue; /* not a name rpal could have made */
        unsigned char type = de->d_type;
        struct stat st;
        if (type == DT_UNKNOWN) /* filesystems that do not fill d_type */
            type = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ? DT_UNKNOWN
                   : S_ISDIR(st.st_mode) ? DT_DIR
                   : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
        if (type == DT_DIR) {
            err = collect(nsfd, path, names, n, cap, depth + 1, locks);
            continue;
        }
        if (type != DT_REG || lock != locks)
            continue;
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 64;
            char **nn = realloc(*names, nc * sizeof *nn);
            if (!nn) {
                err = -ENOMEM;
                break;
            }
            *names = nn;
            *cap = nc;
        }
        if (!((*names)[*n] = strdup(path)))
            err = -ENOMEM;
        else
            (*n)++;
    }
    closedir(d);
    return err;
}

static int list_names(int nsfd, char ***names, size_t *n)
{
    size_t cap = 0;
    *names = NULL;
    *n = 0;
    int err = collect(nsfd, ".", names, n, &cap, 0, 0);
    if (*n)
        qsort(*names, *n, sizeof **names, cmp_str);
    return err;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* A registry F started over: an entry for each region file of the
 * namespace NSFD whose header we can read (another user's 0600 region's
 * address stays unknown: it may be handed out again, and then attaching
 * both in one process says -EADDRINUSE). Under the registry lock. */
static void reg_rebuild(int nsfd, struct reg_file *f)
{
    char **names;
    size_t n;
    if (list_names(nsfd, &names, &n) < 0) {
        free_names(names, n);
        return;
    }
    uint64_t g = RPAL_REGION_GRANULE;
    for (size_t i = 0; i < n && f->used < REG_CAP; i++) {
        struct region_hdr h;
        struct stat st;
        int fd = region_open(nsfd, names[i], O_RDONLY, &h, &st);
        if (fd < 0)
            continue;
        close(fd);
        struct reg_entry *e = &f->e[f->used];
        memset(e, 0, sizeof *e);
        e->base = h.base;
        e->len = g + (h.size + g - 1) / g * g;
        e->ino = (uint64_t)st.st_ino;
        snprintf(e->name, sizeof e->name, "%s", names[i]);
        e->state = REG_LIVE;
        if (entry_valid(e))
            f->used++;
    }
    free_names(names, n);
}

/* ---- quotas: one user's share of a shared registry (issue 16) ----------- */

/* The registry is writable by every user of a shared namespace, so nothing
 * in it is believed as written. What the kernel keeps is: a region file's
 * owner (st_uid) and inode. An entry counts only if it names a region file
 * with its inode (and, where we may read the header, its address), once
 * per file; it is that file owner's. An honest process then honours, of
 * every other user but root, only a quota of entries and bytes of window,
 * in registry order: the rest is free to it (docs/regions.md). */

/* In-flight reservations honoured, all users together: a creator holds one
 * only between reserving and linking its file, and nothing the kernel
 * keeps says whose it is (the pid it names may be anybody's). */
#define QUOTA_PENDING 16u
#define QUOTA_NOUID   UINT32_MAX

enum { Q_FREE, Q_OK, Q_STALE, Q_OVER };


/* One entry judged: the file's inode (0: a reservation), range, owner. */
struct qent {
    uint64_t ino, base, len;
    uint32_t uid;
    unsigned verdict;
    int file; /* 1: a region file's (ino), 2: hidden from us, 0: a reservation */
};

/* A size from the environment: a number of bytes, or of KiB, MiB, GiB or
 * TiB with K, M, G or T after it; missing, 0 or unreadable: DFLT. */
static uint64_t env_size(const char *var, uint64_t dflt, uint64_t max)
{
    const char *s = getenv(var);
    if (!s || *s < '0' || *s > '9')
        return dflt;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    const char *units = "KMGT", *u = *end ? strchr(units, *end) : NULL;
    unsigned shift = u ? 10 * (unsigned)(u - units + 1) : 0;
    if (v == 0 || v == ULLONG_MAX || (*end && (!u || end[1])))
        return dflt;
    return v > max >> shift ? max : v << shift;
}

static void quota_get(struct quota *q)
{
    q->window = env_size("RPAL_QUOTA_WINDOW", RPAL_REGION_WINDOW_SIZE / 4,
                         RPAL_REGION_WINDOW_SIZE);
    q->regions = (unsigned)env_size("RPAL_QUOTA_REGIONS", REG_CAP / 4, REG_CAP);
}

/* The owner of the directory on the way to NAME that we may not search,
 * into *UID: 0, or -ESTALE if the way is not barred (the name is gone). */
static int hidden_owner(int nsfd, const char *name, uint32_t *uid)
{
    char path[RPAL_NAME_MAX + 16];
    int have = 0;
    snprintf(path, sizeof path, "%s", name);
    /* Each directory on the way opens (O_PATH needs no search right on it)
     * until the one below the directory that hides the name. */
    for (char *p = strchr(path, '/');; p = strchr(p + 1, '/')) {
        if (p)
            *p = 0;
        struct stat st;
        int fd = rpal__prim_open_beneath(nsfd, path, O_PATH | (p ? O_DIRECTORY : 0), 0);
        if (fd < 0)
            return fd == -EACCES && have ? 0 : -ESTALE;
        int ok = fstat(fd, &st) == 0;
        close(fd);
        if (!ok || !p)
            return -ESTALE; /* the name itself was reached: not hidden */
        *uid = st.st_uid;
        have = 1;
        *p = '/';
    }
}

/* The owner of the region file the live entry E names, into *UID: 1 if
 * the file is there with E's inode and (where we may read its header) E's
 * address; 2 if a directory we may not search hides it (*UID is that
 * directory's owner); else -ESTALE: a forgery, or a region unlinked or
 * renamed behind rpal's back. */
static int entry_owner(int nsfd, const struct reg_entry *e, uint32_t *uid)
{
    struct region_hdr h;
    struct stat st;
    int fd = region_open(nsfd, e->name, O_RDONLY, &h, &st);
    if (fd >= 0) {
        close(fd);
        if (h.base != e->base)
            return -ESTALE;
    } else if (fd == -EACCES) { /* another user's 0600 region, or its directory */
        if ((fd = rpal__prim_open_beneath(nsfd, e->name, O_PATH, 0)) < 0)
            return fd == -EACCES && hidden_owner(nsfd, e->name, uid) == 0 ? 2 : -ESTALE;
        int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
        close(fd);
        if (!ok)
            return -ESTALE;
    } else {
        return -ESTALE;
    }
    *uid = st.st_uid;
    return (uint64_t)st.st_ino == e->ino ? 1 : -ESTALE;
}

static int cmp_ino(const void *a, const void *b)
{
    const struct qent *x = *(struct qent *const *)a, *y = *(struct qent *const *)b;
    return x->ino != y->ino ? (x->ino < y->ino ? -1 : 1) : (x < y ? -1 : x > y);
}

/* Of the entries of J (N) that name one file, the first counts; copies
 * (which could fill the registry with one file of root's or ours) not. */
static void quota_dedup(struct qent *j, unsigned n)
{
    struct qent **v = malloc((n ? n : 1) * sizeof *v);
    unsigned m = 0;
    if (!v)
        return;
    for (unsigned i = 0; i < n; i++)
        if (j[i].verdict == Q_OK && j[i].file == 1)
            v[m++] = &j[i];
    qsort(v, m, sizeof *v, cmp_ino);
    for (unsigned i = 1; i < m; i++)
        if (v[i]->ino == v[i - 1]->ino)
            v[i]->verdict = Q_STALE;
    free(v);
}

/* Each other user's (not root's, not ours) live entries, in registry
 * order, honoured while they fit in Q: the others are over quota. Root's
 * are trusted as the system's, and ours are mapped by our own processes:
 * handing them out again would only hurt ourselves. Entries hidden from us
 * by a directory we may not search count against its owner, root and we
 * included: anyone may forge those names, so none is exempt. */
static void quota_rank(const struct quota *q, struct qent *j, unsigned n)
{
    struct quse {
        uint32_t uid, cnt;
        uint64_t bytes;
    } *u = calloc(n ? n : 1, sizeof *u);
    uint32_t me = geteuid();
    unsigned nu = 0;
    if (!u)
        return; /* out of memory: everything honoured, as without quotas */
    for (unsigned i = 0; i < n; i++) {
        struct qent *x = &j[i];
        if (x->verdict != Q_OK || !x->file || (x->file == 1 && (x->uid == 0 || x->uid == me)))
            continue;
        unsigned k = 0;
        while (k < nu && u[k].uid != x->uid)
            k++;
        if (k == nu)
            u[nu++].uid = x->uid;
        if (u[k].cnt >= q->regions || x->len > q->window - u[k].bytes) {
            x->verdict = Q_OVER;
        } else {
            u[k].cnt++;
            u[k].bytes += x->len;
        }
    }
    free(u);
}

/* Judge the entries of F into J (reg_used(F) of them): free, honoured,
 * stale (names nothing, a copy, or a dead or surplus reservation) or over
 * its owner's quota. Under the registry lock. */
static void quota_judge(int nsfd, const struct reg_file *f, const struct quota *q,
                        struct qent *j)
{
    unsigned n = reg_used(f), pending = 0;
    uint64_t pending_bytes = 0;
    for (unsigned i = 0; i < n; i++) {
        const struct reg_entry *e = &f->e[i];
        struct qent *x = &j[i];
        *x = (struct qent){0, e->base, e->len, QUOTA_NOUID, Q_STALE, 0};
        if (!entry_valid(e)) {
            x->verdict = e->state == REG_FREE ? Q_FREE : Q_STALE;
        } else if (e->state == REG_RESERVED) {
            if (pending < QUOTA_PENDING && e->len <= q->window - pending_bytes &&
                rpal__prim_proc_alive(e->pid, e->pid_start)) {
                pending++;
                pending_bytes += e->len;
                x->verdict = Q_OK;
            }
        } else if ((x->file = entry_owner(nsfd, e, &x->uid)) > 0) {
            x->ino = x->file == 1 ? e->ino : 0;
            x->verdict = Q_OK;
        }
    }
    quota_dedup(j, n);
    quota_rank(q, j, n);
}

/* quota_judge over F, into a new array (NULL: out of memory). */
static struct qent *quota_judged(int nsfd, const struct reg_file *f, struct quota *q)
{
    struct qent *j = malloc((reg_used(f) ? reg_used(f) : 1) * sizeof *j);
    quota_get(q);
    if (j)
        quota_judge(nsfd, f, q, j);
    return j;
}

/* A create found no room in F: the entries that stand for nothing and the
 * ones beyond another user's quota are cleared, so that their slots and
 * ranges are handed out again. Returns how many were. */
static int quota_reclaim(int nsfd, struct reg_file *f)
{
    struct quota q;
    struct qent *j = quota_judged(nsfd, f, &q);
    int n = 0;
    for (unsigned i = 0; j && i < reg_used(f); i++)
        if (j[i].verdict == Q_STALE || j[i].verdict == Q_OVER) {
            memset(&f->e[i], 0, sizeof f->e[i]);
            n++;
        }
    free(j);
    return n;
}


static void qtab_load(int nsfd, struct qtab *t)
{
    struct reg r;
    t->state = -1;
    quota_get(&t->q);
    if (reg_lock(nsfd, &r) < 0)
        return; /* no registry to judge by: as without quotas */
    size_t len = offsetof(struct reg_file, e) + reg_used(r.f) * sizeof r.f->e[0];
    if ((t->f = malloc(len))) {
        memcpy(t->f, r.f, len);
        t->state = 1;
    }
    if (r.used0 == 0) {
        reg_unlock(&r); /* new or rebuilt: worth writing */
    } else {
        close(r.fd); /* only read: nothing to write back */
    }
}

/* Whether the entries of T before the one of the region (ST, H), or all
 * of them if it has none, fit in one user's quota with it: then its owner
 * cannot be over quota there, whoever owns them, and nothing need be
 * judged (the usual case: one open per entry is saved). */
static int quota_surely_fits(const struct qtab *t, const struct region_hdr *h,
                             const struct stat *st, uint64_t len)
{
    unsigned before = 0;
    uint64_t bytes = 0;
    for (unsigned i = 0; i < reg_used(t->f); i++) {
        const struct reg_entry *e = &t->f->e[i];
        if (!entry_valid(e))
            continue;
        if (e->state == REG_LIVE && e->ino == (uint64_t)st->st_ino && e->base == h->base)
            break;
        before++;
        bytes += e->len;
    }
    return before < t->q.regions && bytes <= t->q.window && len <= t->q.window - bytes;
}

/* -EDQUOT if the region of header H and file ST belongs to another user
 * (not root) and is beyond that user's quota: its entry is over quota, or,
 * without an entry (taken back, or lost), it would not fit. Else 0. */
static int quota_check(int nsfd, struct qtab *t, const struct region_hdr *h,
                       const struct stat *st)
{
    if (st->st_uid == 0 || st->st_uid == geteuid())
        return 0;
    if (t->state == 0)
        qtab_load(nsfd, t);
    uint64_t g = RPAL_REGION_GRANULE, len = g + (h->size + g - 1) / g * g, bytes = 0;
    if (t->state < 0 || quota_surely_fits(t, h, st, len))
        return 0;
    if (!t->j && !(t->j = malloc((reg_used(t->f) ? reg_used(t->f) : 1) * sizeof *t->j)))
        return 0; /* out of memory: as without quotas */
    if (t->state == 1) {
        quota_judge(nsfd, t->f, &t->q, t->j);
        t->state = 2;
    }
    unsigned cnt = 0;
    for (unsigned i = 0; i < reg_used(t->f); i++) {
        const struct qent *x = &t->j[i];
        if (x->ino == (uint64_t)st->st_ino && x->base == h->base &&
            (x->verdict == Q_OK || x->verdict == Q_OVER))
            return x->verdict == Q_OVER ? -EDQUOT : 0;
        if (x->verdict == Q_OK && x->file && x->uid == st->st_uid) {
            cnt++;
            bytes += x->len;
        }
    }
    return cnt >= t->q.regions || len > t->q.window - bytes ? -EDQUOT : 0;
}

static void qtab_free(struct qtab *t)
{
    free(t->f);
    free(t->j);
}

/* The regions of the namespace, by name, and room for one's info: for
 * foreach and gc. walk_begin: 1, 0 if there is no namespace yet (nothing
 * to walk), or a negative errno (then nothing is left to free). */
struct walk {
    int nsfd;
    char **names;
    size_t n;
    struct rpal_region_info *info;
};

static void walk_end(struct walk *w)
{
    free(w->info);
    free_names(w->names, w->n);
    close(w->nsfd);
}

static int walk_begin(struct walk *w)
{
    w->nsfd = rpal__ns_open(0);
    if (w->nsfd < 0)
        return w->nsfd == -ENOENT ? 0 : w->nsfd;
    int err = list_names(w->nsfd, &w->names, &w->n);
    w->info = malloc(sizeof *w->info);
    if (!w->info)
        err = -ENOMEM;
    if (err < 0)
        walk_end(w);
    return err < 0 ? err : 1;
}

int rpal_region_foreach(int (*fn)(const struct rpal_region_info *, void *),
                        void *arg)
{
    if (!fn)
        return -EINVAL;
    struct walk w;
    int err = walk_begin(&w);
    if (err <= 0)
        return err;
    err = 0;
    struct qtab qt = {0}; /* judged once, when a region needs it */
    for (size_t i = 0; i < w.n && err == 0; i++)
        if (stat_at(w.nsfd, w.names[i], w.info, &qt) == 0)
            err = fn(w.info, arg);
    qtab_free(&qt);
    walk_end(&w);
    return err;
}

/* ---- garbage collection -------------------------------------------------- */

struct gc_use {
    const struct reg_file *f;
    const uint64_t *inos;
    size_t n;
};

/* Is a header file of inode INO still known: by a live registry entry, or
 * as a file in the namespace (renamed, or its entry lost)? */
static int ino_in_use(uint64_t ino, void *arg)
{
    const struct gc_use *u = arg;
    for (unsigned i = 0; i < reg_used(u->f); i++)
        if (entry_valid(&u->f->e[i]) && u->f->e[i].state == REG_LIVE &&
            u->f->e[i].ino == ino)
            return 1;
    for (size_t k = 0; k < u->n; k++)
        if (u->inos[k] == ino)
            return 1;
    return 0;
}

/* Lock files of regions that never got their name: create makes the lock
 * file before it links the region, so a creator killed in between leaves
 * it behind, and nothing else would ever remove it. One is removed when no region file has
 * its inode (U, as for huge data files) and no live creator holds a
 * reservation of its name. Run under the registry lock R: a create makes
 * its lock file only after reserving, and settles only after linking, so
 * one in progress is seen. */
static int lock_gc(int nsfd, struct reg *r, struct gc_use *u,
                   void (*fn)(const char *kind, const char *name, void *arg), void *arg)
{
    char **locks = NULL;
    size_t n = 0, cap = 0;
    int removed = 0;
    collect(nsfd, ".", &locks, &n, &cap, 0, 1);
    for (size_t i = 0; i < n; i++) {
        /* DIR/.LEAF.INO.lock names the region DIR/LEAF of inode INO. */
        char name[RPAL_NAME_MAX + 48];
        const char *slash = strrchr(locks[i], '/'), *leaf = slash ? slash + 1 : locks[i];
        size_t dl = slash ? (size_t)(slash - locks[i]) + 1 : 0;
        memcpy(name, locks[i], dl);
        snprintf(name + dl, sizeof name - dl, "%s", leaf + 1);
        char *dot = strrchr(name, '.');
        *dot = 0; /* ".lock" */
        dot = strrchr(name, '.');
        char *end;
        unsigned long long ino = dot ? strtoull(dot + 1, &end, 10) : 0;
        if (!dot || !ino || *end)
            continue;
        *dot = 0;
        if (rpal__ns_name_validate(name) < 0)
            continue;
        int kept = ino_in_use(ino, u); /* its region, maybe renamed */
        for (unsigned k = 0; !kept && k < reg_used(r->f); k++) {
            const struct reg_entry *e = &r->f->e[k];
            kept = entry_valid(e) && e->state == REG_RESERVED && !strcmp(e->name, name) &&
                   rpal__prim_proc_alive(e->pid, e->pid_start);
        }
        if (kept)
            continue;
        /* Unlink through the directory opened beneath the namespace, so
         * that no symlink swapped in meanwhile is followed. */
        if (dl)
            name[dl - 1] = 0;
        int dfd = dl ? rpal__prim_open_beneath(nsfd, name, O_RDONLY | O_DIRECTORY, 0) : nsfd;
        if (dfd >= 0 && unlinkat(dfd, leaf, 0) == 0) {
            removed++;
            if (fn)
                fn("lock", locks[i], arg);
        }
        if (dfd >= 0 && dfd != nsfd)
            close(dfd);
    }
    free_names(locks, n);
    return removed;
}

/* gc, first pass: the transient regions whose creator is gone and that
 * nobody has attached, unlinked. INOS[i] gets the inode of NAMES[i] if it
 * stays (0 if it was removed). Returns how many were removed. */
static int gc_regions(int nsfd, char **names, size_t n, uint64_t *inos,
                      struct rpal_region_info *info,
                      void (*fn)(const char *kind, const char *name, void *arg), void *arg)
{
    int removed = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (fstatat(nsfd, names[i], &st, AT_SYMLINK_NOFOLLOW) == 0)
            inos[i] = st.st_ino;
        if (stat_at(nsfd, names[i], info, NULL) < 0)
            continue;
        if (!(info->flags & RPAL_REGION_TRANSIENT) || info->creator_alive ||
            info->nattached)
            continue;
        if (rpal_region_unlink(names[i]) == 0) {
            inos[i] = 0;
            removed++;
            if (fn)
                fn("region", names[i], arg);
        }
    }
    return removed;
}

/* Whether the registry entry E no longer stands for anything: corrupt, a
 * reservation of a dead creator, or a live region whose file is gone. A
 * live region's file renamed behind rpal's back (its inode among the N
 * INOS of NAMES) is still in use: E follows it to its new name. */
static int gc_entry_stale(int nsfd, struct reg_entry *e, char **names, size_t n,
                          const uint64_t *inos)
{
    if (!entry_valid(e))
        return 1;
    if (e->state == REG_RESERVED)
        return !rpal__prim_proc_alive(e->pid, e->pid_start);
    if (e->state != REG_LIVE)
        return 0;
    struct stat st;
    int stale, fd = rpal__prim_open_beneath(nsfd, e->name, O_PATH, 0);
    if (fd >= 0) {
        stale = fstat(fd, &st) == 0 && st.st_ino != e->ino;
        close(fd);
    } else {
        stale = fd == -ENOENT;
    }
    for (size_t k = 0; stale && k < n; k++)
        if (inos[k] == e->ino) { /* renamed: follow the file */
            snprintf(e->name, sizeof e->name, "%s", names[k]);
            stale = 0;
        }
    return stale;
}

/* gc, second pass (registry locked): stale reservations freed. */
static int gc_reservations(int nsfd, struct reg *r, char **names, size_t n,
                           const uint64_t *inos,
                           void (*fn)(const char *kind, const char *name, void *arg),
                           void *arg)
{
    int removed = 0;
    for (unsigned i = 0; i < reg_used(r->f); i++) {
        struct reg_entry *e = &r->f->e[i];
        if (e->state == REG_FREE || !gc_entry_stale(nsfd, e, names, n, inos))
            continue;
        char what[sizeof e->name + 32];
        snprintf(what, sizeof what, "%.*s (0x%llx)", (int)RPAL_NAME_MAX,
                 entry_valid(e) ? e->name : "corrupt entry",
                 (unsigned long long)e->base);
        memset(e, 0, sizeof *e);
        removed++;
        if (fn)
            fn("reservation", what, arg);
    }
    return removed;
}

/* gc, third pass (registry locked): the entries beyond another user's
 * quota freed (a create short of room would take them back anyway), and
 * named, so that the user learns why others cannot attach them. */
static int gc_quota(int nsfd, struct reg *r,
                    void (*fn)(const char *kind, const char *name, void *arg), void *arg)
{
    struct quota q;
    struct qent *j = quota_judged(nsfd, r->f, &q);
    int removed = 0;
    for (unsigned i = 0; j && i < reg_used(r->f); i++) {
        struct reg_entry *e = &r->f->e[i];
        if (j[i].verdict != Q_OVER)
            continue;
        char what[sizeof e->name + 64];
        snprintf(what, sizeof what, "%.*s (uid %u, beyond its quota)", (int)RPAL_NAME_MAX,
                 e->name, (unsigned)j[i].uid);
        memset(e, 0, sizeof *e);
        removed++;
        if (fn)
            fn("quota", what, arg);
    }
    free(j);
    return removed;
}

int rpal__region_gc(void (*fn)(const char *kind, const char *name, void *arg),
              void *arg)
{
    struct walk w;
    int err = walk_begin(&w);
    if (err <= 0)
        return err;
    /* The inodes of the files that stay: a reservation whose file was
     * renamed behind rpal's back is still in use (gc_entry_stale). */
    uint64_t *inos = calloc(w.n ? w.n : 1, sizeof *inos);
    if (!inos) {
        walk_end(&w);
        return -ENOMEM;
    }
    int removed = gc_regions(w.nsfd, w.names, w.n, inos, w.info, fn, arg);
    struct reg r;
    if (reg_lock(w.nsfd, &r) == 0) {
        removed += gc_reservations(w.nsfd, &r, w.names, w.n, inos, fn, arg);
        removed += gc_quota(w.nsfd, &r, fn, arg);
        struct gc_use u = {r.f, inos, w.n};
        removed += lock_gc(w.nsfd, &r, &u, fn, arg);
        /* Data files of huge regions that lost their header (removed by
         * someone who could not read it, or by hand). */
        removed += rpal__huge_gc(w.nsfd, ino_in_use, &u, fn, arg);
        reg_unlock(&r);
    }
    free(inos);
    walk_end(&w);
    return removed;
}
