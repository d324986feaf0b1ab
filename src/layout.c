/* layout: what is mapped inside a region, the same for every sharer (the
 * mshare model: "modifications to the shared region affect all processes
 * sharing that region, just as changes by one thread affect all threads").
 *
 * The layout table lives in the region's header granule, mapped read-only
 * by every attacher. A changer (a read-write attacher) queues on a PI futex
 * (the turnstile: served in order), takes an OFD write lock, writes the new
 * table into the spare of two copies, bumps the generation word and
 * futex-wakes it: every sharer at once. Every process runs one agent thread
 * (signals blocked) that waits on the generation words of all its regions,
 * applies the change with mprotect/mmap/mremap (threads share the mm, so a
 * main thread busy computing is covered) and acknowledges with an OFD read
 * lock whose offset encodes the generation and its pid: read locks need
 * only read access, so read-only attachers acknowledge too, a dead
 * process's locks vanish with it, and one query tells whether anybody is
 * still at a generation. Anonymous objects made by rpal_region_map get
 * memory nobody had before (the side store, in the lock file), so that a
 * sharer the changer gave up on cannot write into a later object. See
 * docs/regions.md, "Layout".
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the shared format ---------------------------------------------------- */

#define GEN_MASK     0x7fffffffu /* generations count modulo 2^31 */
#define LAY_COPY_OFF (2 * RPAL_PAGE)
#define PROT_ALL (PROT_READ | PROT_WRITE | PROT_EXEC)

/* The side store: the lock file's bytes from SIDE_BASE hold the memory of
 * the anonymous objects rpal_region_map makes, each at offsets never used
 * before (side_next only grows), so that nobody who still maps an old
 * object (a detached sharer) can reach a new one. The lock file's OFD
 * locks are byte ranges of their own: they do not touch its data. */
#define SIDE_BASE    LAY_SIDE_BASE
#define SIDE_END     LAY_SIDE_END

/* struct lay_obj, struct lay_table and struct lay_ctl are in
 * src/internal.h (the fuzz targets and tests build them). */

#define LAY_COPY_SIZE ((sizeof(struct lay_table) + RPAL_PAGE - 1) / RPAL_PAGE * RPAL_PAGE)
_Static_assert(LAY_COPY_OFF + 2 * LAY_COPY_SIZE <= REGION_HDR_MAP,
               "the layout tables fit the mapped header area");
_Static_assert(sizeof(struct lay_ctl) <= RPAL_PAGE, "one control page");
_Static_assert(offsetof(struct lay_ctl, gen) == 8 && offsetof(struct lay_ctl, ack) == 12,
               "magic, gen and ack where fuzz_layout writes them");

static uint64_t copy_off(uint32_t gen)
{
    return LAY_COPY_OFF + (gen & 1) * LAY_COPY_SIZE;
}

static uint64_t table_check(const struct lay_table *t)
{
    uint64_t a = rpal__prim_fnv1a(t, offsetof(struct lay_table, check));
    uint32_t n = t->nobj < LAY_OBJ_MAX ? t->nobj : LAY_OBJ_MAX;
    return a * 31 + rpal__prim_fnv1a(t->obj, n * sizeof t->obj[0]);
}

/* An anonymous object's memory: the region file's pages at its own offset
 * (nothing else recorded), or side-store pages inside the side store. */
static int store_valid(const struct lay_obj *o)
{
    if (o->store == LAY_STORE_REGION)
        return o->foff == 0;
    return o->store == LAY_STORE_SIDE && o->foff % RPAL_PAGE == 0 && o->foff >= SIDE_BASE &&
           o->foff <= SIDE_END - o->len;
}

/* Every field of a table read from the shared file is checked before use
 * (any read-write attacher can write it, and nothing read from another
 * process is trusted): a corrupt layout is an error, never a crash. */
static int table_valid(const struct lay_table *t, uint32_t gen, uint64_t size)
{
    if (t->gen != gen || t->nobj > LAY_OBJ_MAX || t->check != table_check(t))
        return -EBADMSG;
    if (t->op > OP_UNMAP || (t->op_prot & ~PROT_ALL) || t->op_off % RPAL_PAGE ||
        t->op_len % RPAL_PAGE || t->op_len > size || t->op_off > size - t->op_len)
        return -EBADMSG;
    uint64_t end = 0;
    for (uint32_t i = 0; i < t->nobj; i++) {
        const struct lay_obj *o = &t->obj[i];
        if ((o->kind != RPAL_OBJ_ANON && o->kind != RPAL_OBJ_FILE) || (o->prot & ~PROT_ALL))
            return -EBADMSG;
        if (!o->len || o->off % RPAL_PAGE || o->len % RPAL_PAGE || o->off < end ||
            o->len > size || o->off > size - o->len)
            return -EBADMSG;
        end = o->off + o->len;
        if (o->kind == RPAL_OBJ_FILE &&
            (o->store != LAY_STORE_REGION || o->foff % RPAL_PAGE ||
             o->foff > (uint64_t)INT64_MAX - o->len || (o->maxprot & ~PROT_ALL) ||
             (o->prot & ~o->maxprot) || !memchr(o->path, 0, sizeof o->path)))
            return -EBADMSG;
        if (o->kind == RPAL_OBJ_ANON && !store_valid(o))
            return -EBADMSG;
    }
    return 0;
}

/* The header area is never touched directly: anyone who may write the
 * region may truncate its file, and touching a mapping past the end of its
 * file raises SIGBUS. It is read from the header mapping HDR through the
 * kernel (rpal__prim_mem_read), where a cut page is an error, -EIO
 * (rpal__prim_mem_read costs about six times a pread, but needs no descriptor of
 * the region kept open), or, with PRIV, from a private copy of the header
 * (rpal__lay_parse), which cannot vanish. Directly, the mapping serves only as
 * the futex words' address. */
static int hdr_read(int priv, const uint8_t *hdr, void *dst, size_t len, uint64_t off)
{
    if (priv) {
        memcpy(dst, hdr + off, len);
        return 0;
    }
    return rpal__prim_mem_read(dst, hdr + off, len) == 0 ? 0 : -EIO;
}

/* Copy the control page out of the header. The copy is ours alone: its
 * futex words (_Atomic in the file) are read from it relaxed. */
static int ctl_read(int priv, const uint8_t *hdr, struct lay_ctl *c)
{
    if (hdr_read(priv, hdr, c, sizeof *c, LAY_CTL_OFF) < 0)
        return -EIO;
    /* The tables are read after the generation that names them: pairs with
     * the fence between a changer's table and generation writes. */
    rpal_fence_seq_cst();
    return c->magic == LAY_MAGIC ? 0 : c->magic == LAY_MAGIC_V1 ? -EPROTO : -EBADMSG;
}

/* Objects read with a table's head in one copy: most layouts have fewer,
 * and each copy through the kernel is a system call. */
#define LAY_READ_FIRST 16u

/* Copy the table of generation GEN out of the header. */
static int table_read(int priv, const uint8_t *hdr, uint32_t gen, uint64_t size,
                      struct lay_table *t)
{
    const size_t head = offsetof(struct lay_table, obj), osz = sizeof t->obj[0];
    uint64_t off = copy_off(gen);
    if (hdr_read(priv, hdr, t, head + LAY_READ_FIRST * osz, off) < 0)
        return -EIO;
    uint32_t n = t->nobj;
    if (n > LAY_OBJ_MAX)
        return -EBADMSG;
    if (n > LAY_READ_FIRST &&
        hdr_read(priv, hdr, &t->obj[LAY_READ_FIRST], (n - LAY_READ_FIRST) * osz,
                 off + head + LAY_READ_FIRST * osz) < 0)
        return -EIO;
    return table_valid(t, gen, size);
}

/* The current generation and its table. A change may be rewriting the
 * other copy: a torn read fails the checksum and is read again. */
static int table_current(const uint8_t *hdr, uint64_t size, uint32_t *gen,
                         struct lay_table *t)
{
    int err = -EBADMSG;
    for (int tries = 0; tries < 8 && err == -EBADMSG; tries++) {
        struct lay_ctl c;
        if ((err = ctl_read(0, hdr, &c)) < 0)
            break;
        *gen = rpal_load_relaxed(&c.gen); /* our copy: nobody else writes it */
        err = table_read(0, hdr, *gen, size, t);
    }
    return err;
}

static size_t table_bytes(const struct lay_table *t)
{
    return offsetof(struct lay_table, obj) + t->nobj * sizeof t->obj[0];
}

int rpal__lay_init(int fd, uint64_t size, int empty)
{
    struct lay_ctl c = {.magic = LAY_MAGIC, .side_next = SIDE_BASE};
    struct lay_table *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    if (!empty) {
        t->nobj = 1;
        t->obj[0].off = 0;
        t->obj[0].len = size;
        t->obj[0].kind = RPAL_OBJ_ANON;
        t->obj[0].prot = PROT_READ | PROT_WRITE;
    }
    t->check = table_check(t);
    int err = 0;
    if (pwrite(fd, t, table_bytes(t), (off_t)copy_off(0)) != (ssize_t)table_bytes(t) ||
        pwrite(fd, &c, sizeof c, LAY_CTL_OFF) != (ssize_t)sizeof c)
        err = -EIO;
    free(t);
    return err;
}

uint64_t rpal__lay_table_off(uint32_t gen)
{
    return copy_off(gen);
}

void rpal__lay_table_seal(uint8_t *hdr, uint32_t gen)
{
    struct lay_table *t = (struct lay_table *)(hdr + copy_off(gen));
    t->check = table_check(t);
}

int rpal__lay_read(int fd, uint64_t size, uint32_t *gen, struct rpal_region_object *objs,
             unsigned max)
{
    /* The control page and both tables, as an attacher maps them. */
    size_t n = LAY_COPY_OFF + 2 * LAY_COPY_SIZE;
    uint8_t *hdr = calloc(1, REGION_HDR_MAP);
    if (!hdr)
        return -ENOMEM;
    int err = -EBADMSG;
    /* A change may be rewriting the other copy: a torn read fails the
     * checksum and is read again. */
    for (int tries = 0; tries < 8 && err == -EBADMSG; tries++) {
        if (pread(fd, hdr, n, 0) != (ssize_t)n)
            break;
        err = rpal__lay_parse(hdr, size, gen, objs, max);
    }
    free(hdr);
    return err;
}

