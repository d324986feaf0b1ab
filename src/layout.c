/* layout: what is mapped inside a region, the same for every sharer (the
 * mshare model: "modifications to the shared region affect all processes
 * sharing that region, just as changes by one thread affect all threads").
 *
 * The layout table lives in the region's header granule, mapped read-only
 * by every attacher. A changer (a read-write attacher) serialises on an OFD
 * write lock, writes the new table into the spare of two copies, bumps the
 * generation word and futex-wakes it. Every process runs one agent thread
 * (signals blocked) that waits on the generation words of all its regions,
 * applies the change with mprotect/mmap/mremap (threads share the mm, so a
 * main thread busy computing is covered) and acknowledges with an OFD read
 * lock whose offset encodes its pid and the generation: read locks need only
 * read access, so read-only attachers acknowledge too, and a dead process's
 * locks vanish with it. See docs/regions.md, "Layout".
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
#include <sys/stat.h>
#include <unistd.h>

/* ---- the shared format ---------------------------------------------------- */

#define LAY_DET_MAX  64u
#define GEN_MASK     0x7fffffffu /* generations count modulo 2^31 */
#define LAY_COPY_OFF (2 * RPAL_PAGE)
#define PROT_ALL (PROT_READ | PROT_WRITE | PROT_EXEC)

/* struct lay_obj and struct lay_table are in src/internal.h (the fuzz
 * targets build them). */

struct lay_ctl {
    uint64_t magic;
    _Atomic uint32_t gen;       /* futex word: the table is copy gen & 1 */
    _Atomic uint32_t ack;       /* futex word, always 0: agents wake it */
    uint32_t ndet, pad;
    struct {
        int32_t pid;
        uint32_t gen;           /* the change that gave up on it */
    } det[LAY_DET_MAX];
};

#define LAY_COPY_SIZE ((sizeof(struct lay_table) + RPAL_PAGE - 1) / RPAL_PAGE * RPAL_PAGE)
_Static_assert(LAY_COPY_OFF + 2 * LAY_COPY_SIZE <= REGION_HDR_MAP,
               "the layout tables fit the mapped header area");
_Static_assert(sizeof(struct lay_ctl) <= RPAL_PAGE, "one control page");

static uint64_t copy_off(uint32_t gen)
{
    return LAY_COPY_OFF + (gen & 1) * LAY_COPY_SIZE;
}

static uint64_t table_check(const struct lay_table *t)
{
    uint64_t a = prim_fnv1a(t, offsetof(struct lay_table, check));
    uint32_t n = t->nobj < LAY_OBJ_MAX ? t->nobj : LAY_OBJ_MAX;
    return a * 31 + prim_fnv1a(t->obj, n * sizeof t->obj[0]);
}

/* Every field of a table read from the shared file is checked before use
 * (principle 3): a corrupt layout is an error, never a crash. */
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
            (o->foff % RPAL_PAGE || o->foff > (uint64_t)INT64_MAX - o->len ||
             (o->maxprot & ~PROT_ALL) || (o->prot & ~o->maxprot) ||
             !memchr(o->path, 0, sizeof o->path)))
            return -EBADMSG;
    }
    return 0;
}

/* The header area is never touched directly: anyone who may write the
 * region may truncate its file, and touching a mapping past the end of its
 * file raises SIGBUS. It is read from the header mapping HDR through the
 * kernel (prim_mem_read), where a cut page is an error, -EIO
 * (prim_mem_read costs about six times a pread, but needs no descriptor of
 * the region kept open), or, with PRIV, from a private copy of the header
 * (lay_parse), which cannot vanish. Directly, the mapping serves only as
 * the futex words' address. */
static int hdr_read(int priv, const uint8_t *hdr, void *dst, size_t len, uint64_t off)
{
    if (priv) {
        memcpy(dst, hdr + off, len);
        return 0;
    }
    return prim_mem_read(dst, hdr + off, len) == 0 ? 0 : -EIO;
}

