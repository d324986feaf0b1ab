/* domain: the reserved window, one slot per member, membership, liveness,
 * protection keys and the dispatch loop.
 *
 * A domain is a directory <ns>/.domains/NAME holding its geometry (`meta`)
 * and one claim file per slot (`slot.N`). A member holds an OFD lock on its
 * claim for as long as it lives, so a slot whose lock is free belongs to
 * nobody, whatever the file says. The member's slot is a sealed memfd mapped
 * read-write by its owner only; peers get the descriptor in the consent
 * handshake (service.c) and can map it read-only, nothing else.
 * See docs/domains.md.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A slot's claim file in the domain's directory: "slot.N" (or in a shared
 * domain "slot.N.uUID[.HEX]", below). */
#define CLAIM_NAME_MAX 48
static void claim_name(char buf[CLAIM_NAME_MAX], unsigned slot)
{
    snprintf(buf, CLAIM_NAME_MAX, "slot.%u", slot);
}

/* struct dom_meta, the geometry in <ns>/.domains/NAME/meta, is in
 * src/internal.h (the fuzz targets build them). */

uint64_t rpal__dom_meta_check(const struct dom_meta *m)
{
    /* Not a secret: it only catches a torn or stray file. */
    return rpal__prim_fnv1a(m, offsetof(struct dom_meta, check));
}

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(rpal_domain *) g_dom; /* the one domain of this process */

/* ---- names, geometry ---- */

int rpal__dom_component_validate(const char *name)
{
    int err = rpal__ns_name_validate(name);
    if (err < 0)
        return err;
    return strchr(name, '/') ? -EINVAL : 0;
}

static int slot_size_valid(uint64_t s)
{
    return s >= (16ull << 20) && (s & (s - 1)) == 0 && s <= DOM_WINDOW_SIZE;
}

uint64_t rpal__dom_slot_addr(const rpal_domain *d, unsigned slot)
{
    return d->window + (uint64_t)slot * d->slot_size;
}

int rpal__dom_meta_validate(const struct dom_meta *m)
{
    if (m->magic != META_MAGIC || m->version != META_VERSION || m->check != rpal__dom_meta_check(m) ||
        !slot_size_valid(m->slot_size) || m->window != DOM_WINDOW_BASE || m->nslots == 0 ||
        m->nslots > DOM_MAX_SLOTS || (uint64_t)m->nslots * m->slot_size > DOM_WINDOW_SIZE)
        return -EBADMSG;
    return 0;
}

/* Open <ns>/PATH (.domains/NAME) if it and .domains may be trusted (ours
 * or root's, sticky if others may write them): else -EPERM. A domain
 * directory another user made could have its sockets and claims swapped by
 * that user (issue 16, attack 2). */
static int dom_dirs_trusted(int nsfd, const char *path)
{
    int dfd = rpal__prim_open_beneath(nsfd, ".domains", O_PATH | O_DIRECTORY, 0);
    int err = dfd < 0 ? dfd : rpal__prim_dir_trusted(dfd);
    if (dfd >= 0)
        close(dfd);
    int fd = err < 0 ? err : rpal__prim_open_beneath(nsfd, path, O_PATH | O_DIRECTORY, 0);
    if (fd >= 0 && (err = rpal__prim_dir_trusted(fd)) < 0) {
        close(fd);
        fd = err;
    }
    return fd;
}

/* Write M as the domain FD's meta, never seen half written: a file made
 * whole first (O_TMPFILE), then linked as "meta", or, to REPLACE a corrupt
 * one, linked under a name of its own and renamed over it. 0, -ENOSPC on a
 * full volume, or another error; the caller reads meta again anyway. */
static int meta_link(int fd, const struct dom_meta *m, int replace)
{
    int tfd = rpal__prim_open_beneath(fd, ".", O_TMPFILE | O_RDWR, 0644);
    if (tfd < 0)
        return tfd;
    char proc[PRIM_FD_PATH], tmp[32];
    rpal__prim_fd_path(proc, tfd);
    snprintf(tmp, sizeof tmp, "meta.%d", (int)getpid());
    int err = 0;
    if (fchmod(tfd, 0644) < 0 || pwrite(tfd, m, sizeof *m, 0) != (ssize_t)sizeof *m) {
        err = errno == ENOSPC || errno == EDQUOT ? -ENOSPC : -EIO;
    } else if (!replace) {
        (void)linkat(AT_FDCWD, proc, fd, "meta", AT_SYMLINK_FOLLOW);
    } else if (linkat(AT_FDCWD, proc, fd, tmp, AT_SYMLINK_FOLLOW) < 0 ||
               renameat(fd, tmp, fd, "meta") < 0) {
        err = -errno;
        unlinkat(fd, tmp, 0);
    }
    close(tfd);
    return err;
}

/* The geometry that the claim record R of SLOT says its member joined
 * with, as a meta: 0 if it is one a joiner would accept. */
static int rec_geometry(const struct member_rec *r, unsigned slot, struct dom_meta *m)
{
    *m = (struct dom_meta){.magic = META_MAGIC, .version = META_VERSION,
                           .nslots = r->geo_nslots, .slot_size = r->geo_slot_size,
                           .window = r->geo_window};
    m->check = rpal__dom_meta_check(m);
    return rpal__dom_meta_validate(m) == 0 && slot < m->nslots ? 0 : -EBADMSG;
}

/* The slot N of the claim file NAME ("slot.N"), or -1. */
static int claim_slot_of(const char *name)
{
    char *end;
    if (strncmp(name, "slot.", 5) || name[5] < '0' || name[5] > '9')
        return -1;
    unsigned long n = strtoul(name + 5, &end, 10);
    return *end || n >= DOM_MAX_SLOTS ? -1 : (int)n;
}

/* Scan the claims of the domain directory DIR (FD): *LIVE if any is held,
 * and into *BEST the geometry that most live members' records give (0 if
 * there is one). Ties go to the first found. */
static int claims_geometry(int fd, DIR *dir, int *live, struct dom_meta *best)
{
    struct member_rec *rec = malloc(sizeof *rec);
    struct dom_meta cand[4];
    unsigned votes[4] = {0}, ncand = 0, top = 0;
    *live = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        if (strncmp(e->d_name, "slot.", 5))
            continue;
        int cfd = rpal__prim_open_beneath(fd, e->d_name, O_RDONLY | O_NONBLOCK, 0);
        int held = cfd < 0 ? cfd != -ENOENT : rpal__dom_claim_locked(cfd);
        if (cfd >= 0)
            close(cfd);
        *live |= held;
        int slot = claim_slot_of(e->d_name);
        struct dom_meta m;
        if (!held || !rec || slot < 0 || rpal__dom_read_member(fd, (unsigned)slot, rec) < 0 ||
            rec_geometry(rec, (unsigned)slot, &m) < 0)
            continue;
        unsigned i = 0;
        while (i < ncand && memcmp(&cand[i], &m, sizeof m))
            i++;
        if (i == ncand && ncand < 4)
            cand[ncand++] = m;
        if (i < ncand && ++votes[i] > votes[top])
            top = i;
    }
    free(rec);
    if (ncand)
        *best = cand[top];
    return ncand ? 0 : -ESRCH;
}

/* live members and the geometry they give (claims_geometry) of the
 * domain directory FD: 0 and *BEST if they give one. */
static int live_geometry(int fd, int *live, struct dom_meta *best)
{
    int dfd = rpal__prim_open_beneath(fd, ".", O_RDONLY | O_DIRECTORY, 0);
    DIR *dir = dfd < 0 ? NULL : fdopendir(dfd);
    if (!dir) {
        if (dfd >= 0)
            close(dfd);
        *live = 1; /* not known: as if some were */
        return dfd < 0 ? dfd : -errno;
    }
    int err = claims_geometry(fd, dir, live, best);
    closedir(dir);
    return err;
}

/* The geometry of the domain directory FD into *M: written by the first
 * member (exclusively), read by the others, who must agree. */