int rpal__lay_parse(const uint8_t *hdr, uint64_t size, uint32_t *gen,
              struct rpal_region_object *objs, unsigned max)
{
    const struct lay_ctl *c = (const struct lay_ctl *)(hdr + LAY_CTL_OFF);
    if (c->magic != LAY_MAGIC)
        return c->magic == LAY_MAGIC_V1 ? -EPROTO : -EBADMSG;
    /* Read once; the table's own generation and checksum catch a copy
     * that is stale or torn. */
    uint32_t g = rpal_load_relaxed(&c->gen);
    struct lay_table *t = malloc(sizeof *t);
    if (!t)
        return -ENOMEM;
    int err = table_read(1, hdr, g, size, t);
    if (err == 0 && gen)
        *gen = g;
    if (err == 0) {
        for (uint32_t i = 0; i < t->nobj && i < max; i++) {
            const struct lay_obj *o = &t->obj[i];
            struct rpal_region_object *d = &objs[i];
            memset(d, 0, sizeof *d);
            d->offset = o->off;
            d->length = o->len;
            d->kind = (int)o->kind;
            d->prot = (int)o->prot;
            if (o->kind == RPAL_OBJ_FILE) {
                d->file_offset = o->foff;
                d->dev = o->dev;
                d->ino = o->ino;
                memcpy(d->path, o->path, sizeof d->path);
            }
        }
        err = (int)t->nobj;
    }
    free(t);
    return err;
}

/* ---- the lock file ---------------------------------------------------------
 * Its OFD locks: byte 0: a changer holds it write-locked; an attach or a
 * fork registering holds it read-locked. From 2^32, one read lock per
 * sharer, its record, at 2^32 + gen * 2^24 + pid * 4 + failed, moved as it
 * applies generations: all the records of one generation lie together, so
 * that one query tells whether anybody is still at a generation. Its data,
 * from SIDE_BASE: the side store (see there). */

#define LK_CHANGE   0ull
#define LK_REC_BASE (1ull << 32)
#define LK_PID_LIMIT (1ull << 22) /* pid_max can be at most 2^22 */
#define LK_GEN_SHIFT 24           /* each generation's records: 4 bytes per pid */
#define LK_GEN_SPAN (LK_PID_LIMIT << 2)
#define LK_ATTACH_NS (5ll * 1000000000) /* waiting for a change to finish */

static uint64_t rec_gen(uint32_t gen)
{
    return LK_REC_BASE + ((uint64_t)(gen & GEN_MASK) << LK_GEN_SHIFT);
}

/* 4 bytes per pid, so that two sharers' records are never adjacent (the
 * kernel merges adjacent locks of one holder only, but a reader of a merged
 * range could not tell the pids apart), and generations 2^24 apart, so that
 * one sharer's old and new records are not adjacent either. */
static uint64_t rec_off(pid_t pid, uint32_t gen, int failed)
{
    return rec_gen(gen) + ((uint64_t)(uint32_t)pid << 2) + (failed ? 1 : 0);
}

static int lock_name(const char *name, uint64_t ino, char *buf, size_t n)
{
    const char *s = strrchr(name, '/');
    int l = s ? snprintf(buf, n, "%.*s/.%s.%llu.lock", (int)(s - name), name, s + 1,
                         (unsigned long long)ino)
              : snprintf(buf, n, ".%s.%llu.lock", name, (unsigned long long)ino);
    return l < 0 || (size_t)l >= n ? -ENAMETOOLONG : 0;
}

int rpal__lay_lock_open(int nsfd, const char *name, uint64_t ino, unsigned create_mode, int rdwr)
{
    char lk[RPAL_NAME_MAX + 48];
    int err = lock_name(name, ino, lk, sizeof lk);
    if (err < 0)
        return err;
    /* Read access is all a read-only attacher needs (read locks, and its
     * read-only mappings of the side store); a read-write attacher opens it
     * read-write, as the file's mode (the region's) allows, for writable
     * side-store mappings and for changes. */
    int acc = rdwr ? O_RDWR : O_RDONLY;
    int fd = rpal__prim_open_beneath(nsfd, lk, acc | O_NONBLOCK, 0);
    if (fd == -ENOENT && create_mode) {
        fd = rpal__prim_open_beneath(nsfd, lk, acc | O_CREAT | O_EXCL, create_mode);
        if (fd >= 0)
            fchmod(fd, create_mode); /* the umask applied */
        else if (fd == -EEXIST)
            fd = rpal__prim_open_beneath(nsfd, lk, acc | O_NONBLOCK, 0);
    }
    if (fd == -EACCES && rdwr) /* it follows the layout; changes will say -EACCES */
        fd = rpal__prim_open_beneath(nsfd, lk, O_RDONLY | O_NONBLOCK, 0);
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return -EBADMSG;
        }
    }
    return fd;
}

void rpal__lay_lock_unlink(int dirfd, const char *leaf, uint64_t ino)
{
    char lk[RPAL_NAME_MAX + 48];
    if (lock_name(leaf, ino, lk, sizeof lk) == 0)
        unlinkat(dirfd, lk, 0);
}

/* ---- the process side -------------------------------------------------------- */

struct lay {
    pthread_mutex_t mu;         /* the fields below; agent and changers */
    pthread_mutex_t chg_mu;     /* this process's changes, one at a time */
    uint64_t base, size, granule;
    const uint8_t *hdr;         /* header area, read-only; read through
                                   hdr_read only (see there) */
    const struct lay_ctl *ctl;  /* in it: the futex words' address */
    uint8_t *src;               /* PROT_NONE view of the whole file */
    int srcfd;                  /* the file, for view_dup where mremap
                                   cannot duplicate (dup_by_fd), else -1 */
    int rdonly;
    int lkfd;                   /* the lock file: our record lives on it, the
                                   side store is mapped from it */
    int lk_rw;                  /* ... and it is open read-write */
    uint8_t *rw;                /* header area, writable during changes only */
    unsigned rw_users;          /* changes of this process in flight */
    pid_t pid;                  /* our pid (forked children: theirs) */
    uint32_t applied;           /* generation applied in this process */
    uint32_t regen;             /* generation we registered at */
    uint64_t rec;               /* our record lock's offset, 0: none */
    int detached;               /* given up on by a changer: unmapped */
    struct lay_table *cur;      /* the table applied here */
    struct lay_table *tmp;
    struct lay *next;           /* the agent's list */
};

/* fork() must not copy a region's state half changed: every step that
 * changes it (an agent's, a changer's) runs under l->mu and, for reading,
 * this lock, which the fork handler takes for writing: one lock, however
 * many regions (ThreadSanitizer follows at most 64 held by one thread).
 * Writers first, so that a fork is not held off by a stream of steps. */
static pthread_rwlock_t g_fork_rw = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;

static void lay_lock(struct lay *l)
{
    pthread_rwlock_rdlock(&g_fork_rw);
    pthread_mutex_lock(&l->mu);
}

static void lay_unlock(struct lay *l)
{
    pthread_mutex_unlock(&l->mu);
    pthread_rwlock_unlock(&g_fork_rw);
}

static int eff_prot(const struct lay *l, unsigned prot)
{
    return (int)(l->rdonly ? prot & ~(unsigned)PROT_WRITE : prot);
}

/* A second mapping, PROT_NONE, of the pages of the file at [OFF, OFF+LEN),
 * at AT (replacing what is there) or anywhere (AT NULL): a duplicate (mremap
 * with old size 0) of the PROT_NONE view taken at attach, so no descriptor
 * of the region needs to stay open. Where mremap cannot duplicate
 * (dup_by_fd) the descriptor is kept and mapped again instead. */
static void *view_dup(struct lay *l, uint64_t off, uint64_t len, void *at)
{
    if (l->srcfd >= 0)
        return mmap(at, len, PROT_NONE, MAP_SHARED | MAP_NORESERVE | (at ? MAP_FIXED : 0),
                    l->srcfd, (off_t)off);
    return mremap(l->src + off, 0, len, MREMAP_MAYMOVE | (at ? MREMAP_FIXED : 0), at);
}

/* 1 where mremap with old size 0 does not duplicate a shared mapping:
 * valgrind 3.19 refuses it (the valgrind build, -DRPAL_VALGRIND, knows),
 * and qemu-user (7.2 to 10.0, tests/vm/arm64.sh) answers ENOMEM, which one
 * probe per process finds out. */