/* Copy the control page out of the header. */
static int ctl_read(int priv, const uint8_t *hdr, struct lay_ctl *c)
{
    if (hdr_read(priv, hdr, c, sizeof *c, LAY_CTL_OFF) < 0)
        return -EIO;
    /* The tables are read after the generation that names them: pairs with
     * the fence between a changer's table and generation writes. */
    rpal_fence_seq_cst();
    return c->magic == LAY_MAGIC ? 0 : -EBADMSG;
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
        *gen = c.gen;
        err = table_read(0, hdr, c.gen, size, t);
    }
    return err;
}

static size_t table_bytes(const struct lay_table *t)
{
    return offsetof(struct lay_table, obj) + t->nobj * sizeof t->obj[0];
}

int lay_init(int fd, uint64_t size, int empty)
{
    struct lay_ctl c = {.magic = LAY_MAGIC};
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

uint64_t lay_table_off(uint32_t gen)
{
    return copy_off(gen);
}

void lay_table_seal(uint8_t *hdr, uint32_t gen)
{
    struct lay_table *t = (struct lay_table *)(hdr + copy_off(gen));
    t->check = table_check(t);
}

int lay_read(int fd, uint64_t size, uint32_t *gen, struct rpal_region_object *objs,
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
        err = lay_parse(hdr, size, gen, objs, max);
    }
    free(hdr);
    return err;
}

int lay_parse(const uint8_t *hdr, uint64_t size, uint32_t *gen,
              struct rpal_region_object *objs, unsigned max)
{
    const struct lay_ctl *c = (const struct lay_ctl *)(hdr + LAY_CTL_OFF);
    if (c->magic != LAY_MAGIC)
        return -EBADMSG;
    uint32_t g = c->gen;
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
 * Byte 0: a changer holds it write-locked; an attach or a fork registering
 * holds it read-locked. From 2^32: one read lock per sharer at
 * 2^32 + pid * 2^34 + gen * 4 + failed, moved as it applies generations. */

#define LK_CHANGE   0ull
#define LK_REC_BASE (1ull << 32)
#define LK_PID_LIMIT (1ull << 22) /* pid_max can be at most 2^22 */
#define LK_ATTACH_NS (5ll * 1000000000) /* waiting for a change to finish */

#define LK_REC_SHIFT 34 /* each pid's records: 2^34 bytes, 4 per generation */

static uint64_t rec_base(pid_t pid)
{
    return LK_REC_BASE + ((uint64_t)(uint32_t)pid << LK_REC_SHIFT);
}

/* Generations 4 bytes apart, so that the old and the new record of one
 * sharer are never adjacent (the kernel would merge them into one lock). */
static uint64_t rec_off(pid_t pid, uint32_t gen, int failed)
{
    return rec_base(pid) + ((uint64_t)(gen & GEN_MASK) << 2) + (failed ? 1 : 0);
}

static int lock_name(const char *name, uint64_t ino, char *buf, size_t n)
{
    const char *s = strrchr(name, '/');
    int l = s ? snprintf(buf, n, "%.*s/.%s.%llu.lock", (int)(s - name), name, s + 1,
                         (unsigned long long)ino)
              : snprintf(buf, n, ".%s.%llu.lock", name, (unsigned long long)ino);
    return l < 0 || (size_t)l >= n ? -ENAMETOOLONG : 0;
}

int lay_lock_open(int nsfd, const char *name, uint64_t ino, unsigned create_mode)
{
    char lk[RPAL_NAME_MAX + 48];
    int err = lock_name(name, ino, lk, sizeof lk);
    if (err < 0)
        return err;
    /* Read access is all a sharer needs (read locks); a changer reopens it
     * read-write, which the file's mode (the region's) decides. */
    int fd = prim_open_beneath(nsfd, lk, O_RDONLY | O_NONBLOCK, 0);
    if (fd == -ENOENT && create_mode) {
        fd = prim_open_beneath(nsfd, lk, O_RDONLY | O_CREAT | O_EXCL, create_mode);
        if (fd >= 0)
            fchmod(fd, create_mode); /* the umask applied */
        else if (fd == -EEXIST)
            fd = prim_open_beneath(nsfd, lk, O_RDONLY | O_NONBLOCK, 0);
    }
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return -EBADMSG;
        }
    }
    return fd;
}