static int meta_get(int fd, uint64_t want_size, struct dom_meta *m)
{
    /* The first member writes the geometry (exclusively); the others read
     * it and must agree. */
    uint64_t size = want_size ? want_size : RPAL_DEFAULT_SLOT_SIZE;
    struct dom_meta mine = {
        .magic = META_MAGIC, .version = META_VERSION,
        .nslots = (uint32_t)(DOM_WINDOW_SIZE / size > DOM_MAX_SLOTS
                                 ? DOM_MAX_SLOTS : DOM_WINDOW_SIZE / size),
        .slot_size = size, .window = DOM_WINDOW_BASE,
    };
    mine.check = rpal__dom_meta_check(&mine);
    int mfd = rpal__prim_open_beneath(fd, "meta", O_RDONLY, 0), werr = 0;
    if (mfd == -ENOENT) {
        /* Gone while members live (unlinked by a process of their user,
         * issue 16): theirs, not ours. */
        int live;
        struct dom_meta theirs;
        if (live_geometry(fd, &live, &theirs) == 0)
            mine = theirs;
        /* A full volume: say so, not "no meta". */
        werr = meta_link(fd, &mine, 0) == -ENOSPC ? -ENOSPC : 0;
        mfd = rpal__prim_open_beneath(fd, "meta", O_RDONLY, 0);
    }
    if (mfd < 0)
        return mfd == -ENOENT && werr ? werr : mfd;
    ssize_t n = pread(mfd, m, sizeof *m, 0);
    close(mfd);
    if (n != (ssize_t)sizeof *m || rpal__dom_meta_validate(m) < 0)
        return -EBADMSG;
    return want_size && want_size != m->slot_size ? -EINVAL : 0;
}

/* The domain FD's meta is corrupt (a process of the same user wrote over
 * it, issue 16). No claim held: no live member depends on its geometry, it
 * is removed (the next meta_get writes it anew). Members alive: it is
 * rebuilt from the geometry their records give and put in place at once.
 * 1 if it was removed or rewritten, 0 if it is good or missing now (another
 * process repaired it), else -EBADMSG. */
static int meta_repair(int fd)
{
    int live;
    struct dom_meta good, m;
    int have = live_geometry(fd, &live, &good) == 0;
    int mfd = rpal__prim_open_beneath(fd, "meta", O_RDONLY, 0);
    int bad = mfd >= 0 && (pread(mfd, &m, sizeof m, 0) != (ssize_t)sizeof m ||
                           rpal__dom_meta_validate(&m) < 0);
    if (mfd >= 0)
        close(mfd);
    if (!bad)
        return 0; /* repaired meanwhile, or gone: read it again */
    if (!live)
        return unlinkat(fd, "meta", 0) == 0 ? 1 : -EBADMSG;
    return have && meta_link(fd, &good, 1) == 0 ? 1 : -EBADMSG;
}

/* Open (creating if needed) <ns>/.domains/NAME and agree on its geometry. */
static int dom_open_dir(const char *name, uint64_t want_size, int *dirfd,
                        struct dom_meta *m)
{
    int nsfd = rpal__ns_open(1);
    if (nsfd < 0)
        return nsfd;
    char path[80];
    snprintf(path, sizeof path, ".domains/%s", name);
    size_t made;
    /* .domains is shared like the namespace root (1777 in the default
     * one), so that every user may have domains; joining one is decided by
     * its own directory's mode, like any file access: 0700. */
    struct stat ns;
    int err = fstat(nsfd, &ns) < 0 ? -errno : 0;
    if (err == 0)
        err = rpal__prim_mkdirs_beneath(nsfd, ".domains", ns.st_mode & 07777, &made);
    if (err == 0)
        err = rpal__prim_mkdirs_beneath(nsfd, path, 0700, &made);
    int fd = err < 0 ? err : dom_dirs_trusted(nsfd, path);
    close(nsfd);
    if (fd < 0)
        return fd;

    int err2 = meta_get(fd, want_size, m);
    /* A corrupt meta (same-user tampering, issue 16) is replaced, from
     * what the live members' records say if there are any, instead of
     * failing every join. */
    if (err2 == -EBADMSG && meta_repair(fd) >= 0)
        err2 = meta_get(fd, want_size, m);
    if (err2 < 0) {
        close(fd);
        return err2;
    }
    *dirfd = fd;
    return 0;
}

/* ---- claims ---- */

/* 1 if someone holds the OFD lock of the claim file FD. */
int rpal__dom_claim_locked(int fd)
{
    return rpal__prim_ofd_test(fd, 0, 1, NULL, NULL) > 0;
}

/* The claim's record, and room for the first counters' records, taken from
 * the volume now: on a full one (a small tmpfs, an emptyDir at its
 * sizeLimit) the join fails with -ENOSPC instead of leaving a claim whose
 * record could not be written, which no peer would recognise. */
#define CLAIM_RESERVE_STATS 16
static int claim_reserve(int fd)
{
    int err = rpal__prim_reserve(fd, 0, sizeof(struct member_rec));
    if (err == 0)
        err = rpal__prim_reserve(fd, STATS_OFF, CLAIM_RESERVE_STATS * sizeof(struct stats_rec));
    return err;
}

/* ---- claims in a domain open to other users (issue 16) ---- */

/* A domain directory others may write (chmod 1777: docs/hardening.md) is
 * shared like the registry: one user could create and lock every slot.N
 * and so refuse every later join. What the kernel keeps is a file's owner,
 * so there a claim counts for a process only if its owner is root, the
 * process's own user, or a user within its quota of claims (its first
 * RPAL_QUOTA_CLAIMS live claims in slot order; default a quarter of the
 * slots). A slot whose slot.N is free but not ours to write, or held
 * beyond its owner's quota, is claimed through a file of our own,
 * slot.N.uUID, which counts only if owned by UID. Joiners lock, then look
 * for a rival claim of the slot and back off if there is one, so two
 * honest members never hold one slot (docs/domains.md). */

#define CLAIM_NOUID UINT32_MAX

static int dom_shared(int dirfd)
{
    struct stat st;
    return fstat(dirfd, &st) == 0 && (st.st_mode & 0022);
}

/* The domain directory DIRFD, for reading its entries (NULL if it cannot). */
static DIR *dom_opendir(int dirfd)
{
    int fd = rpal__prim_open_beneath(dirfd, ".", O_RDONLY | O_DIRECTORY, 0);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    if (!dir && fd >= 0)
        close(fd);
    return dir;
}

/* "slot.N" (*UID = CLAIM_NOUID), "slot.N.uUID" or "slot.N.uUID.HEX" (the
 * name another user planted as ours taken): 0 and *SLOT, *UID. */
static int claim_parse(const char *leaf, unsigned *slot, uint32_t *uid)
{
    char *end;
    if (strncmp(leaf, "slot.", 5) || leaf[5] < '0' || leaf[5] > '9')
        return -EINVAL;
    unsigned long s = strtoul(leaf + 5, &end, 10), u = CLAIM_NOUID;
    if (*end == '.' && end[1] == 'u' && end[2] >= '0' && end[2] <= '9')
        u = strtoul(end + 2, &end, 10);
    if (u != CLAIM_NOUID && *end == '.' && end[1])
        strtoul(end + 1, &end, 16);
    if (*end || s >= DOM_MAX_SLOTS || u > CLAIM_NOUID)
        return -EINVAL;
    *slot = (unsigned)s;
    *uid = (uint32_t)u;
    return 0;
}

/* The claim file LEAF of the directory DIRFD, if it is one at all: a
 * regular file, owned by the uid its name says, locked. Its owner in *UID. */
static int claim_live(int dirfd, const char *leaf, uint32_t *uid)
{
    unsigned s;
    uint32_t u;
    struct stat st;
    if (claim_parse(leaf, &s, &u) < 0)
        return 0;
    int fd = rpal__prim_open_beneath(dirfd, leaf, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0)
        return 0;
    int live = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
               (u == CLAIM_NOUID || u == st.st_uid) && rpal__dom_claim_locked(fd);
    close(fd);
    if (live)
        *uid = st.st_uid;
    return live;
}

/* How many claims a user may hold, as this process honours them. */
static unsigned claim_quota(int dirfd)
{
    struct dom_meta m;
    unsigned n = DOM_MAX_SLOTS;
    int fd = rpal__prim_open_beneath(dirfd, "meta", O_RDONLY, 0);
    if (fd >= 0 && pread(fd, &m, sizeof m, 0) == (ssize_t)sizeof m &&
        rpal__dom_meta_validate(&m) == 0)
        n = m.nslots;
    if (fd >= 0)
        close(fd);
    const char *e = getenv("RPAL_QUOTA_CLAIMS");
    unsigned long q = e && *e >= '1' && *e <= '9' ? strtoul(e, NULL, 10) : 0;
    return q ? (q < n ? (unsigned)q : n) : (n / 4 ? n / 4 : 1);
}