static int dup_by_fd(void)
{
#ifdef RPAL_VALGRIND
    return 1;
#else
    static _Atomic int cached = -1;
    int c = rpal_load_relaxed(&cached);
    if (c < 0) {
        void *a = mmap(NULL, RPAL_PAGE, PROT_NONE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        void *b = a == MAP_FAILED ? MAP_FAILED : mremap(a, 0, RPAL_PAGE, MREMAP_MAYMOVE);
        c = a != MAP_FAILED && b == MAP_FAILED;
        if (b != MAP_FAILED)
            munmap(b, RPAL_PAGE);
        if (a != MAP_FAILED)
            munmap(a, RPAL_PAGE);
        rpal_store_relaxed(&cached, c);
    }
    return c;
#endif
}

/* Make [OFF, OFF+LEN) of the data the region file's own pages again,
 * PROT_NONE. */
static int restore(struct lay *l, uint64_t off, uint64_t len)
{
    void *p = view_dup(l, l->granule + off, len, (void *)(uintptr_t)(l->base + off));
    return p == MAP_FAILED ? -errno : 0;
}

static int try_open(const char *path, int want_write, const struct lay_obj *o,
                    int *writable)
{
    int fd = -1;
    *writable = 0;
    if (want_write && (fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) >= 0)
        *writable = 1;
    if (fd < 0 && (fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_dev != o->dev ||
        (uint64_t)st.st_ino != o->ino) {
        close(fd);
        return -ESTALE; /* not the file that was mapped */
    }
    return fd;
}

/* Open a file object: through the changer's own descriptor while it waits
 * for us, else by its recorded path; either must be the same file. */
static int open_obj(const struct lay *l, const struct lay_obj *o, int *writable)
{
    int want = !l->rdonly && (o->maxprot & PROT_WRITE);
    int fd = -ENOENT;
    if (o->src_pid > 0 && o->src_fd >= 0) {
        char p[64];
        snprintf(p, sizeof p, "/proc/%d/fd/%d", (int)o->src_pid, (int)o->src_fd);
        fd = try_open(p, want, o, writable);
    }
    if (fd < 0 && o->path[0] == '/')
        fd = try_open(o->path, want, o, writable);
    return fd;
}

/* mmap FD from FOFF over object O's range with its protection, or without
 * PROT_WRITE (and -EACCES: mapped, but this sharer cannot write it) when
 * the descriptor is read-only. */
static int map_shared(struct lay *l, const struct lay_obj *o, int fd, int writable,
                      uint64_t foff)
{
    int prot = eff_prot(l, o->prot), err = 0;
    if (!writable && (prot & PROT_WRITE)) {
        prot &= ~PROT_WRITE;
        err = -EACCES;
    }
    void *at = (void *)(uintptr_t)(l->base + o->off);
    if (mmap(at, o->len, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)foff) == MAP_FAILED) {
        err = -errno;
        restore(l, o->off, o->len);
    }
    return err;
}

/* Map object O over its range, which is PROT_NONE region pages. */
static int map_obj(struct lay *l, const struct lay_obj *o)
{
    if (o->kind == RPAL_OBJ_ANON && o->store == LAY_STORE_REGION) {
        void *at = (void *)(uintptr_t)(l->base + o->off);
        return mprotect(at, o->len, eff_prot(l, o->prot)) < 0 ? -errno : 0;
    }
    if (o->kind == RPAL_OBJ_ANON)
        return map_shared(l, o, l->lkfd, l->lk_rw, o->foff);
    int w;
    int fd = open_obj(l, o, &w);
    if (fd < 0)
        return fd;
    int err = map_shared(l, o, fd, w, o->foff);
    close(fd);
    return err;
}

/* Give [OFF, OFF+LEN) the protections the objects of T have there. */
static int protect_range(struct lay *l, const struct lay_table *t, uint64_t off,
                         uint64_t len)
{
    int err = 0;
    for (uint32_t i = 0; i < t->nobj; i++) {
        const struct lay_obj *o = &t->obj[i];
        uint64_t lo = o->off > off ? o->off : off;
        uint64_t hi = o->off + o->len < off + len ? o->off + o->len : off + len;
        if (lo >= hi)
            continue;
        void *at = (void *)(uintptr_t)(l->base + lo);
        int prot = eff_prot(l, o->prot);
        if (mprotect(at, hi - lo, prot) < 0) {
            err = -errno;
            /* A file (or the side store) this sharer could open only
             * read-only. */
            if (errno == EACCES && (prot & PROT_WRITE))
                mprotect(at, hi - lo, prot & ~PROT_WRITE);
        }
    }
    return err;
}

/* Apply the one change that made T from the table before it. */
static int apply_op(struct lay *l, const struct lay_table *t)
{
    switch (t->op) {
    case OP_MAP:
        for (uint32_t i = 0; i < t->nobj; i++)
            if (t->obj[i].off == t->op_off)
                return map_obj(l, &t->obj[i]);
        return -EBADMSG;
    case OP_PROTECT:
        return protect_range(l, t, t->op_off, t->op_len);
    case OP_UNMAP:
        return restore(l, t->op_off, t->op_len);
    }
    return -EBADMSG;
}

/* Apply all of T from scratch; the number of objects that failed, or a
 * negative errno if the data could not even be reset. */
static int apply_all(struct lay *l, const struct lay_table *t)
{
    int err = restore(l, 0, l->size), failed = 0;
    if (err < 0)
        return err;
    for (uint32_t i = 0; i < t->nobj; i++)
        if (map_obj(l, &t->obj[i]) < 0)
            failed++;
    return failed;
}

/* Move our record to generation GEN. The new lock is taken before the old
 * one goes, so that a changer scanning never misses us. */
static int rec_set(struct lay *l, uint32_t gen, int failed)
{
    uint64_t off = rec_off(l->pid, gen, failed);
    if (off == l->rec)
        return 0;
    int err = rpal__prim_ofd_lock(l->lkfd, F_RDLCK, off, 1, 0);
    if (err < 0)
        return err;
    if (l->rec)
        rpal__prim_ofd_lock(l->lkfd, F_UNLCK, l->rec, 1, 0);
    l->rec = off;
    return 0;
}

/* A changer gave up waiting for us: stop following the region. Its range
 * becomes inaccessible (anonymous PROT_NONE, so nothing else is placed
 * there) until the handle is detached. */
static void self_detach(struct lay *l)
{
    mmap((void *)(uintptr_t)l->base, l->size, PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    rpal__prim_ofd_lock(l->lkfd, F_UNLCK, LK_REC_BASE, 0, 0);
    l->rec = 0;
    l->detached = 1;
}

static int listed_detached(const struct lay *l, const struct lay_ctl *c)
{
    pid_t me = l->pid;
    for (uint32_t i = 0; i < c->ndet && i < LAY_DET_MAX; i++) {
        uint32_t d = (c->det[i].gen - l->regen) & GEN_MASK;
        /* Only a change after our registration can have given up on us:
         * an older entry is a previous process with our pid. */
        if (c->det[i].pid == me && d != 0 && d < GEN_MASK / 2)
            return 1;
    }
    return 0;
}

/* 1 if somebody still holds a record of generation GEN (other than our own
 * description, whose locks never conflict with its queries), 0 if nobody,
 * or a negative errno. */
static int gen_busy(int fd, uint32_t gen)
{
    return rpal__prim_ofd_test(fd, rec_gen(gen), LK_GEN_SPAN, NULL, NULL);
}

/* The control page into C and, in the same system call (each is one on
 * this path, which every sharer runs for every change), the table of the
 * generation after ours into l->tmp, as it usually is the current one: 0
 * if it is; -EAGAIN if the generation is another or that table did not
 * check (read again after the control page: nothing orders the two reads
 * of one call, a stale copy fails its generation or checksum); -EIO if the
 * header is cut; -EBADMSG for a bad control page. */
static int ctl_and_next(struct lay *l, struct lay_ctl *c)
{
    uint32_t next = (l->applied + 1) & GEN_MASK;
    struct lay_table *t = l->tmp;
    const size_t head = offsetof(struct lay_table, obj) + LAY_READ_FIRST * sizeof t->obj[0];
    if (rpal__prim_mem_read2(c, l->hdr + LAY_CTL_OFF, sizeof *c, t, l->hdr + copy_off(next), head) < 0)
        return -EIO;
    if (c->magic != LAY_MAGIC)
        return -EBADMSG; /* the agent's answer to any corrupt header */
    if (rpal_load_relaxed(&c->gen) != next || t->nobj > LAY_READ_FIRST ||
        table_valid(t, next, l->size) < 0)
        return -EAGAIN;
    return 0;
}

/* The agent's step for one region (l->mu held): catch up with the region's
 * generation, and say in *GEN which one to wait on next. A file cut short
 * under its header (-EIO) cannot be followed any more: the region is
 * detached here, its range PROT_NONE (a guarded access then fails with
 * -EFAULT instead of SIGBUS), and changes through its handle are -ESTALE. */
static void sync_region(struct lay *l, uint32_t *gen)
{
    struct lay_ctl c;
    int err = ctl_and_next(l, &c);
    if (err == -EIO) {
        self_detach(l);
        return;
    }
    uint32_t g = rpal_load_relaxed(&c.gen); /* our copy */
    *gen = g;
    if (l->detached || g == l->applied)
        return;
    if ((err == 0 || err == -EAGAIN) && listed_detached(l, &c)) {
        self_detach(l);
        return;
    }
    if (err == -EAGAIN) /* not the table we guessed */
        err = table_read(0, l->hdr, g, l->size, l->tmp);
    if (err == -EBADMSG) /* torn by a change: read both again */
        err = table_current(l->hdr, l->size, &g, l->tmp);
    if (err == -EIO) {
        self_detach(l);
        return;
    }
    *gen = g;
    int failed = err < 0;
    if (err == 0) {
        if (l->tmp->op != OP_INIT && g == ((l->applied + 1) & GEN_MASK))
            failed = apply_op(l, l->tmp) < 0;
        else
            failed = apply_all(l, l->tmp) != 0;
        memcpy(l->cur, l->tmp, table_bytes(l->tmp));
    }
    /* A corrupt table leaves the mappings as they were, and says so. */
    l->applied = g;
    rec_set(l, g, failed);
    /* The changer waits until nobody is left at the generation before:
     * the last to leave it wakes the changer (any one may, if several see
     * it empty at once). One that dies instead wakes nobody; the changer's
     * wait is bounded for that. */
    if (gen_busy(l->lkfd, (g - 1) & GEN_MASK) == 0)
        rpal__prim_futex_wake(&l->ctl->ack, 1, 1);
}

/* ---- deadlines --------------------------------------------------------------
 * Deadlines are CLOCK_MONOTONIC nanoseconds (rpal__prim_now_ns), so that a clock
 * set back or forward moves none of them. */

static uint64_t deadline_in(uint64_t ns)
{
    return rpal__prim_now_ns() + ns;
}

/* Nanoseconds left until DEADLINE, and at least MIN: 0 once it has passed
 * (rpal__prim_ofd_lock then tries once and says -EAGAIN), 1 where the caller
 * wants a timeout reported as one (-ETIMEDOUT). */
static int64_t ns_left(uint64_t deadline, int64_t min)
{
    uint64_t now = rpal__prim_now_ns();
    int64_t left = now < deadline ? (int64_t)(deadline - now) : 0;
    return left > min ? left : min;
}

/* ---- the agent thread ---------------------------------------------------- */

#define AGENT_WAITV_MAX 127 /* FUTEX_WAITV_MAX is 128, one is the control word */

/* A region's hold across fork(): a description of its lock file of our
 * own, read-locked on byte 0 (-1: none could be taken). */
struct fork_hold {
    struct lay *l;
    int fd;
};

static struct {
    pthread_mutex_t mu;         /* the list; taken before g_fork_rw */
    struct lay *list;
    _Atomic uint32_t ctl;       /* bumped when the list changes */
    pid_t pid;                  /* the process whose agent runs (0: none) */
    pthread_once_t once;
    struct fork_hold *hold;     /* held across fork(): see atfork_prepare */
    size_t nhold;
} g_agent = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, PTHREAD_ONCE_INIT, NULL, 0};

static void *agent_main(void *arg)
{
    /* Running: see agent_start. */
    rpal_store_release((_Atomic uint32_t *)arg, 1); /* pairs with agent_start's acquire */
    rpal__prim_futex_wake(arg, 1, 0);
    struct futex_waitv w[AGENT_WAITV_MAX + 1];
    for (;;) {
        uint32_t c = rpal_load_acquire(&g_agent.ctl); /* pairs with agent_kick */
        unsigned n = 0, more = 0;
        pthread_mutex_lock(&g_agent.mu);
        for (struct lay *l = g_agent.list; l; l = l->next) {
            if (l->detached)
                continue;
            uint32_t g = 0;
            /* sync_region reads the generation under l->mu: read before it,
             * it can be older than one a changer of this process applied
             * meanwhile, and the agent would take this process back to a
             * layout without that change (its own new object PROT_NONE
             * again, when sharers change their ranges at once). */
            lay_lock(l);
            sync_region(l, &g);
            int gone = l->detached;
            lay_unlock(l);
            if (gone)
                continue;
            if (n == AGENT_WAITV_MAX) {
                more = 1;
                continue;
            }
            memset(&w[n], 0, sizeof w[n]);
            w[n].uaddr = (uintptr_t)&l->ctl->gen;
            w[n].val = g;
            w[n].flags = FUTEX_32; /* shared: other processes wake it */
            n++;
        }
        pthread_mutex_unlock(&g_agent.mu);
        memset(&w[n], 0, sizeof w[n]);
        w[n].uaddr = (uintptr_t)&g_agent.ctl;
        w[n].val = c;
        w[n].flags = FUTEX_32 | FUTEX_PRIVATE_FLAG;
        /* Regions past the waitv limit are polled every 10 ms; so are all
         * of them where futex_waitv is missing (Linux before 5.16, or
         * valgrind 3.19), waiting on the control word alone meanwhile. A
         * word whose page was cut from its file makes the wait fail at once
         * (-EFAULT); the next round finds that region and detaches it, and
         * the nap bounds the spin if it does not. */
        int werr = rpal__prim_futex_waitv(w, n + 1, more ? 10000000 : 3600ll * 1000000000);
        if (werr == -ENOSYS)
            rpal__prim_futex_wait(&g_agent.ctl, c, 0, 10000000);
        else if (werr == -EFAULT)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return NULL;
}

static void agent_kick(void)
{
    rpal_fetch_add_acq_rel(&g_agent.ctl, 1); /* pairs with agent_main's acquire */
    rpal__prim_futex_wake(&g_agent.ctl, 1, 0);
}

/* g_agent.mu held. */
static int agent_start(void)
{
    if (g_agent.pid == rpal__prim_getpid())
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_t th;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    /* The thread starts with every signal blocked: it never runs a handler
     * of the application's. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    static _Atomic uint32_t running;
    rpal_store_relaxed(&running, 0);
    int err = pthread_create(&th, &a, agent_main, (void *)&running);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    if (err)
        return -err;
    /* Wait (a while) until the thread runs our code: the runtime sets a
     * new thread up before that, and may allocate for it (AddressSanitizer
     * does), so a fork() meanwhile would copy its allocator locked, and
     * the child's own agent could never start. */
    uint64_t until = deadline_in(1000000000);
    for (int64_t left; !rpal_load_acquire(&running) && (left = ns_left(until, 0)) > 0;)
        rpal__prim_futex_wait(&running, 0, 0, left);
    g_agent.pid = rpal__prim_getpid();
    return 0;
}

/* fork(): the child is a new sharer with the parent's mappings. Changes
 * are held off (a read lock on byte 0 of each lock file, through a
 * description of its own that parent and child both close) from before the
 * fork until the child has registered, so no change can miss it. A region
 * that could not be held (out of memory or descriptors, or a change that
 * did not end within 5 s) is detached in the child: it may have missed a
 * change. Prepare handlers may allocate: glibc takes its malloc locks after
 * them. */
static void atfork_prepare(void)
{
    size_t n = 0;
    pthread_mutex_lock(&g_agent.mu);
    for (struct lay *l = g_agent.list; l; l = l->next)
        n++;
    struct fork_hold *h = n ? calloc(n, sizeof *h) : NULL;
    size_t k = 0;
    for (struct lay *l = g_agent.list; h && l && k < n; l = l->next, k++) {
        char p[PRIM_FD_PATH];
        h[k].l = l;
        h[k].fd = l->detached ? -1 : open(rpal__prim_fd_path(p, l->lkfd), O_RDONLY | O_CLOEXEC);
    }
    pthread_mutex_unlock(&g_agent.mu);
    /* Not under g_agent.mu: a change of another process waits for our
     * agent while it holds the lock we wait for. */
    for (size_t i = 0; i < k; i++)
        if (h[i].fd >= 0 && rpal__prim_ofd_lock(h[i].fd, F_RDLCK, LK_CHANGE, 1, LK_ATTACH_NS) < 0) {
            close(h[i].fd);
            h[i].fd = -1;
        }
    pthread_mutex_lock(&g_agent.mu);
    pthread_rwlock_wrlock(&g_fork_rw);
    g_agent.hold = h;
    g_agent.nhold = k;
}

static void fork_release(void)
{
    for (size_t i = 0; i < g_agent.nhold; i++)
        if (g_agent.hold[i].fd >= 0)
            close(g_agent.hold[i].fd);
    free(g_agent.hold);
    g_agent.hold = NULL;
    g_agent.nhold = 0;
}

static void atfork_parent(void)
{
    pthread_rwlock_unlock(&g_fork_rw);
    fork_release();
    pthread_mutex_unlock(&g_agent.mu);
}

static int fork_held(const struct lay *l)
{
    for (size_t i = 0; i < g_agent.nhold; i++)
        if (g_agent.hold[i].l == l)
            return g_agent.hold[i].fd >= 0;
    return 0;
}

/* Register the child as a sharer of L at the generation its mappings
 * have; 0, or -1 if it cannot follow L (L is then detached here). */
static int fork_register(struct lay *l)
{
    /* The inherited descriptor shares the parent's description and so its
     * record: take a description of our own, with the same access. */
    char p[PRIM_FD_PATH];
    int fd = l->detached ? -1 : open(rpal__prim_fd_path(p, l->lkfd),
                                     (l->lk_rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    close(l->lkfd);
    l->lkfd = fd;
    l->pid = rpal__prim_getpid();
    l->rec = 0;
    l->regen = l->applied;
    if (fd >= 0 && fork_held(l) && rec_set(l, l->applied, 0) == 0)
        return 0;
    if (fd >= 0) {
        close(fd);
        l->lkfd = -1;
    }
    if (!l->detached)
        self_detach(l);
    return -1;
}

static void atfork_child(void)
{
    int any = 0;
    for (struct lay *l = g_agent.list; l; l = l->next) {
        if (fork_register(l) == 0)
            any = 1;
        /* A change in flight in another thread of the parent held these:
         * none is in flight in the child. */
        pthread_mutex_init(&l->chg_mu, NULL);
        if (l->rw_users) {
            l->rw_users = 0;
            mprotect(l->rw, REGION_HDR_MAP, PROT_NONE);
        }
    }
    /* Made anew, not unlocked: it may record waiters (the parent's agent)
     * that do not exist here, and unlocking would wait for them. */
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&g_fork_rw, &a);
    pthread_rwlockattr_destroy(&a);
    g_agent.pid = 0; /* threads do not survive fork */
    if (any && agent_start() < 0)
        for (struct lay *l = g_agent.list; l; l = l->next)
            if (!l->detached)
                self_detach(l);
    fork_release();
    pthread_mutex_unlock(&g_agent.mu);
}

static void agent_once(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void lay_free(struct lay *l)
{
    if (l->src)
        munmap(l->src, l->granule + l->size);
    if (l->rw)
        munmap(l->rw, REGION_HDR_MAP);
    if (l->lkfd >= 0)
        close(l->lkfd);
    if (l->srcfd >= 0)
        close(l->srcfd);
    free(l->cur);
    free(l->tmp);
    pthread_mutex_destroy(&l->mu);
    pthread_mutex_destroy(&l->chg_mu);
    free(l);
}

/* A handle's layout state, not attached yet (NULL: out of memory). */
static struct lay *lay_new(int fd, int lkfd, uint64_t base, uint64_t size, uint64_t granule,
                           int rdonly)
{
    (void)fd;
    struct lay *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->chg_mu, NULL);
    l->base = base;
    l->size = size;
    l->granule = granule;
    l->hdr = (const uint8_t *)(uintptr_t)(base - granule);
    l->ctl = (const struct lay_ctl *)(l->hdr + LAY_CTL_OFF);
    l->rdonly = rdonly;
    l->lkfd = lkfd;
    l->lk_rw = (fcntl(lkfd, F_GETFL) & O_ACCMODE) == O_RDWR;
    l->pid = rpal__prim_getpid();
    l->srcfd = dup_by_fd() ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
    l->cur = malloc(sizeof *l->cur);
    l->tmp = malloc(sizeof *l->tmp);
    return l;
}

int rpal__lay_attach(int fd, int lkfd, uint64_t base, uint64_t size, uint64_t granule,
               int rdonly, struct lay **out)
{
    struct lay *l = lay_new(fd, lkfd, base, size, granule, rdonly);
    if (!l) {
        close(lkfd);
        return -ENOMEM;
    }
    int err = 0, failed = 0, locked = 0;
    if (!l->cur || !l->tmp) {
        err = -ENOMEM;
        goto fail;
    }
    if (dup_by_fd() && l->srcfd < 0) {
        err = -errno;
        goto fail;
    }
#ifndef RPAL_VALGRIND
    /* (valgrind's build has no view: view_dup maps the descriptor, and
     * valgrind would not place a view of a large region anywhere below the
     * 128 GiB it manages) */
    void *src = mmap(NULL, granule + size, PROT_NONE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (src == MAP_FAILED) {
        err = -errno;
        goto fail;
    }
    l->src = src;
#endif
    pthread_once(&g_agent.once, agent_once);
    /* No change runs while we read the layout and register. */
    if ((err = rpal__prim_ofd_lock(lkfd, F_RDLCK, LK_CHANGE, 1, LK_ATTACH_NS)) < 0)
        goto fail;
    locked = 1;
    uint32_t g;
    if ((err = table_current(l->hdr, size, &g, l->tmp)) < 0) {
        if (err == -EIO)
            err = -EBADMSG; /* cut short: not a region file any more */
        goto fail;
    }
    if ((failed = apply_all(l, l->tmp)) < 0) {
        err = failed;
        goto fail;
    }
    memcpy(l->cur, l->tmp, table_bytes(l->tmp));
    l->applied = l->regen = g;
    if ((err = rec_set(l, g, failed > 0)) < 0)
        goto fail;
    pthread_mutex_lock(&g_agent.mu);
    err = agent_start();
    if (err == 0) {
        l->next = g_agent.list;
        g_agent.list = l;
        agent_kick();
    }
    pthread_mutex_unlock(&g_agent.mu);
    if (err < 0)
        goto fail;
    rpal__prim_ofd_lock(lkfd, F_UNLCK, LK_CHANGE, 1, 0);
    *out = l;
    return failed;
fail:
    if (locked)
        rpal__prim_ofd_lock(lkfd, F_UNLCK, LK_CHANGE, 1, 0);
    lay_free(l);
    return err;
}

void rpal__lay_detach(struct lay *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&g_agent.mu);
    for (struct lay **p = &g_agent.list; *p; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            break;
        }
    agent_kick();
    pthread_mutex_unlock(&g_agent.mu);
    lay_free(l); /* closing the lock file drops our record */
}

/* ---- changes ----------------------------------------------------------------- */

static int overlaps(const struct lay_obj *o, uint64_t off, uint64_t len)
{
    return o->off < off + len && off < o->off + o->len;
}

/* 1 if every page of [OFF, OFF+LEN) belongs to an object. */
static int covered(const struct lay_table *t, uint64_t off, uint64_t len)
{
    uint64_t pos = off;
    for (uint32_t i = 0; i < t->nobj && pos < off + len; i++) {
        const struct lay_obj *o = &t->obj[i];
        if (o->off + o->len <= pos)
            continue;
        if (o->off > pos)
            return 0;
        pos = o->off + o->len;
    }
    return pos >= off + len;
}

/* Cut the object that straddles AT in two. */
static int split_at(struct lay_table *t, uint64_t at)
{
    for (uint32_t i = 0; i < t->nobj; i++) {
        struct lay_obj *o = &t->obj[i];
        if (!(o->off < at && at < o->off + o->len))
            continue;
        if (t->nobj == LAY_OBJ_MAX)
            return -ENOSPC;
        memmove(&t->obj[i + 2], &t->obj[i + 1], (t->nobj - i - 1) * sizeof *o);
        uint64_t cut = at - o->off;
        t->obj[i + 1] = *o;
        t->obj[i + 1].off = at;
        t->obj[i + 1].len = o->len - cut;
        if (o->kind == RPAL_OBJ_FILE || o->store == LAY_STORE_SIDE)
            t->obj[i + 1].foff += cut;
        o->len = cut;
        t->nobj++;
        return 0;
    }
    return 0;
}

static int same_object(const struct lay_obj *a, const struct lay_obj *b)
{
    if (a->kind != b->kind || a->prot != b->prot || a->off + a->len != b->off ||
        a->store != b->store)
        return 0;
    if (a->kind == RPAL_OBJ_ANON)
        return a->store == LAY_STORE_REGION || a->foff + a->len == b->foff;
    return a->dev == b->dev && a->ino == b->ino && a->foff + a->len == b->foff &&
           a->maxprot == b->maxprot && !strcmp(a->path, b->path);
}

/* Join neighbours that are one object again (after protect). */
static void merge(struct lay_table *t)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < t->nobj; i++) {
        if (k && same_object(&t->obj[k - 1], &t->obj[i]))
            t->obj[k - 1].len += t->obj[i].len;
        else
            t->obj[k++] = t->obj[i];
    }
    t->nobj = k;
}

/* The path by which later attachers can open FD's file (ST): its name if
 * that name still leads to this very file, else "" (a memfd, a deleted or
 * renamed file: /proc shows "/memfd:x (deleted)", "/x (deleted)" or the
 * old name), or if it is too long. */
static void file_path(int fd, const struct stat *st, char *path, size_t size)
{
    char p[PRIM_FD_PATH];
    ssize_t n = readlink(rpal__prim_fd_path(p, fd), path, size);
    if (n <= 0 || (size_t)n >= size || path[0] != '/')
        n = 0;
    path[n] = 0;
    struct stat now;
    if (n && (stat(path, &now) < 0 || now.st_dev != st->st_dev || now.st_ino != st->st_ino))
        path[0] = 0;
}

/* The object OP maps: anonymous memory from the side store, or a file. */
static int new_object(const struct lay_op *op, struct lay_obj *o)
{
    memset(o, 0, sizeof *o);
    o->off = op->off;
    o->len = op->len;
    o->prot = (uint32_t)op->prot;
    o->kind = RPAL_OBJ_ANON;
    o->src_fd = -1;
    if (op->fd < 0) {
        o->store = LAY_STORE_SIDE;
        o->foff = op->side;
        return 0;
    }
    struct stat st;
    int fl = fcntl(op->fd, F_GETFL);
    if (fstat(op->fd, &st) < 0 || fl < 0)
        return -EBADF;
    if (!S_ISREG(st.st_mode))
        return -ENODEV;
    if ((fl & O_ACCMODE) == O_WRONLY)
        return -EACCES;
    o->kind = RPAL_OBJ_FILE;
    o->maxprot = PROT_READ | PROT_EXEC | ((fl & O_ACCMODE) == O_RDWR ? PROT_WRITE : 0);
    if (o->prot & ~o->maxprot)
        return -EACCES;
    o->dev = (uint64_t)st.st_dev;
    o->ino = (uint64_t)st.st_ino;
    o->foff = op->foff;
    o->src_pid = rpal__prim_getpid();
    o->src_fd = op->fd;
    file_path(op->fd, &st, o->path, sizeof o->path);
    return 0;
}

/* Make T the layout after OP; an error changes nothing that is used. */
static int edit(struct lay_table *t, const struct lay_op *op)
{
    uint64_t off = op->off, len = op->len;
    int err;
    if (op->op == OP_MAP) {
        uint32_t i = 0;
        for (; i < t->nobj && t->obj[i].off < off; i++)
            if (overlaps(&t->obj[i], off, len))
                return -EEXIST;
        if (i < t->nobj && overlaps(&t->obj[i], off, len))
            return -EEXIST;
        if (t->nobj == LAY_OBJ_MAX)
            return -ENOSPC;
        struct lay_obj o;
        if ((err = new_object(op, &o)) < 0)
            return err;
        memmove(&t->obj[i + 1], &t->obj[i], (t->nobj - i) * sizeof o);
        t->obj[i] = o;
        t->nobj++;
        return 0;
    }
    if (!covered(t, off, len))
        return -ENXIO;
    if (op->op == OP_PROTECT)
        for (uint32_t i = 0; i < t->nobj; i++)
            if (overlaps(&t->obj[i], off, len) && t->obj[i].kind == RPAL_OBJ_FILE &&
                ((unsigned)op->prot & ~t->obj[i].maxprot))
                return -EACCES; /* the file was given read-only */
    if ((err = split_at(t, off)) < 0 || (err = split_at(t, off + len)) < 0)
        return err;
    uint32_t k = 0;
    for (uint32_t i = 0; i < t->nobj; i++) {
        struct lay_obj *o = &t->obj[i];
        int in = o->off >= off && o->off + o->len <= off + len;
        if (in && op->op == OP_UNMAP)
            continue;
        if (in)
            o->prot = (uint32_t)op->prot;
        t->obj[k++] = *o;
    }
    t->nobj = k;
    if (op->op == OP_PROTECT)
        merge(t);
    return 0;
}

/* ---- changes: memory given back ---------------------------------------------- */

/* Free the region file's pages at data offsets [OFF, OFF+LEN): a writable
 * duplicate of that part of the view, MADV_REMOVE (which punches the hole
 * in the file), gone again. */
static void punch_region(struct lay *l, uint64_t off, uint64_t len)
{
    /* Where the views are mapped from the descriptor (dup_by_fd), the hole
     * is punched through it: qemu-user answers 0 to MADV_REMOVE without
     * passing it on, so the pages kept their data. */
    if (l->srcfd >= 0 && fallocate(l->srcfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                   (off_t)(l->granule + off), (off_t)len) == 0)
        return;
    void *p = view_dup(l, l->granule + off, len, NULL);
    if (p == MAP_FAILED)
        return;
    if (mprotect(p, len, PROT_READ | PROT_WRITE) == 0)
        madvise(p, len, MADV_REMOVE);
    munmap(p, len);
}

static void punch_side(struct lay *l, uint64_t foff, uint64_t len)
{
    fallocate(l->lkfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)foff, (off_t)len);
}