void lay_lock_unlink(int dirfd, const char *leaf, uint64_t ino)
{
    char lk[RPAL_NAME_MAX + 48];
    if (lock_name(leaf, ino, lk, sizeof lk) == 0)
        unlinkat(dirfd, lk, 0);
}

/* ---- the process side -------------------------------------------------------- */

struct lay {
    pthread_mutex_t mu;         /* the fields below; agent and changers */
    uint64_t base, size, granule;
    const uint8_t *hdr;         /* header area, read-only; read through
                                   hdr_read only (see there) */
    const struct lay_ctl *ctl;  /* in it: the futex words' address */
    uint8_t *src;               /* PROT_NONE view of the whole file */
    int srcfd;                  /* the file, for view_dup where mremap
                                   cannot duplicate (dup_by_fd), else -1 */
    int rdonly;
    int lkfd;                   /* the lock file: our record lives on it */
    int forkfd;                 /* held across fork() (see atfork) */
    uint32_t applied;           /* generation applied in this process */
    uint32_t regen;             /* generation we registered at */
    uint64_t rec;               /* our record lock's offset, 0: none */
    int detached;               /* given up on by a changer: unmapped */
    struct lay_table *cur;      /* the table applied here */
    struct lay_table *tmp;
    struct lay *next;           /* the agent's list */
};

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

/* Map object O over its range, which is PROT_NONE region pages. */
static int map_obj(struct lay *l, const struct lay_obj *o)
{
    void *at = (void *)(uintptr_t)(l->base + o->off);
    if (o->kind == RPAL_OBJ_ANON)
        return mprotect(at, o->len, eff_prot(l, o->prot)) < 0 ? -errno : 0;
    int w, err = 0;
    int fd = open_obj(l, o, &w);
    if (fd < 0)
        return fd;
    int prot = eff_prot(l, o->prot);
    if (!w && (prot & PROT_WRITE)) {
        prot &= ~PROT_WRITE; /* mapped, but this sharer cannot write it */
        err = -EACCES;
    }
    void *p = mmap(at, o->len, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)o->foff);
    if (p == MAP_FAILED) {
        err = -errno;
        restore(l, o->off, o->len);
    }
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
            /* A file this sharer could open only read-only. */
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
    uint64_t off = rec_off(getpid(), gen, failed);
    if (off == l->rec)
        return 0;
    int err = prim_ofd_lock(l->lkfd, F_RDLCK, off, 1, 0);
    if (err < 0)
        return err;
    if (l->rec)
        prim_ofd_lock(l->lkfd, F_UNLCK, l->rec, 1, 0);
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
    prim_ofd_lock(l->lkfd, F_UNLCK, LK_REC_BASE, 0, 0);
    l->rec = 0;
    l->detached = 1;
}

static int listed_detached(const struct lay *l, const struct lay_ctl *c)
{
    pid_t me = getpid();
    for (uint32_t i = 0; i < c->ndet && i < LAY_DET_MAX; i++) {
        uint32_t d = (c->det[i].gen - l->regen) & GEN_MASK;
        /* Only a change after our registration can have given up on us:
         * an older entry is a previous process with our pid. */
        if (c->det[i].pid == me && d != 0 && d < GEN_MASK / 2)
            return 1;
    }
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
    int err = ctl_read(0, l->hdr, &c);
    if (err == -EIO) {
        self_detach(l);
        return;
    }
    *gen = c.gen;
    if (l->detached || c.gen == l->applied)
        return;
    if (err == 0 && listed_detached(l, &c)) {
        self_detach(l);
        return;
    }
    uint32_t g = c.gen;
    if (err == 0)
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
    prim_futex_wake(&l->ctl->ack, 1, 1);
}

/* ---- the agent thread ---------------------------------------------------- */

#define AGENT_WAITV_MAX 127 /* FUTEX_WAITV_MAX is 128, one is the control word */

static struct {
    pthread_mutex_t mu;         /* the list; taken before any l->mu */
    struct lay *list;
    _Atomic uint32_t ctl;       /* bumped when the list changes */
    pid_t pid;                  /* the process whose agent runs (0: none) */
    pthread_once_t once;
    int nfork;
    int forkfd[256];            /* locks held across fork() */
} g_agent = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, PTHREAD_ONCE_INIT, 0, {0}};