/* Whether the live claim LEAF (of SLOT, owned by OWNER) counts: OWNER is
 * root or us, or holds fewer than its quota of live claims before it (in
 * slot order, slot.N before slot.N.uUID). */
static int claim_counts(int dirfd, unsigned slot, const char *leaf, uint32_t owner)
{
    if (owner == 0 || owner == geteuid())
        return 1;
    DIR *dir = dom_opendir(dirfd);
    if (!dir)
        return 0;
    unsigned before = 0, q = claim_quota(dirfd), s;
    uint32_t u, o;
    for (struct dirent *e; (e = readdir(dir));) {
        if (claim_parse(e->d_name, &s, &u) < 0 || s > slot ||
            (s == slot && (u != CLAIM_NOUID || !strcmp(e->d_name, leaf))))
            continue; /* not before LEAF */
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == owner &&
            claim_live(dirfd, e->d_name, &o))
            before++;
    }
    closedir(dir);
    return before < q;
}

/* The claim that stands for SLOT in the shared domain DIRFD, other than
 * the file of inode NOT: its name into NAME and 1, or 0 if there is none. */
static int claim_find(int dirfd, unsigned slot, uint64_t not, char name[CLAIM_NAME_MAX])
{
    uint32_t owner;
    struct stat st;
    claim_name(name, slot);
    if (claim_live(dirfd, name, &owner) && claim_counts(dirfd, slot, name, owner) &&
        fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino != not)
        return 1;
    DIR *dir = dom_opendir(dirfd);
    if (!dir)
        return 0;
    int found = 0;
    unsigned s;
    uint32_t u;
    for (struct dirent *e; !found && (e = readdir(dir));)
        found = claim_parse(e->d_name, &s, &u) == 0 && s == slot && u != CLAIM_NOUID &&
                fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino != not &&
                claim_live(dirfd, e->d_name, &owner) && claim_counts(dirfd, slot, e->d_name, owner) &&
                snprintf(name, CLAIM_NAME_MAX, "%s", e->d_name) > 0;
    closedir(dir);
    return found;
}

/* Open our claim file LEAF for SLOT (made if missing) and lock it: the
 * descriptor, or -1 if it is not ours to hold. */
static int claim_take(int dirfd, const char *leaf)
{
    int fd = rpal__prim_open_beneath(dirfd, leaf, O_RDWR | O_NONBLOCK, 0);
    if (fd == -ENOENT && (fd = rpal__prim_open_beneath(dirfd, leaf, O_RDWR | O_CREAT | O_EXCL,
                                                       0644)) >= 0)
        fchmod(fd, 0644);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    struct stat a, b;
    if (fd >= 0 && (fstat(fd, &a) < 0 || a.st_uid != geteuid() || !S_ISREG(a.st_mode) ||
                    fcntl(fd, F_OFD_SETLK, &fl) < 0 ||
                    fstatat(dirfd, leaf, &b, AT_SYMLINK_NOFOLLOW) < 0 || a.st_ino != b.st_ino)) {
        close(fd);
        fd = -1;
    }
    return fd < 0 ? -1 : fd;
}

/* Slot I of the shared domain D, if free to us: our locked claim, or -1.
 * *BUSY is set when we backed off from a rival that came at once. */