/* Free the memory of the anonymous objects of OLD in [OFF, OFF+LEN). */
static void punch(struct lay *l, const struct lay_table *old, uint64_t off, uint64_t len)
{
    for (uint32_t i = 0; i < old->nobj; i++) {
        const struct lay_obj *o = &old->obj[i];
        uint64_t lo = o->off > off ? o->off : off;
        uint64_t hi = o->off + o->len < off + len ? o->off + o->len : off + len;
        if (o->kind != RPAL_OBJ_ANON || lo >= hi)
            continue;
        if (o->store == LAY_STORE_SIDE)
            punch_side(l, o->foff + (lo - o->off), hi - lo);
        else
            punch_region(l, lo, hi - lo);
    }
}

struct extent {
    uint64_t off, len;
};

static int extent_cmp(const void *a, const void *b)
{
    const struct extent *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Free every page of the region file's data and of the side store that
 * no object of T uses: what a changer killed before it freed an unmapped
 * object's memory left, and what detached sharers wrote into memory that
 * was no object's any more (they have all gone when this runs). */
static void sweep(struct lay *l, const struct lay_table *t)
{
    struct extent e[LAY_OBJ_MAX];
    unsigned n = 0;
    uint64_t pos = 0;
    for (uint32_t i = 0; i < t->nobj; i++) { /* in offset order */
        const struct lay_obj *o = &t->obj[i];
        if (o->kind != RPAL_OBJ_ANON)
            continue;
        if (o->store == LAY_STORE_SIDE) {
            e[n].off = o->foff;
            e[n++].len = o->len;
            continue;
        }
        if (o->off > pos)
            punch_region(l, pos, o->off - pos);
        pos = o->off + o->len;
    }
    if (pos < l->size)
        punch_region(l, pos, l->size - pos);
    struct stat st;
    if (fstat(l->lkfd, &st) < 0)
        return;
    qsort(e, n, sizeof e[0], extent_cmp);
    pos = SIDE_BASE;
    for (unsigned i = 0; i < n; i++) {
        if (e[i].off > pos)
            punch_side(l, pos, e[i].off - pos);
        if (e[i].off + e[i].len > pos)
            pos = e[i].off + e[i].len;
    }
    if ((uint64_t)st.st_size > pos)
        punch_side(l, pos, (uint64_t)st.st_size - pos);
}

/* ---- changes: the sharers ------------------------------------------------- */

/* A sharer's record: its pid, the generation it is at, failed. */
struct rec {
    pid_t pid;
    uint32_t gen;
    int failed;
};

struct recs {
    struct rec *v;
    size_t n, cap;
};

/* Add the record whose lock starts at OFF (at least LK_REC_BASE). */
static int recs_add(struct recs *p, uint64_t off)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        struct rec *v = realloc(p->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        p->v = v;
        p->cap = cap;
    }
    off -= LK_REC_BASE;
    p->v[p->n].pid = (pid_t)((off & (LK_GEN_SPAN - 1)) >> 2);
    p->v[p->n].gen = (uint32_t)(off >> LK_GEN_SHIFT) & GEN_MASK;
    p->v[p->n++].failed = (off & 3) == 1;
    return 0;
}