static void *agent_main(void *arg)
{
    (void)arg;
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
             * again: found by `rpal chaos`, sharers changing their ranges at
             * once). */
            pthread_mutex_lock(&l->mu);
            sync_region(l, &g);
            int gone = l->detached;
            pthread_mutex_unlock(&l->mu);
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
        int werr = prim_futex_waitv(w, n + 1, more ? 10000000 : 3600ll * 1000000000);
        if (werr == -ENOSYS)
            prim_futex_wait(&g_agent.ctl, c, 0, 10000000);
        else if (werr == -EFAULT)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return NULL;
}

static void agent_kick(void)
{
    rpal_fetch_add_acq_rel(&g_agent.ctl, 1); /* pairs with agent_main's acquire */
    prim_futex_wake(&g_agent.ctl, 1, 0);
}

/* g_agent.mu held. */
static int agent_start(void)
{
    if (g_agent.pid == getpid())
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
    int err = pthread_create(&th, &a, agent_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    if (err)
        return -err;
    g_agent.pid = getpid();
    return 0;
}

/* fork(): the child is a new sharer with the parent's mappings. Changes
 * are held off (a read lock on byte 0 of each lock file, through a
 * description of its own that parent and child both close) from before the
 * fork until the child has registered, so no change can miss it. */
static void atfork_prepare(void)
{
    int fds[256], n = 0;
    pthread_mutex_lock(&g_agent.mu);
    for (struct lay *l = g_agent.list; l && n < 256; l = l->next) {
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", l->lkfd);
        fds[n++] = l->detached ? -1 : open(p, O_RDONLY | O_CLOEXEC);
    }
    pthread_mutex_unlock(&g_agent.mu);
    /* Not under g_agent.mu: a change of another process waits for our
     * agent while it holds the lock we wait for. */
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0 && prim_ofd_lock(fds[i], F_RDLCK, LK_CHANGE, 1, LK_ATTACH_NS) < 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    pthread_mutex_lock(&g_agent.mu);
    for (struct lay *l = g_agent.list; l; l = l->next)
        pthread_mutex_lock(&l->mu);
    memcpy(g_agent.forkfd, fds, (size_t)n * sizeof fds[0]);
    g_agent.nfork = n;
}

static void atfork_parent(void)
{
    for (struct lay *l = g_agent.list; l; l = l->next)
        pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < g_agent.nfork; i++)
        if (g_agent.forkfd[i] >= 0)
            close(g_agent.forkfd[i]);
    g_agent.nfork = 0;
    pthread_mutex_unlock(&g_agent.mu);
}