static int claim_slot_shared(rpal_domain *d, unsigned i, int *busy)
{
    char name[CLAIM_NAME_MAX], mine[CLAIM_NAME_MAX], rival[CLAIM_NAME_MAX];
    uint32_t owner;
    struct stat st;
    unsigned r = 0;
    claim_name(name, i);
    snprintf(mine, sizeof mine, "slot.%u.u%u", i, (unsigned)geteuid());
    int fd = -1;
    const char *took = name;
    if (claim_live(d->dirfd, name, &owner)) {
        if (claim_counts(d->dirfd, i, name, owner))
            return -1; /* held, and it counts */
    } else if (fstatat(d->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_uid == geteuid()) {
        fd = claim_take(d->dirfd, name); /* missing, or a dead claim of ours */
    }
    if (fd < 0) {
        took = mine;
        fd = claim_take(d->dirfd, mine);
    }
    if (fd < 0 && fstatat(d->dirfd, mine, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        st.st_uid != geteuid() && getrandom(&r, sizeof r, 0) == (ssize_t)sizeof r) {
        /* Our name, planted by another user: one nobody can guess. */
        snprintf(mine, sizeof mine, "slot.%u.u%u.%x", i, (unsigned)geteuid(), r);
        fd = claim_take(d->dirfd, mine);
    }
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0 || claim_find(d->dirfd, i, st.st_ino, rival)) {
        /* A rival locked the slot too: the later one gives way, and
         * removes its file under its lock (as leave does). */
        unlinkat(d->dirfd, took, 0);
        close(fd);
        *busy = 1;
        return -1;
    }
    return fd;
}

/* Slot I is ours through the locked claim FD: emptied (a dead member's
 * record and counters may still be in it) and its room reserved; 0, or an
 * error with FD closed. */
static int claim_keep(rpal_domain *d, unsigned i, int fd)
{
    int err = ftruncate(fd, 0) < 0 ? -errno : claim_reserve(fd);
    if (err < 0) {
        close(fd);
        return err;
    }
    d->slot = i;
    d->claimfd = fd;
    return 0;
}

/* dom_claim in a shared domain: a few rounds, with a random pause between
 * them, where rivals made each other back off. */
static int dom_claim_shared(rpal_domain *d)
{
    for (int round = 0; round < 8; round++) {
        int busy = 0;
        for (unsigned i = 0; i < d->nslots; i++) {
            int fd = claim_slot_shared(d, i, &busy);
            if (fd >= 0)
                return claim_keep(d, i, fd);
        }
        if (!busy)
            break;
        unsigned r = 0;
        (void)!getrandom(&r, sizeof r, 0);
        nanosleep(&(struct timespec){0, (long)(1 + r % 5) * 1000000L}, NULL);
    }
    return -ENOSPC;
}

/* The claim file that stands for SLOT in DIRFD, opened for reading, its
 * name in NAME: slot.N, or in a shared domain the claim that counts. */
static int claim_open(int dirfd, unsigned slot, char name[CLAIM_NAME_MAX])
{
    claim_name(name, slot);
    if (dom_shared(dirfd) && !claim_find(dirfd, slot, 0, name))
        return -ESRCH;
    return rpal__prim_open_beneath(dirfd, name, O_RDONLY | O_NONBLOCK, 0);
}

/* Remove our claim D->claimfd's file from its name: slot.N, or in a
 * shared domain the name of ours it has. */
static void claim_unlink(rpal_domain *d)
{
    char name[CLAIM_NAME_MAX];
    struct stat a, b;
    claim_name(name, d->slot);
    if (fstat(d->claimfd, &a) < 0 ||
        (fstatat(d->dirfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_ino == b.st_ino) ||
        !dom_shared(d->dirfd)) {
        unlinkat(d->dirfd, name, 0);
        return;
    }
    DIR *dir = dom_opendir(d->dirfd);
    if (!dir)
        return;
    unsigned s;
    uint32_t u;
    for (struct dirent *e; (e = readdir(dir));)
        if (claim_parse(e->d_name, &s, &u) == 0 && s == d->slot && e->d_ino == a.st_ino) {
            unlinkat(d->dirfd, e->d_name, 0);
            break;
        }
    closedir(dir);
}

static int dom_claim(rpal_domain *d)
{
    if (dom_shared(d->dirfd))
        return dom_claim_shared(d);
    for (unsigned i = 0; i < d->nslots; i++) {
        char name[CLAIM_NAME_MAX];
        claim_name(name, i);
        /* Without O_CREAT first: fs.protected_regular refuses O_CREAT on
         * another user's file in a sticky directory. */
        int fd = rpal__prim_open_beneath(d->dirfd, name, O_RDWR, 0);
        if (fd == -ENOENT) {
            fd = rpal__prim_open_beneath(d->dirfd, name, O_RDWR | O_CREAT | O_EXCL, 0644);
            if (fd >= 0)
                fchmod(fd, 0644);
        }
        if (fd < 0)
            continue; /* another user's claim, or a race: next slot */
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
        struct stat a, b;
        /* `rpal gc` may have unlinked a dead claim between our open and our
         * lock: a lock on a file that is no longer under the name is no
         * claim at all. */
        if (fcntl(fd, F_OFD_SETLK, &fl) < 0 || fstat(fd, &a) < 0 ||
            fstatat(d->dirfd, name, &b, AT_SYMLINK_NOFOLLOW) < 0 || a.st_ino != b.st_ino) {
            close(fd);
            continue;
        }
        return claim_keep(d, i, fd);
    }
    return -ENOSPC;
}

/* ---- pins: a live member's slot whatever becomes of its claim file ----
 *
 * A process of the same user can unlink or replace a live member's claim
 * file (issue 16, attack 7): its lock then no longer stands for the slot,
 * and a joiner would lock a new slot.N and share the slot with a live
 * member. So a member also holds a read lock (OFD, dropped by the kernel
 * when it dies, like the claim's) on byte N of the domain's directory: a
 * directory cannot be unlinked while it holds files (renamed away, it takes
 * its members along), and read locks are what a directory opened for
 * reading can take. A joiner takes
 * slot N only if it gets the claim and no one else holds byte N. (Read
 * locks do not exclude each other, so the test and the lock are two steps:
 * the claim's lock keeps two joiners of slot N apart meanwhile.) */

/* 1 if pins mean anything in the domain directory DIRFD: only its owner
 * (and root) may read it. Any user who may read a directory may take read
 * locks on it, so in a domain opened to others (chmod 1777, or readable by
 * a group) anyone could pin every slot and refuse every join; there pins are
 * neither taken nor honoured, and the claims in a domain open to other
 * users (dom_shared: its per-user claims and quotas) are what holds a slot.
 * Same-user tampering with a claim there is not repaired (docs/domains.md). */
static int pins_used(int dirfd)
{
    struct stat st;
    return fstat(dirfd, &st) == 0 && !(st.st_mode & 0066);
}

/* 1 if someone else holds the pin of SLOT in the domain directory DFD
 * (opened for reading). */
static int pin_held(int dfd, unsigned slot)
{
    return rpal__prim_ofd_test(dfd, slot, 1, NULL, NULL) > 0;
}

/* Pin SLOT, with *PFD (-1: the directory DIRFD not opened yet): 0, or
 * -EBUSY if a live member holds it. Where the directory cannot be read or
 * locked (a filesystem without locks on directories), 0 without a pin: the
 * claim's lock alone holds the slot, as before. */
static int pin_take(int dirfd, unsigned slot, int *pfd)
{
    if (!pins_used(dirfd))
        return 0;
    if (*pfd < 0)
        *pfd = rpal__prim_open_beneath(dirfd, ".", O_RDONLY | O_DIRECTORY, 0);
    if (*pfd < 0)
        return 0;
    if (pin_held(*pfd, slot))
        return -EBUSY;
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = (off_t)slot,
                       .l_len = 1};
    return fcntl(*pfd, F_OFD_SETLK, &fl) < 0 && (errno == EAGAIN || errno == EACCES) ? -EBUSY
                                                                                       : 0;
}

/* 1 if the file under NAME in DIRFD is FD's. */
static int same_file(int dirfd, const char *name, int fd)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && fstatat(dirfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
           a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

/* 1 if D's claim file is still under its name slot.N, or if that is not
 * ours to judge: in a domain open to other users our claim may have
 * another name (slot.N.uUID) and is never relinked (see pins_used). */
static int claim_in_place(rpal_domain *d)
{
    char name[CLAIM_NAME_MAX];
    claim_name(name, d->slot);
    return !pins_used(d->dirfd) || same_file(d->dirfd, name, d->claimfd);
}

/* dom_claim, and the pin of the slot it got (into d->pinfd). A slot whose
 * pin a live member holds is passed by: its claim stays locked by us
 * meanwhile, so that dom_claim moves on to the next. */
static int dom_claim_pinned(rpal_domain *d)
{
    int *held = calloc(d->nslots, sizeof *held), nheld = 0, err;
    if (!held)
        return -ENOMEM;
    for (;;) {
        if ((err = dom_claim(d)) < 0)
            break;
        if ((err = pin_take(d->dirfd, d->slot, &d->pinfd)) == 0)
            break;
        held[nheld++] = d->claimfd; /* not ours: left for its member to restore */
        d->claimfd = -1;
        if (err != -EBUSY || nheld == (int)d->nslots)
            break;
    }
    while (nheld)
        close(held[--nheld]);
    free(held);
    return err;
}

/* Copy the counters' records of the claim file FROM into TO. */
static int claim_copy_stats(int from, int to)
{
    char buf[4096];
    for (off_t off = STATS_OFF; off < STATS_OFF + (off_t)STATS_MAX * (off_t)sizeof(struct stats_rec);) {
        ssize_t n = pread(from, buf, sizeof buf, off);
        if (n <= 0)
            return n < 0 ? -errno : 0;
        if (pwrite(to, buf, (size_t)n, off) != n)
            return -ENOSPC;
        off += n;
    }
    return 0;
}

/* Our claim file is no longer under its name (unlinked or replaced): put a
 * new one there, locked, with our counters' records, in place at once
 * (rename over whatever is there: our pin says the slot is ours), under
 * the same descriptor number (other threads write counters through it). The
 * record follows (rpal__dom_publish). d->lock held. */
static int claim_relink(rpal_domain *d)
{
    char name[CLAIM_NAME_MAX], tmp[CLAIM_NAME_MAX + 8], proc[PRIM_FD_PATH];
    claim_name(name, d->slot);
    snprintf(tmp, sizeof tmp, "%s.new", name); /* rpal gc removes it if we die */
    int tfd = rpal__prim_open_beneath(d->dirfd, ".", O_TMPFILE | O_RDWR, 0644);
    if (tfd < 0)
        return tfd;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    int err = fchmod(tfd, 0644) < 0 || fcntl(tfd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
    if (err == 0 && (err = claim_reserve(tfd)) == 0)
        err = claim_copy_stats(d->claimfd, tfd);
    rpal__prim_fd_path(proc, tfd);
    unlinkat(d->dirfd, tmp, 0); /* left by a member of this slot that died here */
    if (err == 0 && (linkat(AT_FDCWD, proc, d->dirfd, tmp, AT_SYMLINK_FOLLOW) < 0 ||
                     renameat(d->dirfd, tmp, d->dirfd, name) < 0)) {
        err = -errno;
        unlinkat(d->dirfd, tmp, 0);
    }
    if (err == 0 && dup3(tfd, d->claimfd, O_CLOEXEC) < 0)
        err = -errno;
    close(tfd);
    return err;
}

/* Is our claim still ours: the file under its name, holding the record we
 * last wrote? If not (someone of our user wrote over it, unlinked or
 * replaced it), put it right. A few system calls, at most every
 * CLAIM_AUDIT_NS, from dispatch. d->lock held. */
#define CLAIM_AUDIT_NS 100000000ull
static void claim_audit(rpal_domain *d)
{
    uint64_t now = rpal__prim_now_ns();
    if (now - d->audit_ns < CLAIM_AUDIT_NS)
        return;
    d->audit_ns = now;
    struct member_rec r;
    if (!claim_in_place(d) ||
        pread(d->claimfd, &r, sizeof r, 0) != (ssize_t)sizeof r ||
        rpal__prim_fnv1a(&r, sizeof r) != d->rec_sum)
        rpal__dom_publish(d);
}

/* Rewrite our claim record: who we are, our services, whom we share with.
 * Called with d->lock held. */
void rpal__dom_publish(rpal_domain *d)
{
    /* Not at the first (the join has just checked the name). */
    if (d->rec_sum && !claim_in_place(d))
        (void)claim_relink(d); /* else the record goes where it was */
    struct member_rec *r = calloc(1, sizeof *r);
    if (!r)
        return;
    r->magic = MEMBER_MAGIC;
    r->version = 2;
    r->slot = d->slot;
    r->pid = d->pid;
    r->uid = getuid();
    r->start = rpal__prim_self_start();
    r->pidino = rpal__prim_self_ino();
    r->pidns = rpal__prim_self_pidns();
    for (struct rpal_service *s = d->services; s && r->nservices < MEMBER_MAX_SERVICES; s = s->next)
        snprintf(r->services[r->nservices++], sizeof r->services[0], "%s", s->name);
    for (struct rpal_peer *p = d->peers; p && r->npeers < MEMBER_MAX_PEERS; p = p->next)
        if (!rpal_load_relaxed(&p->gone))
            r->peers[r->npeers++] = (uint16_t)p->info.slot;
    r->geo_slot_size = d->slot_size;
    r->geo_window = d->window;
    r->geo_nslots = d->nslots;
    d->rec_sum = rpal__prim_fnv1a(r, sizeof *r);
    if (pwrite(d->claimfd, r, sizeof *r, 0) != (ssize_t)sizeof *r) {
        /* A torn record must read as invalid; not by truncating, which
         * would drop the counters' table behind it. */
        uint64_t zero = 0;
        (void)!pwrite(d->claimfd, &zero, sizeof zero, 0);
    }
    free(r);
}

/* Read the claim record of SLOT in the domain directory DIRFD; 0 and *REC
 * if the slot is held by a live member with a valid record. */
int rpal__dom_read_member(int dirfd, unsigned slot, struct member_rec *rec)
{
    char name[CLAIM_NAME_MAX];
    int fd = claim_open(dirfd, slot, name);
    if (fd < 0)
        return fd;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        err = -EBADMSG;
    else if (!rpal__dom_claim_locked(fd))
        err = -ESRCH;
    else if (pread(fd, rec, sizeof *rec, 0) != (ssize_t)sizeof *rec)
        err = -EBADMSG;
    close(fd);
    return err < 0 ? err : rpal__dom_member_validate(rec, slot);
}

/* 1 if the member of REC lives in another pid namespace than ours. */
static int rec_other_pidns(const struct member_rec *rec)
{
    return rec->pidns && rec->pidns != rpal__prim_self_pidns();
}

int rpal__dom_member_validate(struct member_rec *rec, unsigned slot)
{
    /* Written by another process: checked before use (nothing read from a peer is trusted). */
    if (rec->magic != MEMBER_MAGIC || rec->version != 2 || rec->slot != slot ||
        rec->nservices > MEMBER_MAX_SERVICES || rec->npeers > MEMBER_MAX_PEERS)
        return -EBADMSG;
    /* The names and slots go on to `rpal ls`, a terminal and JSON: a record
     * with a name that breaks the naming rules (control characters, escape
     * sequences) or a slot that cannot exist is not a record. */
    for (unsigned i = 0; i < rec->nservices; i++) {
        rec->services[i][sizeof rec->services[i] - 1] = 0;
        if (rpal__dom_component_validate(rec->services[i]) < 0)
            return -EBADMSG;
    }
    for (unsigned i = 0; i < rec->npeers; i++)
        if (rec->peers[i] >= DOM_MAX_SLOTS)
            return -EBADMSG;
    return 0;
}

/* ---- join and leave ---- */

static void unreserve(rpal_domain *d)
{
    munmap((void *)(uintptr_t)d->window, (size_t)d->nslots * d->slot_size);
}

static void atfork_child(void)
{
    /* The slot is not inherited (MADV_DONTFORK): nothing in the child may
     * allocate from it or act for the parent's membership. Its copies of
     * the parent's descriptors are closed too: the claim's OFD lock, the
     * peers' connections and the listening sockets belong to open file
     * descriptions that a live child would otherwise keep alive after the
     * parent died or released (close(), unlike shutdown(), leaves the
     * parent's own use of them untouched). */
    rpal__heap_set_current(NULL);
    rpal_domain *d = rpal_load_relaxed(&g_dom);
    rpal_store_relaxed(&g_dom, NULL);
    if (!d)
        return;
    close(d->claimfd);
    if (d->pinfd >= 0)
        close(d->pinfd);
    close(d->memfd);
    close(d->growfd);
    close(d->epfd);
    close(d->dirfd);
    /* Nothing is mapped there in the child (MADV_DONTFORK): a no-op for
     * Linux, but an emulator that keeps its own map of the guest's memory
     * and ignores MADV_DONTFORK (qemu-user) would otherwise refuse the
     * child's own join (-EADDRINUSE). */
    unreserve(d);
    /* Key allocations are per process and a child starts with a copy of
     * the parent's: give them back, or a child that joins on its own could
     * find every key taken. */
    for (int i = 0; i < DOM_PKEYS; i++)
        if (d->pkeys[i] >= 0)
            pkey_free(d->pkeys[i]);
    if (d->have_lockkey)
        pkey_free(d->lockkey);
    for (int i = 0; i < DOM_LAYERS; i++)
        if (d->layers[i])
            d->layers[i]->fork_child(d);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

static rpal_domain *dom_new(const char *name)
{
    rpal_domain *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->dirfd = d->claimfd = d->memfd = d->growfd = d->epfd = -1;
    d->pinfd = -1;
    d->pid = getpid();
    snprintf(d->name, sizeof d->name, "%s", name);
    pthread_mutex_init(&d->lock, NULL);
    for (int i = 0; i < DOM_PKEYS; i++)
        d->pkeys[i] = -1;
    return d;
}

/* The descriptor peers get (d->memfd): the slot's file reopened read-only,
 * so that a peer can neither grow it (ftruncate, fallocate) nor add seals,
 * which need a writable descriptor; and the file made 0400, so that a peer
 * of another user cannot reopen it for writing through /proc/self/fd (the
 * kernel checks the file's mode there). Root can, and a peer of our own
 * user can chmod it back (it owns the file): docs/hardening.md. */
static int slot_peer_fd(rpal_domain *d)
{
    char proc[PRIM_FD_PATH];
    rpal__prim_fd_path(proc, d->growfd);
    d->memfd = open(proc, O_RDONLY | O_CLOEXEC);
    if (d->memfd < 0 || fchmod(d->growfd, 0400) < 0)
        return -errno;
    return 0;
}

/* Our slot: a memfd mapped writable at the slot's address, then sealed, so
 * that after the seals nobody, the owner included, can make a new writable
 * mapping, write(), shrink it or change its seals, while this first mapping
 * stays writable (peers map it read-only). The file is not the slot's size:
 * it covers the header and grows with the heap (rpal__heap_set_file), so
 * that peers reading pages the owner never used cannot make its memory
 * grow; F_SEAL_GROW is therefore not set, and only our read-write
 * descriptor (d->growfd, never sent) can grow it. F_SEAL_SEAL stays: a
 * process holding a writable descriptor (root) could otherwise seal it
 * against growing and starve our heap. Its header and heap are written
 * here. */
static int slot_create(rpal_domain *d)
{
    d->growfd = memfd_create("rpal-slot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    uint64_t first = SLOT_GROW_STEP < d->slot_size ? SLOT_GROW_STEP : d->slot_size;
    if (d->growfd < 0 || ftruncate(d->growfd, (off_t)first) < 0)
        return -errno;
    void *slot = mmap((void *)(uintptr_t)rpal__dom_slot_addr(d, d->slot), d->slot_size,
                      PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, d->growfd, 0);
    if (slot == MAP_FAILED)
        return -errno;
    madvise(slot, d->slot_size, MADV_DONTFORK);
    RPAL_VG_ABSENT((char *)slot + first, d->slot_size - first);
    if (fcntl(d->growfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0)
        return -errno;
    int err = slot_peer_fd(d);
    if (err < 0)
        return err;
    struct slot_hdr *h = slot;
    h->magic = SLOT_MAGIC;
    h->slot = d->slot;
    h->pid = d->pid;
    err = rpal__heap_create((char *)slot + SLOT_HDR_SIZE, d->slot_size - SLOT_HDR_SIZE, &d->heap);
    if (err == 0)
        rpal__heap_set_file(d->heap, d->growfd, SLOT_HDR_SIZE);
    return err;
}

/* Undo a join that failed after dom_new (RESERVED: the window is). */
static void join_undo(rpal_domain *d, int reserved)
{
    if (d->heap)
        rpal__heap_destroy(d->heap);
    if (reserved)
        unreserve(d);
    if (d->epfd >= 0)
        close(d->epfd);
    if (d->memfd >= 0)
        close(d->memfd);
    if (d->growfd >= 0)
        close(d->growfd);
    if (d->claimfd >= 0) {
        claim_unlink(d); /* under our lock: see leave */
        close(d->claimfd); /* drops the lock */
    }
    if (d->pinfd >= 0)
        close(d->pinfd);
    if (d->dirfd >= 0)
        close(d->dirfd);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* Open the domain NAME, reserve its window and claim a slot in it. */
static int join_steps(rpal_domain *d, uint64_t want, int *reserved)
{
    struct dom_meta m;
    int err = dom_open_dir(d->name, want, &d->dirfd, &m);
    if (err < 0)
        return err;
    d->slot_size = m.slot_size;
    d->nslots = m.nslots;
    d->window = m.window;
    /* The whole window, PROT_NONE, so that nothing else of ours lands where
     * a peer's slot will be mapped. */
    err = rpal__prim_map_fixed(d->window, (size_t)d->nslots * d->slot_size, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (err < 0)
        return err;
    *reserved = 1;
    madvise((void *)(uintptr_t)d->window, (size_t)d->nslots * d->slot_size, MADV_DONTFORK);
    if ((err = dom_claim_pinned(d)) < 0 || (err = slot_create(d)) < 0)
        return err;
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    return d->epfd < 0 ? -errno : 0;
}

int rpal_domain_join(const char *name, const struct rpal_domain_opts *opts,
                     rpal_domain **out)
{
    if (!name)
        name = RPAL_DEFAULT_DOMAIN;
    int err = rpal__dom_component_validate(name);
    if (err < 0)
        return err;
    uint64_t want = opts ? opts->slot_size : 0;
    if (!out || (want && !slot_size_valid(want)))
        return -EINVAL;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_atfork);

    pthread_mutex_lock(&g_lock);
    rpal_domain *d = NULL;
    int reserved = 0;
    if (rpal_load_relaxed(&g_dom))
        err = -EBUSY;
    else if (!(d = dom_new(name)))
        err = -ENOMEM;
    else if ((err = join_steps(d, want, &reserved)) < 0)
        join_undo(d, reserved);
    if (err < 0) {
        pthread_mutex_unlock(&g_lock);
        return err;
    }
    pthread_mutex_lock(&d->lock);
    rpal__dom_publish(d);
    pthread_mutex_unlock(&d->lock);
    rpal__heap_set_current(d->heap);
    rpal_store_relaxed(&g_dom, d);
    pthread_mutex_unlock(&g_lock);
    *out = d;
    return 0;
}

int rpal__dom_member_slot(rpal_domain *d, pid_t pid, unsigned *slot)
{
    return rpal__dom_member_find(d, pid, 0, slot, NULL);
}

int rpal__dom_rec_is(const struct member_rec *rec, pid_t pid, uint64_t ino)
{
    /* A pidfs inode is never reused while the machine runs and is the same
     * in every namespace: where both are known, it alone decides. */
    if (ino && rec->pidino)
        return ino == rec->pidino;
    /* Otherwise a pid (a kernel before 6.9), which means nothing outside the
     * namespace it was recorded in: pid 7 there is not our pid 7. */
    uint64_t ns = rpal__prim_self_pidns();
    if (rec->pidns && ns && rec->pidns != ns)
        return 0;
    return pid > 0 && rec->pid == pid;
}

int rpal__dom_member_find(rpal_domain *d, pid_t pid, uint64_t ino, unsigned *slot,
                          pid_t *recpid)
{
    struct member_rec *rec = malloc(sizeof *rec);
    if (!rec)
        return -ENOMEM;
    int err = -ESRCH;
    /* rpal__dom_read_member checks that the claim is held: a live member.
     * A match by pid is checked against the start time too (pids are
     * reused); an inode is not reused, and needs no /proc. */
    for (unsigned s = 0; s < d->nslots && err == -ESRCH; s++)
        if (s != d->slot && rpal__dom_read_member(d->dirfd, s, rec) == 0 &&
            rpal__dom_rec_is(rec, pid, ino) &&
            ((ino && rec->pidino) || rpal__prim_proc_alive(pid, rec->start))) {
            *slot = s;
            if (recpid)
                *recpid = rec->pid;
            err = 0;
        }
    free(rec);
    return err;
}

int rpal__dom_check(const rpal_domain *d)
{
    if (!d)
        return -EINVAL;
    /* A forked child holds a copy of the handle but not the membership:
     * the fork handler cleared g_dom there. (Not getpid(): that is a system
     * call, and this check sits on the call path.) */
    return d == rpal_load_relaxed(&g_dom) ? 0 : -ECHILD;
}

/* Free the retired watches that no running dispatch can still hold an event
 * of: those retired after the oldest running dispatch began its wait (a
 * dispatch whose wait began later cannot see a descriptor already removed
 * from the epoll set). d->lock held. */
static void retired_sweep(rpal_domain *d)
{
    uint64_t oldest = UINT64_MAX;
    for (struct dispatch_rec *r = d->dispatching; r; r = r->next)
        if (r->start < oldest)
            oldest = r->start;
    struct watch **pp = &d->retired;
    while (*pp) {
        struct watch *w = *pp;
        if (w->retired_at <= oldest) {
            *pp = w->next_retired;
            free(w->obj);
        } else {
            pp = &w->next_retired;
        }
    }
}

void rpal__dom_watch_retire(rpal_domain *d, struct watch *w)
{
    w->retired = 1;
    w->retired_at = ++d->nretired;
    w->next_retired = d->retired;
    d->retired = w;
    retired_sweep(d);
}

void rpal__dom_layer_attach(rpal_domain *d, int which, const struct dom_layer *l)
{
    d->layers[which] = l;
}

static void dispatch_end(rpal_domain *d, struct dispatch_rec *me)
{
    for (struct dispatch_rec **pp = &d->dispatching; *pp; pp = &(*pp)->next)
        if (*pp == me) {
            *pp = me->next;
            break;
        }
    retired_sweep(d);
}

int rpal_domain_leave(rpal_domain *d)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    for (int i = 0; i < DOM_LAYERS; i++)
        if (d->layers[i] && (err = d->layers[i]->leave(d)) < 0)
            return err;
    /* No dispatch runs now (rpal_domain_leave(3)): nothing can hold an
     * event of a retired watch. */
    pthread_mutex_lock(&d->lock);
    retired_sweep(d);
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_lock(&g_lock);
    rpal__heap_set_current(NULL);
    rpal__heap_destroy(d->heap);
    unreserve(d);
    for (int i = 0; i < DOM_PKEYS; i++)
        if (d->pkeys[i] >= 0)
            pkey_free(d->pkeys[i]);
    if (d->lockkey >= 0 && d->have_lockkey)
        pkey_free(d->lockkey);
    /* Unlinked while we still hold its lock: a joiner that opened it just
     * before finds it gone from the name after locking, and moves on. */
    claim_unlink(d);
    close(d->claimfd);
    if (d->pinfd >= 0)
        close(d->pinfd); /* after the claim: a joiner then finds both free */
    close(d->memfd);
    close(d->growfd);
    close(d->epfd);
    close(d->dirfd);
    pthread_mutex_destroy(&d->lock);
    rpal_store_relaxed(&g_dom, NULL);
    pthread_mutex_unlock(&g_lock);
    free(d);
    return 0;
}

int rpal_domain_slot(const rpal_domain *d, unsigned *index, void **base,
                     uint64_t *size)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if (index)
        *index = d->slot;
    if (base)
        *base = (void *)(uintptr_t)rpal__dom_slot_addr(d, d->slot);
    if (size)
        *size = d->slot_size;
    return 0;
}

int rpal_domain_fd(const rpal_domain *d)
{
    int err = rpal__dom_check(d);
    return err < 0 ? err : d->epfd;
}

/* ---- dispatch ---- */

int rpal_domain_dispatch(rpal_domain *d, struct rpal_event *ev, int max,
                         int timeout_ms)
{
    return rpal__dom_dispatch(d, ev, max, timeout_ms, 0);
}

int rpal__dom_dispatch(rpal_domain *d, struct rpal_event *ev, int max, int timeout_ms, int any)
{
    int err = rpal__dom_check(d);
    if (err < 0)
        return err;
    if (!ev || max <= 0)
        return -EINVAL;
    uint64_t deadline = rpal__prim_deadline(timeout_ms);
    int n = 0;
    /* Listed while we wait, so that an object another thread frees
     * meanwhile (a receiver reaping its dead channels) outlives the events
     * this epoll_wait may return for it. */
    struct dispatch_rec me;
    pthread_mutex_lock(&d->lock);
    me.start = d->nretired;
    me.next = d->dispatching;
    d->dispatching = &me;
    pthread_mutex_unlock(&d->lock);
    for (;;) {
        struct epoll_event ee[32];
        int wait = rpal__prim_ms_left(deadline);
        int want = max - n < 32 ? max - n : 32;
        int k = epoll_wait(d->epfd, ee, want, n ? 0 : wait);
        int saved = errno;
        pthread_mutex_lock(&d->lock);
        /* Before the events: a requester woke us, and is about to read our
         * record (issue 16, attack 7). */
        claim_audit(d);
        if (k < 0 && saved == EINTR && !any) {
            pthread_mutex_unlock(&d->lock);
            continue;
        }
        for (int i = 0; i < k; i++) {
            struct watch *w = ee[i].data.ptr;
            if (!w->retired && w->handle(d, w, ee[i].events, &ev[n]) > 0)
                n++;
        }
        int done = k < 0 || n >= max || (k == 0 && (n || wait == 0)) || (n && k < want) ||
                   (any && k > 0);
        if (done) {
            dispatch_end(d, &me);
        } else {
            me.start = d->nretired; /* the next wait begins after these */
            retired_sweep(d);
        }
        pthread_mutex_unlock(&d->lock);
        if (k < 0)
            return n ? n : -saved;
        if (done)
            return n;
    }
}

/* ---- protection keys ---- */

unsigned rpal_capabilities(void)
{
    static _Atomic int cached = -1;
    int c = rpal_load_relaxed(&cached);
    if (c < 0) {
        /* The CPU (x86-64 protection keys, enabled by the kernel: the
         * windows write PKRU) and the kernel's pkey calls together:
         * pkey_alloc fails without either (ENOSPC or EINVAL or ENOSYS). */
        int k = rpal__prim_pku_cpu() ? pkey_alloc(0, PKEY_DISABLE_ACCESS) : -1;
        c = k >= 0 ? (int)RPAL_CAP_PKU : 0;
        if (k >= 0)
            pkey_free(k);
        rpal_store_relaxed(&cached, c);
    }
    return (unsigned)c;
}

/* ---- listing and garbage collection ---- */

/* qsort's comparator for the names' array (char[COMPONENT_MAX + 1] each): strcmp cast to
 * a comparator would be called through the wrong type. */
static int name_cmp(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* Call FN(domain dirfd, domain name, meta) for every domain directory. */
static int dom_walk(int (*fn)(int dirfd, const char *name, const struct dom_meta *m,
                              void *arg),
                    int (*bad)(int dirfd, const char *name, void *arg), void *arg)
{
    int nsfd = rpal__ns_open(0);
    if (nsfd < 0)
        return nsfd == -ENOENT ? 0 : nsfd;
    int dfd = rpal__prim_open_beneath(nsfd, ".domains", O_RDONLY | O_DIRECTORY, 0);
    close(nsfd);
    if (dfd < 0)
        return dfd == -ENOENT || dfd == -EACCES ? 0 : dfd;
    DIR *dir = fdopendir(dfd);
    if (!dir) {
        close(dfd);
        return -errno;
    }
    /* Sorted, so that listings are stable. */
    char (*names)[COMPONENT_MAX + 1] = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (rpal__dom_component_validate(de->d_name) < 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            void *nn = realloc(names, cap * sizeof *names);
            if (!nn)
                break;
            names = nn;
        }
        snprintf(names[n++], sizeof names[0], "%.*s", COMPONENT_MAX, de->d_name);
    }
    if (n)
        qsort(names, n, sizeof *names, name_cmp);
    int err = 0;
    for (size_t i = 0; i < n && !err; i++) {
        int fd = rpal__prim_open_beneath(dirfd(dir), names[i], O_PATH | O_DIRECTORY, 0);
        if (fd < 0)
            continue;
        struct dom_meta m;
        int mfd = rpal__prim_open_beneath(fd, "meta", O_RDONLY | O_NONBLOCK, 0);
        if (mfd >= 0 && pread(mfd, &m, sizeof m, 0) == (ssize_t)sizeof m &&
            rpal__dom_meta_validate(&m) == 0)
            err = fn(fd, names[i], &m, arg);
        else if (mfd >= 0 && bad)
            err = bad(fd, names[i], arg);
        if (mfd >= 0)
            close(mfd);
        close(fd);
    }
    free(names);
    closedir(dir);
    return err;
}

struct foreach_arg {
    int (*fn)(const struct rpal_member_info *, void *);
    void *arg;
};

static int foreach_domain(int dirfd, const char *name, const struct dom_meta *m, void *arg)
{
    struct foreach_arg *fa = arg;
    struct member_rec *rec = malloc(sizeof *rec);
    struct rpal_member_info *info = malloc(sizeof *info);
    int err = rec && info ? 0 : -ENOMEM;
    for (unsigned s = 0; s < m->nslots && !err; s++) {
        if (rpal__dom_read_member(dirfd, s, rec) < 0)
            continue;
        memset(info, 0, sizeof *info);
        snprintf(info->domain, sizeof info->domain, "%s", name);
        info->slot = s;
        info->slot_size = m->slot_size;
        info->base = m->window + (uint64_t)s * m->slot_size;
        info->pid = rec->pid;
        info->other_pidns = rec_other_pidns(rec);
        info->pidns = rec->pidns;
        info->uid = rec->uid;
        info->nservices = rec->nservices;
        for (unsigned i = 0; i < rec->nservices; i++)
            memcpy(info->services[i], rec->services[i], sizeof info->services[i]);
        info->npeers = rec->npeers;
        for (unsigned i = 0; i < rec->npeers; i++)
            info->peers[i] = rec->peers[i];
        err = fa->fn(info, fa->arg);
    }
    free(rec);
    free(info);
    return err;
}

/* ---- counters of channels and connections, in the claim file ---- */

int rpal__dom_stats_open(rpal_domain *d, struct wt_stats *st, int locked)
{
    st->idx = -1;
    if (!locked)
        pthread_mutex_lock(&d->lock);
    for (unsigned w = 0; w < STATS_MAX / 64 && st->idx < 0; w++)
        if (~d->stats_used[w]) {
            unsigned b = (unsigned)__builtin_ctzll(~d->stats_used[w]);
            d->stats_used[w] |= 1ull << b;
            st->idx = (int)(w * 64 + b);
        }
    if (!locked)
        pthread_mutex_unlock(&d->lock);
    if (st->idx < 0)
        return -ENOSPC; /* counted, not published */
    rpal__dom_stats_flush(d, st);
    return 0;
}

void rpal__dom_stats_flush(rpal_domain *d, struct wt_stats *st)
{
    st->flushed_ns = rpal__prim_now_ns();
    if (st->idx < 0 || rpal__dom_check(d) < 0)
        return;
    struct stats_rec r = {.magic = STATS_MAGIC, .kind = st->kind, .peer_slot = st->peer_slot,
                          .peer_pid = st->peer_pid, .fd = st->fd, .budget_ns = st->budget_ns,
                          .state = st->state};
    snprintf(r.name, sizeof r.name, "%s", st->name);
    const uint64_t c[STATS_NCOUNT] = {st->msgs_out, st->bytes_out, st->msgs_in, st->bytes_in,
                                      st->wakes, st->wakes_skipped, st->waits, st->sleeps,
                                      st->spin_hits, st->yields, st->spin_ns};
    memcpy(r.c, c, sizeof c);
    r.check = rpal__prim_fnv1a(&r, offsetof(struct stats_rec, check));
    (void)!pwrite(d->claimfd, &r, sizeof r, STATS_OFF + (off_t)st->idx * sizeof r);
}

void rpal__dom_stats_close(rpal_domain *d, struct wt_stats *st, int locked)
{
    if (st->idx < 0 || rpal__dom_check(d) < 0)
        return;
    uint64_t zero = 0;
    (void)!pwrite(d->claimfd, &zero, sizeof zero, STATS_OFF + (off_t)st->idx * sizeof(struct stats_rec));
    if (!locked)
        pthread_mutex_lock(&d->lock);
    d->stats_used[st->idx / 64] &= ~(1ull << (st->idx % 64));
    if (!locked)
        pthread_mutex_unlock(&d->lock);
    st->idx = -1;
}

int rpal__dom_stats_validate(struct stats_rec *r)
{
    /* Another process's word, not trusted: checked, names made safe to
     * print. */
    if (r->magic != STATS_MAGIC || r->check != rpal__prim_fnv1a(r, offsetof(struct stats_rec, check)) ||
        r->kind < RPAL_STATS_CALLER || r->kind > RPAL_STATS_CONN || r->state > 3)
        return -EBADMSG;
    r->name[sizeof r->name - 1] = 0;
    if (r->name[0] && rpal__dom_component_validate(r->name) < 0)
        return -EBADMSG;
    return 0;
}

struct stats_arg {
    int (*fn)(const struct rpal_stats_entry *, void *);
    void *arg;
};


/* E's peer as the reader can name it: the writer's word when it could name
 * the peer in the writer's pid namespace and that is ours; otherwise (a
 * peer in another container: the writer saw pid 0) the pid from the peer's
 * own claim record, in its namespace, marked. PREC is scratch space. */
static void stats_peer(int dirfd, const struct member_rec *rec, const struct stats_rec *r,
                       struct member_rec *prec, struct rpal_stats_entry *e)
{
    if (r->peer_pid && !rec_other_pidns(rec))
        return;
    if (rpal__dom_read_member(dirfd, r->peer_slot, prec) == 0) {
        e->peer_pid = prec->pid;
        e->peer_other_pidns = rec_other_pidns(prec);
    }
}

static int stats_domain(int dirfd, const char *name, const struct dom_meta *m, void *arg)
{
    struct stats_arg *sa = arg;
    struct member_rec *rec = malloc(2 * sizeof *rec);
    struct stats_rec *tab = malloc(STATS_MAX * sizeof *tab);
    int err = rec && tab ? 0 : -ENOMEM;
    for (unsigned s = 0; s < m->nslots && !err; s++) {
        char file[CLAIM_NAME_MAX];
        if (rpal__dom_read_member(dirfd, s, rec) < 0)
            continue;
        int fd = claim_open(dirfd, s, file);
        if (fd < 0)
            continue;
        ssize_t n = pread(fd, tab, STATS_MAX * sizeof *tab, STATS_OFF);
        close(fd);
        for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof *tab && !err; i++) {
            struct stats_rec *r = &tab[i];
            if (rpal__dom_stats_validate(r) < 0)
                continue;
            struct rpal_stats_entry e = {.slot = s, .pid = rec->pid, .kind = (int)r->kind,
                                         .peer_slot = r->peer_slot, .peer_pid = r->peer_pid,
                                         .fd = r->fd, .state = r->state,
                                         .other_pidns = rec_other_pidns(rec)};
            stats_peer(dirfd, rec, r, rec + 1, &e);
            snprintf(e.domain, sizeof e.domain, "%s", name);
            snprintf(e.service, sizeof e.service, "%s", r->name);
            uint64_t *c = r->c;
            e.s = (struct rpal_stats){c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8],
                                      c[9], c[10], r->budget_ns, 0};
            err = sa->fn(&e, sa->arg);
        }
    }
    free(rec);
    free(tab);
    return err;
}

int rpal_stats_foreach(int (*fn)(const struct rpal_stats_entry *e, void *arg), void *arg)
{
    if (!fn)
        return -EINVAL;
    struct stats_arg sa = {fn, arg};
    return dom_walk(stats_domain, NULL, &sa);
}

int rpal_domain_foreach(int (*fn)(const struct rpal_member_info *, void *), void *arg)
{
    if (!fn)
        return -EINVAL;
    struct foreach_arg fa = {fn, arg};
    return dom_walk(foreach_domain, NULL, &fa);
}

struct gc_arg {
    void (*fn)(const char *, const char *, void *);
    void *arg;
    int removed;
};

/* Report the live members of the domain DIRFD whose claim is not a live
 * record (unlinked, replaced or written over by a process of their user,
 * issue 16): their pin is held. Each puts its claim right at its next
 * dispatch; nobody else can, since only it knows its record. (A member
 * between its pin and its first record, during its join, is reported too.) */
static void gc_pins(int dirfd, const char *name, const struct dom_meta *m, struct gc_arg *g)
{
    if (!pins_used(dirfd))
        return;
    int pfd = rpal__prim_open_beneath(dirfd, ".", O_RDONLY | O_DIRECTORY, 0);
    struct member_rec *rec = pfd < 0 ? NULL : malloc(sizeof *rec);
    for (unsigned s = 0; rec && g->fn && s < m->nslots; s++) {
        if (!pin_held(pfd, s) ||
            rpal__dom_read_member(dirfd, s, rec) == 0)
            continue;
        char what[160];
        snprintf(what, sizeof what, "%.64s/slot.%u", name, s);
        g->fn("claim", what, g->arg);
    }
    free(rec);
    if (pfd >= 0)
        close(pfd);
}

static int gc_domain(int dirfd, const char *name, const struct dom_meta *m, void *arg)
{
    struct gc_arg *g = arg;
    gc_pins(dirfd, name, m, g);
    DIR *dir;
    int fd = rpal__prim_open_beneath(dirfd, ".", O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0 || !(dir = fdopendir(fd))) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    struct dirent *de;
    while ((de = readdir(dir))) {
        char what[160];
        if (!strncmp(de->d_name, "slot.", 5)) {
            int cfd = rpal__prim_open_beneath(dirfd, de->d_name, O_RDWR | O_NONBLOCK, 0);
            if (cfd < 0)
                continue;
            /* Take the claim's lock ourselves while unlinking, so that no
             * joiner can be holding it (joiners re-check the name after
             * locking). */
            struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
            if (fcntl(cfd, F_OFD_SETLK, &fl) == 0 && unlinkat(dirfd, de->d_name, 0) == 0) {
                snprintf(what, sizeof what, "%.64s/%.80s", name, de->d_name);
                g->removed++;
                if (g->fn)
                    g->fn("member", what, g->arg);
            }
            close(cfd);
        } else if (!strncmp(de->d_name, "svc.", 4)) {
            struct stat st;
            if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode))
                continue;
            if (strlen(de->d_name) > strlen("svc.") + COMPONENT_MAX)
                continue;
            int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            /* A socket nobody listens on refuses: its service is dead. (Not
             * connect() by name: a link swapped in would be followed.) */
            int dead = c >= 0 && rpal__prim_connect_beneath(dirfd, de->d_name, c) == -ECONNREFUSED;
            if (c >= 0)
                close(c);
            if (dead && unlinkat(dirfd, de->d_name, 0) == 0) {
                snprintf(what, sizeof what, "%.64s/%.80s", name, de->d_name + 4);
                g->removed++;
                if (g->fn)
                    g->fn("service", what, g->arg);
            }
        }
    }
    closedir(dir);
    return 0;
}

/* A domain whose meta is corrupt: rebuilt from its live members' records
 * ("meta-rebuilt"), or removed if none is alive ("meta"); then collected
 * like the others. */
static int gc_meta(int dirfd, const char *name, void *arg)
{
    struct gc_arg *g = arg;
    if (meta_repair(dirfd) <= 0)
        return 0; /* members alive, none of which says its geometry */
    struct dom_meta m;
    int mfd = rpal__prim_open_beneath(dirfd, "meta", O_RDONLY | O_NONBLOCK, 0);
    int ok = mfd >= 0 && pread(mfd, &m, sizeof m, 0) == (ssize_t)sizeof m &&
             rpal__dom_meta_validate(&m) == 0;
    if (mfd >= 0)
        close(mfd);
    g->removed++;
    if (g->fn)
        g->fn(ok ? "meta-rebuilt" : "meta", name, g->arg);
    return ok ? gc_domain(dirfd, name, &m, arg) : 0;
}

int rpal_gc(void (*fn)(const char *kind, const char *name, void *arg), void *arg)
{
    int n = rpal__region_gc(fn, arg);
    if (n < 0)
        return n;
    struct gc_arg g = {fn, arg, 0};
    int err = dom_walk(gc_domain, gc_meta, &g);
    return err < 0 ? err : n + g.removed;
}