static int rec_cmp(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;
    return x->pid != y->pid ? (x->pid < y->pid ? -1 : 1) : x->gen < y->gen ? -1 : x->gen > y->gen;
}

/* Every record on the lock file FD in [OFF, OFF+LEN) (LEN 0: to the end)
 * but ours (our own description's locks never conflict with its queries),
 * as many as there are: found by splitting the range around each lock
 * F_OFD_GETLK reports, two system calls a record. */
static int scan_recs(int fd, uint64_t off, uint64_t len, struct recs *out)
{
    struct extent *stack = NULL;
    size_t sp = 0, cap = 0;
    int err = 0;
    struct extent r = {off, len};
    for (;;) {
        uint64_t s, len;
        int found = rpal__prim_ofd_test(fd, r.off, r.len, &s, &len);
        if (found < 0) {
            err = found;
            break;
        }
        if (found) {
            uint64_t hi = r.len ? r.off + r.len : UINT64_MAX;
            uint64_t e = len == 0 || s + len > hi || s + len < s ? hi : s + len;
            if (s < r.off)
                s = r.off;
            if ((err = recs_add(out, s)) < 0)
                break;
            if (sp + 2 > cap) {
                size_t c = cap ? 2 * cap : 64;
                struct extent *v = realloc(stack, c * sizeof *v);
                if (!v) {
                    err = -ENOMEM;
                    break;
                }
                stack = v;
                cap = c;
            }
            if (r.off < s)
                stack[sp++] = (struct extent){r.off, s - r.off};
            if (e < hi)
                stack[sp++] = (struct extent){e, r.len ? hi - e : 0};
        }
        if (!sp)
            break;
        r = stack[--sp];
    }
    free(stack);
    return err;
}