static void atfork_child(void)
{
    int any = 0;
    for (struct lay *l = g_agent.list; l; l = l->next) {
        /* The inherited descriptor shares the parent's description and so
         * its record: take a description of our own. */
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", l->lkfd);
        int fd = l->detached ? -1 : open(p, O_RDONLY | O_CLOEXEC);
        close(l->lkfd);
        l->lkfd = fd;
        l->rec = 0;
        l->regen = l->applied;
        if (fd < 0 || rec_set(l, l->applied, 0) < 0) {
            if (fd >= 0) {
                close(fd);
                l->lkfd = -1;
            }
            if (!l->detached)
                self_detach(l);
        } else {
            any = 1;
        }
        pthread_mutex_unlock(&l->mu);
    }
    g_agent.pid = 0; /* threads do not survive fork */
    if (any && agent_start() < 0)
        for (struct lay *l = g_agent.list; l; l = l->next)
            if (!l->detached)
                self_detach(l);
    for (int i = 0; i < g_agent.nfork; i++)
        if (g_agent.forkfd[i] >= 0)
            close(g_agent.forkfd[i]);
    g_agent.nfork = 0;
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
    if (l->lkfd >= 0)
        close(l->lkfd);
    if (l->srcfd >= 0)
        close(l->srcfd);
    free(l->cur);
    free(l->tmp);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int lay_attach(int fd, int lkfd, uint64_t base, uint64_t size, uint64_t granule,
               int rdonly, struct lay **out)
{
    struct lay *l = calloc(1, sizeof *l);
    if (!l) {
        close(lkfd);
        return -ENOMEM;
    }
    pthread_mutex_init(&l->mu, NULL);
    l->base = base;
    l->size = size;
    l->granule = granule;
    l->hdr = (const uint8_t *)(uintptr_t)(base - granule);
    l->ctl = (const struct lay_ctl *)(l->hdr + LAY_CTL_OFF);
    l->rdonly = rdonly;
    l->lkfd = lkfd;
    l->forkfd = -1;
    l->srcfd = dup_by_fd() ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
    l->cur = malloc(sizeof *l->cur);
    l->tmp = malloc(sizeof *l->tmp);
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
    if ((err = prim_ofd_lock(lkfd, F_RDLCK, LK_CHANGE, 1, LK_ATTACH_NS)) < 0)
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
    prim_ofd_lock(lkfd, F_UNLCK, LK_CHANGE, 1, 0);
    *out = l;
    return failed;
fail:
    if (locked)
        prim_ofd_lock(lkfd, F_UNLCK, LK_CHANGE, 1, 0);
    lay_free(l);
    return err;
}

void lay_detach(struct lay *l)
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
        if (o->kind == RPAL_OBJ_FILE)
            t->obj[i + 1].foff += cut;
        o->len = cut;
        t->nobj++;
        return 0;
    }
    return 0;
}