/* Every sharer's record in [OFF, OFF+LEN) (LEN 0: to the end), sorted by
 * pid. One sharer shows twice while it moves its record: only the newer is
 * kept. */
static int find_recs(const struct lay *l, uint64_t off, uint64_t len, struct recs *out)
{
    out->n = 0;
    int err = scan_recs(l->lkfd, off, len, out);
    if (err < 0)
        return err;
    if (out->n)
        qsort(out->v, out->n, sizeof *out->v, rec_cmp);
    size_t k = 0;
    for (size_t i = 0; i < out->n; i++) {
        if (k && out->v[k - 1].pid == out->v[i].pid) {
            if (((out->v[i].gen - out->v[k - 1].gen) & GEN_MASK) < GEN_MASK / 2)
                out->v[k - 1] = out->v[i];
            continue;
        }
        if (out->v[i].pid != l->pid)
            out->v[k++] = out->v[i];
    }
    out->n = k;
    return 0;
}

/* PID's record at generation GEN: 0 none, 1 there, 2 there with the
 * failed bit, or a negative errno. */
static int rec_state(int fd, pid_t pid, uint32_t gen)
{
    uint64_t s;
    int r = rpal__prim_ofd_test(fd, rec_off(pid, gen, 0), 2, &s, NULL);
    if (r <= 0)
        return r;
    return s == rec_off(pid, gen, 1) ? 2 : 1;
}

/* Drop the detached entries of processes that let go: their record is gone
 * from where it stayed while they were stuck (a new process with the same
 * pid registers at a later generation). */
static int det_prune(struct lay_ctl *c, int fd)
{
    uint32_t k = 0, n = c->ndet < LAY_DET_MAX ? c->ndet : LAY_DET_MAX;
    for (uint32_t i = 0; i < n; i++) {
        pid_t pid = c->det[i].pid;
        if (pid <= 0 || (uint64_t)pid >= LK_PID_LIMIT)
            continue;
        int st = rec_state(fd, pid, c->det[i].recgen);
        if (st < 0)
            return st;
        if (st > 0)
            c->det[k++] = c->det[i];
    }
    c->ndet = k;
    return 0;
}

static int det_listed(const struct lay_ctl *c, const struct rec *r)
{
    for (uint32_t i = 0; i < c->ndet && i < LAY_DET_MAX; i++)
        if (c->det[i].pid == r->pid && c->det[i].recgen == r->gen)
            return 1;
    return 0;
}

static void det_add(struct lay_ctl *c, const struct rec *r, uint32_t gen)
{
    uint32_t i = c->ndet < LAY_DET_MAX ? c->ndet : LAY_DET_MAX;
    if (i == LAY_DET_MAX) { /* full of stuck processes: forget the oldest */
        memmove(&c->det[0], &c->det[1], (LAY_DET_MAX - 1) * sizeof c->det[0]);
        i--;
    }
    c->det[i].pid = r->pid;
    c->det[i].gen = gen;
    c->det[i].recgen = r->gen;
    c->det[i].pad = 0;
    c->ndet = i + 1;
}

/* ---- changes: the header ------------------------------------------------------ */

/* Write LEN bytes at OFF of the writable header mapping RW (see
 * hdr_read): whole, or -EIO if the file was cut. */
static int hdr_write(uint8_t *rw, const void *p, size_t len, uint64_t off)
{
    /* Whatever was written before (the new table) is visible before this:
     * pairs with the fence in ctl_read. */
    rpal_fence_seq_cst();
    return rpal__prim_mem_write(rw + off, p, len) == 0 ? 0 : -EIO;
}

/* What changers write of the control page (under the change lock), from
 * our copy C: who holds the turnstile to the end. The turnstile's words
 * are the kernel's. */
static int ctl_tail_write(uint8_t *rw, const struct lay_ctl *c)
{
    const size_t at = offsetof(struct lay_ctl, own_pid);
    return hdr_write(rw, (const uint8_t *)c + at, sizeof *c - at, LAY_CTL_OFF + at);
}

#define CTL_FIELD(f) (LAY_CTL_OFF + offsetof(struct lay_ctl, f))
#define CTL_HEAD     offsetof(struct lay_ctl, ndet) /* magic to own_start */

/* ---- changes: the change lock ------------------------------------------------
 * Changers queue on a PI futex in the control page (the turnstile), then
 * take the write lock on byte 0 of the lock file. The kernel serves the
 * turnstile's waiters in the order they came and hands it over directly,
 * also when its holder dies with waiters queued; byte 0 is what keeps
 * changers apart (and out of the way of attaches and forks, which read-lock
 * it), so a turnstile in disorder can cost fairness, never exclusion. The
 * word holds its owner's thread id: one whose owner died with nobody
 * queued stays "owned" by a dead thread (the next locker gets -ESRCH), or by
 * whatever thread later gets that id; such a word is abandoned for the next
 * of LAY_TURNS words (turn_rotate). */

static __thread int t_in_change; /* this thread holds a turnstile */

static _Atomic uint32_t *turn_word(uint8_t *rw, uint32_t i)
{
    return (_Atomic uint32_t *)(void *)(rw + CTL_FIELD(turn) + (i % LAY_TURNS) * 4);
}

/* The word W of the turnstile is owned by a thread the control page names,
 * of a process that is gone. */
static int turn_stale(const struct lay_ctl *h, uint32_t w)
{
    uint32_t tid = w & FUTEX_TID_MASK;
    return tid && (uint32_t)h->own_tid == tid && !rpal__prim_proc_alive(h->own_pid, h->own_start);
}

/* Move to the next turnstile word, zeroed first, if word I is still the
 * current one. Under the change lock: one move per broken word. Waiters
 * still queued on word I get it when its owner is gone, see that it is not
 * the current word any more, and come over. */
static int turn_rotate(struct lay *l, uint8_t *rw, uint32_t i, uint64_t deadline)
{
    int err = rpal__prim_ofd_lock(l->lkfd, F_WRLCK, LK_CHANGE, 1, ns_left(deadline, 0));
    if (err < 0)
        return err == -EAGAIN ? -ETIMEDOUT : err;
    struct lay_ctl h;
    err = hdr_read(0, rw, &h, CTL_HEAD, LAY_CTL_OFF);
    if (err == 0 && h.turn_cur % LAY_TURNS == i) {
        /* No owner, and the next change looks for sharers the dead one may
         * have left behind (see find_sharers). */
        uint32_t j = (i + 1) % LAY_TURNS, own[3] = {0, 0, 1};
        if ((err = hdr_write(rw, own, 4, CTL_FIELD(turn) + 4 * j)) == 0 &&
            (err = hdr_write(rw, own, sizeof own, CTL_FIELD(own_pid))) == 0)
            err = hdr_write(rw, &j, 4, CTL_FIELD(turn_cur));
    }
    rpal__prim_ofd_lock(l->lkfd, F_UNLCK, LK_CHANGE, 1, 0);
    return err;
}

/* After waiting in vain on word I until DEADLINE: if its owner is gone, or
 * never said who it is (it died or stopped right after taking it), let the
 * next changers use a fresh word. */
static void turn_timed_out(struct lay *l, uint8_t *rw, uint32_t i)
{
    struct lay_ctl h;
    if (hdr_read(0, rw, &h, CTL_HEAD, LAY_CTL_OFF) < 0 || h.turn_cur % LAY_TURNS != i)
        return;
    uint32_t w = rpal_load_relaxed(&h.turn[i]) & FUTEX_TID_MASK; /* our copy */
    if (w && ((uint32_t)h.own_tid != w || turn_stale(&h, w)))
        turn_rotate(l, rw, i, 0);
}

/* Queue for the turnstile until DEADLINE: the index of the word we hold,
 * -ENOSYS if there are no PI futexes here (then byte 0 alone serialises
 * changers, polled, in no particular order), or a negative errno. */
static int turn_lock(struct lay *l, uint8_t *rw, uint64_t deadline)
{
    if (t_in_change)
        return -EDEADLK; /* a change from inside a change (a signal handler) */
    for (unsigned moves = 0; moves <= 2 * LAY_TURNS; moves++) {
        struct lay_ctl h;
        if (hdr_read(0, rw, &h, CTL_HEAD, LAY_CTL_OFF) < 0)
            return -EIO;
        uint32_t i = h.turn_cur % LAY_TURNS;
        int err = turn_stale(&h, rpal_load_relaxed(&h.turn[i])) ? -ESRCH
                  : rpal__prim_futex_lock_pi(turn_word(rw, i), deadline);
        if (err == 0) { /* change_begin checks that it is still the current word */
            t_in_change = 1;
            return (int)i;
        }
        /* Owner gone (or, -EDEADLK, a dead thread's id that is now ours),
         * or a word the kernel cannot follow: move on. */
        if (err == -ESRCH || err == -EDEADLK || err == -EINVAL || err == -EPERM) {
            if ((err = turn_rotate(l, rw, i, deadline)) < 0)
                return err;
            continue;
        }
        if (err == -ETIMEDOUT)
            turn_timed_out(l, rw, i);
        return err == -EFAULT ? -EIO : err;
    }
    return -EBADMSG; /* somebody keeps writing the words */
}

static void turn_unlock(uint8_t *rw, int i)
{
    if (i >= 0)
        rpal__prim_futex_unlock_pi(turn_word(rw, (uint32_t)i));
    t_in_change = 0;
}

/* ---- changes ----------------------------------------------------------------- */

struct change {
    struct lay *l;
    struct lay_op op;
    int64_t timeout_ms;
    uint8_t *rw;                /* writable duplicate of the header area */
    int turn;                   /* turnstile word held, or -1 */
    int mu, locked;             /* l->chg_mu, byte 0 of the lock file held */
    struct lay_ctl c;           /* the control page, our copy */
    uint32_t dirty0;            /* c.dirty when we came */
    uint32_t g, g1;
    struct lay_table *old, *t;
    int want;                   /* the caller wants the counts */
    int full;                   /* every sharer found (find_sharers) */
    int waiting;                /* somebody to wait for */
    size_t behind;              /* sharers found at an older generation */
    struct recs sharers;        /* with full: the sharers to wait for */
    struct rpal_region_change res;
};

/* Fresh side-store memory for the new anonymous object of X->op, past any
 * ever handed out: the file grown to cover it, and any page in it freed (a
 * changer that died before publishing may have taken it and touched it). */
static int side_take(struct change *x)
{
    struct lay *l = x->l;
    uint64_t next = x->c.side_next, len = x->op.len;
    if (next < SIDE_BASE || next > SIDE_END || next % RPAL_PAGE)
        return -EBADMSG;
    for (uint32_t i = 0; i < x->old->nobj; i++) {
        const struct lay_obj *o = &x->old->obj[i];
        if (o->kind == RPAL_OBJ_ANON && o->store == LAY_STORE_SIDE && o->foff + o->len > next)
            next = o->foff + o->len;
    }
    /* Large objects at the same place within a 2 MiB page as their address,
     * so that tmpfs can give them huge pages. */
    if (len >= RPAL_HUGE_PAGE) {
        uint64_t at = next - next % RPAL_HUGE_PAGE + x->op.off % RPAL_HUGE_PAGE;
        next = at < next ? at + RPAL_HUGE_PAGE : at;
    }
    if (next > SIDE_END - len)
        return -ENOSPC;
    struct rlimit rl; /* growing past it would raise SIGXFSZ */
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        next + len > rl.rlim_cur)
        return -EFBIG;
    struct stat st;
    if (fstat(l->lkfd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size < next + len && ftruncate(l->lkfd, (off_t)(next + len)) < 0)
        return -errno;
    punch_side(l, next, len);
    x->op.side = next;
    x->c.side_next = next + len;
    return 0;
}

static int change_check(const struct lay *l, const struct lay_op *op)
{
    if (!l || (op->prot & ~PROT_ALL) || !op->len || op->off % RPAL_PAGE ||
        op->len % RPAL_PAGE || op->foff % RPAL_PAGE || op->foff > (uint64_t)INT64_MAX)
        return -EINVAL;
    if (op->len > l->size || op->off > l->size - op->len)
        return -ERANGE;
    if (l->rdonly)
        return -EBADF;
    if (l->detached)
        return -ESTALE;
    return 0;
}

static void change_release(struct change *x);

/* The writable duplicate of the header area: made once, PROT_NONE between
 * changes (so that the header is writable only while this process changes
 * it), read-write while any thread of the process is in a change (the
 * turnstile word must stay writable while the kernel may hand it to a
 * waiting thread). Like the read-only mapping it is accessed only through
 * hdr_read/hdr_write, and by the kernel (the turnstile). A new mapping and
 * munmap per change cost far more: unmapping a shared file mapping takes
 * the file's mapping lock, which every sharer's mprotect takes too. */
static int rw_open(struct lay *l, uint8_t **rw)
{
    int err = 0;
    lay_lock(l);
    if (!l->rw) {
        void *p = view_dup(l, 0, REGION_HDR_MAP, NULL);
        if (p == MAP_FAILED)
            err = -errno;
        else
            l->rw = p;
    }
    if (err == 0 && !l->rw_users && mprotect(l->rw, REGION_HDR_MAP, PROT_READ | PROT_WRITE) < 0)
        err = -errno;
    if (err == 0) {
        l->rw_users++;
        *rw = l->rw;
    }
    lay_unlock(l);
    return err;
}

static void rw_close(struct lay *l)
{
    lay_lock(l);
    if (--l->rw_users == 0)
        mprotect(l->rw, REGION_HDR_MAP, PROT_NONE);
    lay_unlock(l);
}

/* Test hook: called with the change lock held, so that a test can see in
 * which order changers got it. Not exported. */
RPAL_HIDDEN void (*rpal__hook_change_locked)(void);

/* 1. The turnstile, this process's mutex, the change lock; then the
 * control page and the current table. */
static int change_begin(struct change *x)
{
    struct lay *l = x->l;
    if (!l->lk_rw)
        return -EACCES; /* the lock file may not be written: no changes */
    int err = rw_open(l, &x->rw);
    if (err < 0)
        return err;
    uint64_t deadline = deadline_in(LK_ATTACH_NS + (uint64_t)x->timeout_ms * 1000000);
    for (;;) {
        int t = turn_lock(l, x->rw, deadline);
        if (t < 0 && t != -ENOSYS)
            return t;
        x->turn = t;
        pthread_mutex_lock(&l->chg_mu);
        x->mu = 1;
        err = rpal__prim_ofd_lock(l->lkfd, F_WRLCK, LK_CHANGE, 1, ns_left(deadline, 1));
        if (err < 0)
            return err;
        x->locked = 1;
        if ((err = ctl_read(0, x->rw, &x->c)) < 0)
            return err;
        /* The word we got was abandoned while we waited for it (see
         * turn_rotate): queue on the current one. */
        if (t < 0 || x->c.turn_cur % LAY_TURNS == (uint32_t)t)
            break;
        change_release(x);
    }
    /* The kernel handed us the turnstile from a holder that died: say so
     * for good, in case we fail before we have looked for what it left. */
    if (x->turn >= 0 && (rpal_load_relaxed(&x->c.turn[x->turn]) & FUTEX_OWNER_DIED) && !x->c.heir) {
        uint32_t one = 1;
        if ((err = hdr_write(x->rw, &one, sizeof one, CTL_FIELD(heir))) < 0)
            return err;
        x->c.heir = 1;
    }
    if (rpal__hook_change_locked)
        rpal__hook_change_locked();
    /* Who holds the turnstile, for turn_stale: published with the change. */
    x->c.own_pid = rpal__prim_getpid();
    x->c.own_tid = (int32_t)syscall(SYS_gettid);
    x->c.own_start = rpal__prim_self_start();
    x->dirty0 = x->c.dirty;
    x->g = rpal_load_relaxed(&x->c.gen);
    x->g1 = (x->g + 1) & GEN_MASK;
    return table_read(0, x->rw, x->g, l->size, x->old);
}