static int same_object(const struct lay_obj *a, const struct lay_obj *b)
{
    if (a->kind != b->kind || a->prot != b->prot || a->off + a->len != b->off)
        return 0;
    return a->kind == RPAL_OBJ_ANON ||
           (a->dev == b->dev && a->ino == b->ino && a->foff + a->len == b->foff &&
            a->maxprot == b->maxprot && !strcmp(a->path, b->path));
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

struct op {
    int op;
    uint64_t off, len;
    int prot;
    int fd;
    uint64_t foff;
};

/* Make T the layout after OP; an error changes nothing that is used. */
static int edit(struct lay_table *t, const struct op *op)
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
        struct lay_obj o = {.off = off, .len = len, .prot = (uint32_t)op->prot,
                            .kind = RPAL_OBJ_ANON, .src_fd = -1};
        if (op->fd >= 0) {
            struct stat st;
            int fl = fcntl(op->fd, F_GETFL);
            if (fstat(op->fd, &st) < 0 || fl < 0)
                return -EBADF;
            if (!S_ISREG(st.st_mode))
                return -ENODEV;
            if ((fl & O_ACCMODE) == O_WRONLY)
                return -EACCES;
            o.kind = RPAL_OBJ_FILE;
            o.maxprot = PROT_READ | PROT_EXEC | ((fl & O_ACCMODE) == O_RDWR ? PROT_WRITE : 0);
            if (o.prot & ~o.maxprot)
                return -EACCES;
            o.dev = (uint64_t)st.st_dev;
            o.ino = (uint64_t)st.st_ino;
            o.foff = op->foff;
            o.src_pid = getpid();
            o.src_fd = op->fd;
            char p[64];
            snprintf(p, sizeof p, "/proc/self/fd/%d", op->fd);
            ssize_t n = readlink(p, o.path, sizeof o.path);
            if (n <= 0 || (size_t)n >= sizeof o.path || o.path[0] != '/')
                n = 0; /* too long, or no path (memfd, deleted): "" */
            o.path[n] = 0;
        }
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

/* Free the region pages of the anonymous objects of OLD in [OFF, OFF+LEN):
 * a writable duplicate of that part of the view, MADV_REMOVE (which
 * punches the hole in the file), gone again. */
static void punch(struct lay *l, const struct lay_table *old, uint64_t off, uint64_t len)
{
    for (uint32_t i = 0; i < old->nobj; i++) {
        const struct lay_obj *o = &old->obj[i];
        uint64_t lo = o->off > off ? o->off : off;
        uint64_t hi = o->off + o->len < off + len ? o->off + o->len : off + len;
        if (o->kind != RPAL_OBJ_ANON || lo >= hi)
            continue;
        /* Where the views are mapped from the descriptor (dup_by_fd), the
         * hole is punched through it too: qemu-user answers 0 to
         * MADV_REMOVE without passing it on, so the pages kept their data. */
        if (l->srcfd >= 0 && fallocate(l->srcfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                       (off_t)(l->granule + lo), (off_t)(hi - lo)) == 0)
            continue;
        void *p = view_dup(l, l->granule + lo, hi - lo, NULL);
        if (p == MAP_FAILED)
            continue;
        if (mprotect(p, hi - lo, PROT_READ | PROT_WRITE) == 0)
            madvise(p, hi - lo, MADV_REMOVE);
        munmap(p, hi - lo);
    }
}

#define SCAN_MAX 4096 /* sharers one change looks at */

/* The pids holding a record on the lock file (but ours), by splitting the
 * range around each lock that F_OFD_GETLK reports. */
static int scan_sharers(int fd, pid_t *pids, int max)
{
    struct { uint64_t lo, hi; } stack[SCAN_MAX + 1];
    int sp = 0, n = 0;
    pid_t me = getpid();
    stack[sp].lo = LK_REC_BASE;
    stack[sp++].hi = rec_base((pid_t)LK_PID_LIMIT);
    while (sp > 0 && n < max) {
        uint64_t lo = stack[--sp].lo, hi = stack[sp].hi, s, len;
        int r = prim_ofd_test(fd, lo, hi - lo, &s, &len);
        if (r < 0)
            return r;
        if (r == 0)
            continue;
        uint64_t e = len == 0 || s + len > hi ? hi : s + len;
        if (s < lo)
            s = lo;
        pid_t pid = (pid_t)((s - LK_REC_BASE) >> LK_REC_SHIFT);
        int seen = pid == me;
        for (int i = 0; i < n && !seen; i++)
            seen = pids[i] == pid;
        if (!seen)
            pids[n++] = pid;
        if (lo < s && sp < SCAN_MAX)
            stack[sp].lo = lo, stack[sp++].hi = s;
        if (e < hi && sp < SCAN_MAX)
            stack[sp].lo = e, stack[sp++].hi = hi;
    }
    return n;
}

/* Drop the detached entries of processes that no longer hold a record, and
 * of new processes with the same pid (registered at or after the entry).
 * 1 if any went. */
static int det_prune(struct lay_ctl *c, int fd)
{
    uint32_t k = 0, n = c->ndet < LAY_DET_MAX ? c->ndet : LAY_DET_MAX;
    for (uint32_t i = 0; i < n; i++) {
        pid_t pid = c->det[i].pid;
        uint64_t s;
        if (pid <= 0 || (uint64_t)pid >= LK_PID_LIMIT ||
            prim_ofd_test(fd, rec_base(pid), 1ull << LK_REC_SHIFT, &s, NULL) <= 0 ||
            s < rec_base(pid))
            continue;
        uint32_t recgen = (uint32_t)((s - rec_base(pid)) >> 2);
        if (((recgen - c->det[i].gen) & GEN_MASK) < GEN_MASK / 2)
            continue;
        c->det[k++] = c->det[i];
    }
    int pruned = k != c->ndet;
    c->ndet = k;
    return pruned;
}

/* Write LEN bytes at OFF of the writable header mapping RW (see
 * hdr_read): whole, or -EIO if the file was cut. */
static int hdr_write(uint8_t *rw, const void *p, size_t len, uint64_t off)
{
    /* Whatever was written before (the new table) is visible before this:
     * pairs with the fence in ctl_read. */
    rpal_fence_seq_cst();
    return prim_mem_write(rw + off, p, len) == 0 ? 0 : -EIO;
}

/* The list of detached sharers, from the changer's copy C. */
static int det_write(uint8_t *rw, const struct lay_ctl *c)
{
    const size_t at = offsetof(struct lay_ctl, ndet);
    return hdr_write(rw, (const uint8_t *)c + at, sizeof *c - at, LAY_CTL_OFF + at);
}

static void det_add(struct lay_ctl *c, pid_t pid, uint32_t gen)
{
    uint32_t i = c->ndet < LAY_DET_MAX ? c->ndet : LAY_DET_MAX;
    if (i == LAY_DET_MAX) { /* full of stuck processes: forget the oldest */
        memmove(&c->det[0], &c->det[1], (LAY_DET_MAX - 1) * sizeof c->det[0]);
        i--;
    }
    c->det[i].pid = pid;
    c->det[i].gen = gen;
    c->ndet = i + 1;
}

static int change(rpal_region *r, const struct op *op, struct rpal_region_change *chg)
{
    struct lay *l = r ? region_lay(r) : NULL;
    if (r && !l)
        return -EOPNOTSUPP; /* a huge region: one object, no layout */
    if (!l || (op->prot & ~PROT_ALL) || !op->len || op->off % RPAL_PAGE ||
        op->len % RPAL_PAGE || op->foff % RPAL_PAGE || op->foff > (uint64_t)INT64_MAX)
        return -EINVAL;
    if (op->len > l->size || op->off > l->size - op->len)
        return -ERANGE;
    if (l->rdonly)
        return -EBADF;
    if (l->detached)
        return -ESTALE;
    int64_t timeout = chg && chg->timeout_ms > 0 ? chg->timeout_ms : 1000;
    struct rpal_region_change res = {0};
    res.timeout_ms = (int)timeout;

    /* Our own description of the lock file, read-write for the write lock:
     * changers conflict with each other (threads of one process too), with
     * attaches and with forks. */
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", l->lkfd);
    int cfd = open(p, O_RDWR | O_CLOEXEC);
    if (cfd < 0)
        return -errno;
    struct lay_table *old = malloc(sizeof *old), *t = malloc(sizeof *t);
    pid_t *pids = malloc(SCAN_MAX * sizeof *pids);
    uint8_t *rw = MAP_FAILED;
    int err = old && t && pids ? 0 : -ENOMEM;
    if (err == 0)
        err = prim_ofd_lock(cfd, F_WRLCK, LK_CHANGE, 1,
                            LK_ATTACH_NS + timeout * 1000000);
    if (err < 0)
        goto out;
    /* A writable duplicate of the header area, for this change only; like
     * the read-only one it is accessed through hdr_read/hdr_write only. */
    rw = view_dup(l, 0, REGION_HDR_MAP, NULL);
    if (rw == MAP_FAILED || mprotect(rw, REGION_HDR_MAP, PROT_READ | PROT_WRITE) < 0) {
        err = -errno;
        goto out;
    }
    /* The control page, ours to rewrite while we hold the change lock (the
     * agents only read it). */
    struct lay_ctl ctl, *c = &ctl;
    if ((err = ctl_read(0, rw, c)) < 0)
        goto out;
    uint32_t g = c->gen, g1 = (g + 1) & GEN_MASK;
    if ((err = table_read(0, rw, g, l->size, old)) < 0)
        goto out;
    memcpy(t, old, table_bytes(old));
    if ((err = edit(t, op)) < 0)
        goto out;
    t->gen = g1;
    t->op = (uint32_t)op->op;
    t->op_off = op->off;
    t->op_len = op->len;
    t->op_prot = (uint32_t)op->prot;
    t->check = table_check(t);
    /* Into the spare copy, which no agent reads until the generation names
     * it. */
    if ((err = hdr_write(rw, t, table_bytes(t), copy_off(g1))) < 0)
        goto out;

    /* Here first: if it cannot be done in the changer, it is not done. */
    pthread_mutex_lock(&l->mu);
    if (l->detached || listed_detached(l, c)) { /* an earlier change gave up on us */
        if (!l->detached)
            self_detach(l);
        pthread_mutex_unlock(&l->mu);
        err = -ESTALE;
        goto out;
    }
    if (l->applied != g) /* our agent has not caught up: no diff to apply */
        err = apply_all(l, t) ? -EIO : 0;
    else
        err = apply_op(l, t);
    if (err < 0) {
        if (apply_all(l, l->cur) < 0) /* put the old layout back */
            self_detach(l);
        pthread_mutex_unlock(&l->mu);
        goto out;
    }
    int pruned = det_prune(c, cfd);
    int n = scan_sharers(cfd, pids, SCAN_MAX);
    if (n < 0)
        n = 0;
    /* Sharers an earlier change gave up on are not waited for again (they
     * drop their record when they run). */
    for (int i = 0; i < n;) {
        int listed = 0;
        for (uint32_t k = 0; k < c->ndet && k < LAY_DET_MAX && !listed; k++)
            listed = c->det[k].pid == pids[i];
        if (!listed) {
            i++;
            continue;
        }
        res.detached++;
        pids[i] = pids[--n];
    }
    if ((pruned && (err = det_write(rw, c)) < 0) ||
        (err = hdr_write(rw, &g1, sizeof g1, LAY_CTL_OFF + offsetof(struct lay_ctl, gen))) < 0) {
        if (apply_all(l, l->cur) < 0) /* not published: put the old layout back */
            self_detach(l);
        pthread_mutex_unlock(&l->mu);
        goto out;
    }
    prim_futex_wake(&l->ctl->gen, INT_MAX, 1);
    memcpy(l->cur, t, table_bytes(t));
    l->applied = g1;
    rec_set(l, g1, 0);
    pthread_mutex_unlock(&l->mu);

    /* Wait for every sharer's record to move to G1 (or G1 failed). One that
     * holds no record at all any more has died. */
    uint64_t deadline = prim_now_ns() + (uint64_t)timeout * 1000000;
    int64_t nap = 20000;
    while (n > 0) {
        for (int i = 0; i < n;) {
            uint64_t s;
            int a = prim_ofd_test(cfd, rec_off(pids[i], g1, 0), 2, &s, NULL);
            if (a > 0) {
                if (s == rec_off(pids[i], g1, 1))
                    res.failed++;
                else
                    res.applied++;
            } else if (prim_ofd_test(cfd, rec_base(pids[i]), 1ull << LK_REC_SHIFT, NULL,
                                     NULL) == 0) {
                res.dead++;
            } else {
                i++;
                continue;
            }
            pids[i] = pids[--n];
        }
        uint64_t now = prim_now_ns();
        if (n == 0 || now >= deadline)
            break;
        if ((uint64_t)nap > deadline - now)
            nap = (int64_t)(deadline - now);
        /* Agents wake this word after they moved their record; the value
         * never changes, so a wake that came before we sleep is missed and
         * the nap bounds the cost of that. */
        if (prim_futex_wait(&l->ctl->ack, 0, 1, nap) == -EFAULT) /* file cut */
            nanosleep(&(struct timespec){0, (long)nap}, NULL);
        if (nap < 2000000)
            nap *= 2;
    }
    for (int i = 0; i < n; i++) { /* too late: they are detached */
        det_add(c, pids[i], g1);
        res.detached++;
    }
    if (n > 0)
        det_write(rw, c); /* failing, they stay attached and are waited for again */
    if (op->op == OP_UNMAP)
        punch(l, old, op->off, op->len);
    if (res.detached)
        prim_futex_wake(&l->ctl->gen, INT_MAX, 1);
out:
    if (rw != MAP_FAILED)
        munmap(rw, REGION_HDR_MAP);
    close(cfd); /* releases the change lock */
    free(old);
    free(t);
    free(pids);
    if (err == 0 && chg)
        *chg = res;
    return err;
}

int rpal_region_map(rpal_region *r, uint64_t offset, uint64_t length, int prot,
                    int fd, uint64_t file_offset, struct rpal_region_change *chg)
{
    if (fd < -1 || (fd == -1 && file_offset))
        return -EINVAL;
    struct op op = {OP_MAP, offset, length, prot, fd, file_offset};
    return change(r, &op, chg);
}

int rpal_region_protect(rpal_region *r, uint64_t offset, uint64_t length, int prot,
                        struct rpal_region_change *chg)
{
    struct op op = {OP_PROTECT, offset, length, prot, -1, 0};
    return change(r, &op, chg);
}

int rpal_region_unmap(rpal_region *r, uint64_t offset, uint64_t length,
                      struct rpal_region_change *chg)
{
    struct op op = {OP_UNMAP, offset, length, 0, -1, 0};
    return change(r, &op, chg);
}