/* 2. The new table, into the spare copy, which no agent reads until the
 * generation names it. Nothing is published yet. */
static int change_plan(struct change *x)
{
    struct lay *l = x->l;
    if (listed_detached(l, &x->c)) { /* an earlier change gave up on us */
        lay_lock(l);
        if (!l->detached)
            self_detach(l);
        lay_unlock(l);
        return -ESTALE;
    }
    int err = det_prune(&x->c, l->lkfd);
    if (err == 0 && x->op.op == OP_MAP && x->op.fd < 0)
        err = side_take(x);
    if (err < 0)
        return err;
    memcpy(x->t, x->old, table_bytes(x->old));
    if ((err = edit(x->t, &x->op)) < 0)
        return err;
    x->t->gen = x->g1;
    x->t->op = (uint32_t)x->op.op;
    x->t->op_off = x->op.off;
    x->t->op_len = x->op.len;
    x->t->op_prot = (uint32_t)x->op.prot;
    x->t->check = table_check(x->t);
    return hdr_write(x->rw, x->t, table_bytes(x->t), copy_off(x->g1));
}

/* Who is to apply the change. Normally one query says whether anybody is
 * at generation g at all (attaches and forks register under byte 0, which
 * we hold: nobody comes while we change), and the wait is for that range to
 * empty. When the caller wants counts, or a changer died holding the
 * turnstile (it may have left sharers behind, unlisted: they are at an
 * older generation), or there is no turnstile to tell, every record is
 * found (two system calls each) but those of the detached listed, who are
 * not waited for again. */
static int find_sharers(struct change *x)
{
    x->full = x->want || x->turn < 0 || x->c.heir;
    if (!x->full) {
        int busy = gen_busy(x->l->lkfd, x->g);
        x->waiting = busy > 0;
        return busy < 0 ? busy : 0;
    }
    int err = find_recs(x->l, LK_REC_BASE, 0, &x->sharers);
    if (err < 0)
        return err;
    size_t k = 0;
    x->behind = 0;
    for (size_t i = 0; i < x->sharers.n; i++) {
        const struct rec *r = &x->sharers.v[i];
        if (det_listed(&x->c, r))
            continue;
        x->behind += r->gen != x->g;
        x->sharers.v[k++] = *r;
    }
    x->sharers.n = k;
    x->waiting = k > 0;
    x->c.heir = 0; /* published with the change: we wait for them */
    return 0;
}

/* 1 while a sharer has not moved on from where it was (an error counts as
 * 1: we wait on, and it will be detached). */
static int sharers_busy(struct change *x)
{
    int fd = x->l->lkfd;
    if (gen_busy(fd, x->g) != 0)
        return 1;
    for (size_t i = 0; x->behind && i < x->sharers.n; i++) {
        const struct rec *r = &x->sharers.v[i];
        if (r->gen != x->g && rec_state(fd, r->pid, r->gen) != 0)
            return 1;
    }
    return 0;
}

/* 3. Here first (if it cannot be done in the changer, it is not done),
 * then who shares the region, then the new generation for all of them at
 * once. */
static int change_publish(struct change *x)
{
    struct lay *l = x->l;
    lay_lock(l);
    int err = -ESTALE;
    if (l->detached)
        goto out;
    if (l->applied != x->g) /* our agent has not caught up: no diff to apply */
        err = apply_all(l, x->t) ? -EIO : 0;
    else
        err = apply_op(l, x->t);
    /* Attaches and forks register under byte 0, which we hold: the
     * sharers found now are all there will be until we are done. */
    if (err == 0)
        err = find_sharers(x);
    if (err == 0) {
        if (x->op.op == OP_UNMAP)
            x->c.dirty = 1; /* until its memory is given back */
        err = ctl_tail_write(x->rw, &x->c);
    }
    if (err == 0)
        err = hdr_write(x->rw, &x->g1, sizeof x->g1, CTL_FIELD(gen));
    if (err < 0) {
        if (apply_all(l, l->cur) < 0) /* not published: the old layout back */
            self_detach(l);
        goto out;
    }
    memcpy(l->cur, x->t, table_bytes(x->t));
    l->applied = x->g1;
    rec_set(l, x->g1, 0);
out:
    lay_unlock(l);
    /* After l->mu: our own agent, woken too, finds the change applied
     * instead of waiting for the mutex. */
    if (err == 0)
        rpal__prim_futex_wake(&l->ctl->gen, INT_MAX, 1);
    return err;
}

/* 4. Until nobody holds a record of the old generation any more, or the
 * deadline (then 1: somebody is behind). Agents move their records and the last to leave wakes us; a
 * wake-up that comes between our look and our sleep is missed (the word
 * never changes: read-only attachers cannot write it), and one that dies
 * last wakes nobody, so the sleep is bounded: 100 us, doubling to 2 ms. */
static int change_wait(struct change *x)
{
    if (!x->waiting)
        return 0;
    uint64_t deadline = deadline_in((uint64_t)x->timeout_ms * 1000000);
    int64_t nap = 100000;
    for (;;) {
        if (!sharers_busy(x))
            return 0;
        int64_t left = ns_left(deadline, 0);
        if (left == 0)
            return 1;
        if (nap > left)
            nap = left;
        if (rpal__prim_futex_wait(&x->l->ctl->ack, 0, 1, nap) == -EFAULT) /* file cut */
            nanosleep(&(struct timespec){0, (long)nap}, NULL);
        if (nap < 2000000)
            nap *= 2;
    }
}

/* Where R's sharer is now: at generation G1 (1, or 2 if failed), gone
 * (0), or still behind (3; also one we cannot tell about). */
static int rec_now(struct change *x, const struct rec *r)
{
    int st = rec_state(x->l->lkfd, r->pid, x->g1);
    if (st != 0)
        return st < 0 ? 3 : st;
    st = rec_state(x->l->lkfd, r->pid, r->gen);
    return st == 0 ? 0 : 3;
}

/* 5. What became of each sharer: it applied the change (or failed to),
 * died, or is still behind: then it is detached, and listed (with where
 * its record stays) so that its agent drops the region as soon as it
 * runs. The detached listed before (still stuck) count too. Without a full
 * list, only those still behind are looked for; one we cannot find counts
 * as detached all the same: the call must not claim it has the change. */
static void change_count(struct change *x, int busy)
{
    struct lay *l = x->l;
    struct rpal_region_change *res = &x->res;
    uint32_t listed = x->c.ndet, added = 0;
    res->detached = listed < LAY_DET_MAX ? listed : LAY_DET_MAX;
    if (x->full && (x->want || busy)) {
        for (size_t i = 0; i < x->sharers.n; i++) {
            const struct rec *r = &x->sharers.v[i];
            int st = rec_now(x, r);
            if (st == 1 || st == 2) {
                *(st == 2 ? &res->failed : &res->applied) += 1;
            } else if (st == 0) {
                res->dead++;
            } else {
                res->detached++;
                det_add(&x->c, r, x->g1);
                added++;
            }
        }
    } else if (busy) {
        struct recs stuck = {0};
        if (find_recs(l, rec_gen(x->g), LK_GEN_SPAN, &stuck) < 0)
            res->detached++;
        for (size_t i = 0; i < stuck.n; i++) {
            res->detached++;
            det_add(&x->c, &stuck.v[i], x->g1);
            added++;
        }
        free(stuck.v);
    }
    if (added) {
        ctl_tail_write(x->rw, &x->c); /* failing, they are waited for again */
        rpal__prim_futex_wake(&l->ctl->gen, INT_MAX, 1);
    }
}

/* 6. Memory no object uses any more, given back: an unmapped object's, at
 * once; when a changer was killed before doing so, or detached sharers may
 * have written into memory that was no object's, everything unused, once
 * no detached sharer is left that could write more. */
static void change_reclaim(struct change *x)
{
    int linger = x->c.ndet > 0, unmap = x->op.op == OP_UNMAP;
    if (x->dirty0 && !linger)
        sweep(x->l, x->t);
    else if (unmap)
        punch(x->l, x->old, x->op.off, x->op.len);
    uint32_t dirty = linger && (x->dirty0 || unmap);
    if (dirty != x->c.dirty) {
        x->c.dirty = dirty;
        hdr_write(x->rw, &dirty, sizeof dirty, CTL_FIELD(dirty));
    }
}

/* Byte 0, this process's mutex and the turnstile let go, in that order. */
static void change_release(struct change *x)
{
    if (x->locked)
        rpal__prim_ofd_lock(x->l->lkfd, F_UNLCK, LK_CHANGE, 1, 0);
    if (x->mu)
        pthread_mutex_unlock(&x->l->chg_mu);
    if (x->rw != MAP_FAILED)
        turn_unlock(x->rw, x->turn);
    x->locked = x->mu = 0;
    x->turn = -1;
}

static void change_end(struct change *x)
{
    change_release(x);
    if (x->rw != MAP_FAILED)
        rw_close(x->l);
    free(x->old);
    free(x->t);
    free(x->sharers.v);
}

/* A layout change (see internal.h): the steps above, in order. */
int rpal__lay_change(struct lay *l, const struct lay_op *op, struct rpal_region_change *chg)
{
    int err = change_check(l, op);
    if (err < 0)
        return err;
    struct change x = {.l = l, .op = *op, .turn = -1, .rw = MAP_FAILED};
    x.timeout_ms = chg && chg->timeout_ms > 0 ? chg->timeout_ms : 1000;
    x.want = chg != NULL;
    x.old = malloc(sizeof *x.old);
    x.t = malloc(sizeof *x.t);
    err = x.old && x.t ? change_begin(&x) : -ENOMEM;
    if (err == 0)
        err = change_plan(&x);
    if (err == 0)
        err = change_publish(&x);
    if (err == 0) {
        int busy = change_wait(&x);
        change_count(&x, busy);
        change_reclaim(&x);
    }
    change_end(&x);
    if (err < 0)
        return err;
    x.res.timeout_ms = (int)x.timeout_ms;
    if (chg)
        *chg = x.res;
    return x.res.detached > INT_MAX ? INT_MAX : (int)x.res.detached;
}
