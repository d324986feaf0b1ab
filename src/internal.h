/* Internal declarations shared by the layers of librpal. Not installed. */
#ifndef RPAL_INTERNAL_H
#define RPAL_INTERNAL_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RPAL_HIDDEN __attribute__((visibility("hidden")))

/* The address window that every rpal process agrees on. Nothing outside it is
 * ever mapped by rpal. It sits above AddressSanitizer's shadow memory
 * (which ends below 0x100000000000 on x86-64) and far below the area where
 * the kernel places ordinary mmap()s and stacks (0x7f..). The first half
 * holds named regions; the second half is kept for domains. */
#if defined(__SANITIZE_THREAD__)
#define RPAL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RPAL_TSAN 1
#endif
#endif

#if !defined(RPAL_TSAN) && !defined(RPAL_VALGRIND)
#define RPAL_WINDOW_BASE        0x200000000000ull
#define RPAL_REGION_WINDOW_SIZE 0x100000000000ull /* 16 TiB */
#elif defined(__x86_64__) || !defined(RPAL_TSAN)
/* The small window, from 128 GiB to 512 GiB: 128 GiB of regions, then 256
 * GiB of domain (64 default slots of 4 GiB, see RPAL_DEFAULT_SLOT_SIZE).
 * - ThreadSanitizer (`make TSAN=1`) keeps its shadow at 0x010000000000 to
 *   0x200000000000 and its meta shadow at 0x300000000000 to 0x340000000000
 *   (gcc 12's libtsan2 and clang 14 alike), and handles only accesses to its
 *   application ranges: 0x1000-0x8000000000, 0x550000000000-0x568000000000
 *   (PIE binary, brk), 0x7b0000000000-0x7c0000000000 (its heap) and
 *   0x7e8000000000-0x800000000000 (mmap, stacks). The usual window lies in
 *   the shadow; this one in the low range, which a PIE process leaves empty.
 * - valgrind's memcheck (`make valgrind`, -DRPAL_VALGRIND) keeps its own
 *   state per 64 KiB above 128 GiB: reserving the 16 TiB domain window takes
 *   it minutes and gigabytes, 256 GiB under two seconds. Below 128 GiB is
 *   where valgrind puts the client's and its own mappings.
 * A process built so cannot share regions or domains with a normally built
 * one: the region header's base and the domain's recorded window do not
 * pass the other build's checks. */
#define RPAL_WINDOW_BASE        0x2000000000ull
#define RPAL_REGION_WINDOW_SIZE 0x2000000000ull /* 128 GiB */
#else
#error "ThreadSanitizer build: choose a window inside TSan's application ranges for this architecture"
#endif

/* Granule of region placement: data starts on a granule boundary and the
 * granule before it holds the region's header page (the rest is a guard). */
#define RPAL_REGION_GRANULE (2ull << 20)
#define RPAL_PAGE 4096ull

/* The bytes of one name component (a domain's or a service's name, one
 * step of a region's path: rpal.h, RPAL_NAME_MAX), without its NUL. */
#define COMPONENT_MAX 64

#include "prim.h" /* the OS contract (src/prim.c) */

/* ---- layout: the objects inside a region (src/layout.c) ---- */

/* Bytes of the header granule that every attacher maps read-only at
 * base - granule: the header page, the layout control page and the two
 * copies of the layout table. */
#define REGION_HDR_MAP (128ull << 10)

struct lay;
struct rpal_region;
struct rpal_region_object;
/* Write the control page and the first layout table of a new region file:
 * nothing (EMPTY) or one read-write anonymous object over SIZE bytes. */
RPAL_HIDDEN int rpal__lay_init(int fd, uint64_t size, int empty);
/* Open (with CREATE_MODE != 0, create if missing) the lock file of the
 * region NAME (relative to the namespace root NSFD) whose inode is INO:
 * `.LEAF.INO.lock` beside it, which carries the sharers' OFD locks and the
 * memory of the anonymous objects made by rpal_region_map. RDWR: open it
 * read-write if its mode allows (else read-only). */
RPAL_HIDDEN int rpal__lay_lock_open(int nsfd, const char *name, uint64_t ino,
                              unsigned create_mode, int rdwr);
RPAL_HIDDEN void rpal__lay_lock_unlink(int dirfd, const char *leaf, uint64_t ino);
/* Follow the layout of the region file FD (header area and data already
 * mapped at BASE - GRANULE and BASE): apply the current layout, register
 * as a sharer on the lock file LKFD (taken over, closed on failure) and
 * hand the region to this process's agent thread. Returns the number of
 * objects that could not be mapped (>= 0) or a negative errno. */
RPAL_HIDDEN int rpal__lay_attach(int fd, int lkfd, uint64_t base, uint64_t size,
                           uint64_t granule, int rdonly, struct lay **out);
RPAL_HIDDEN void rpal__lay_detach(struct lay *l);
/* The layout of the region file FD of SIZE data bytes, for listing. */
RPAL_HIDDEN int rpal__lay_read(int fd, uint64_t size, uint32_t *gen,
                         struct rpal_region_object *objs, unsigned max);
/* A change of the layout, as rpal_region_map/protect/unmap ask for it:
 * OP (OP_MAP, OP_PROTECT, OP_UNMAP) over [OFF, OFF + LEN) with PROT; for a
 * map, FD (-1: anonymous memory) from FOFF. SIDE is the layout's own: where
 * a new anonymous object's memory lies in the side store (0 from callers). */
struct lay_op {
    int op;
    uint64_t off, len;
    int prot;
    int fd;
    uint64_t foff;
    uint64_t side;
};
struct rpal_region_change;
/* Apply OP to the layout L for every sharer (the calls' contract is
 * rpal_region_map(3)): 0 if every live sharer has it on return, the number
 * of sharers detached (which may not have it), or a negative errno, and
 * nothing changed. CHG (may be NULL) gives the timeout and gets the counts. */
RPAL_HIDDEN int rpal__lay_change(struct lay *l, const struct lay_op *op,
                           struct rpal_region_change *chg);

/* ---- region layer services used by the layers below it ---- */

/* 0 if NAME follows the naming rules (see RPAL_NAME_MAX), else -EINVAL or
 * -ENAMETOOLONG. */
RPAL_HIDDEN int rpal__ns_name_validate(const char *name);
/* O_PATH descriptor of the namespace root; CREATE makes it if missing. */
RPAL_HIDDEN int rpal__ns_open(int create);
/* ---- huge regions: the hugetlbfs data file (src/huge.c) ---- */

/* Where the data file is, in the header page of a huge region's file. */
#define HUGE_EXT_OFF 2048
#define HUGE_DIR_MAX 256 /* longest hugetlbfs directory path, with the NUL */
struct huge_ext {
    uint64_t magic;
    uint64_t page_size;  /* RPAL_HUGE_PAGE */
    uint64_t dev, ino;   /* the data file */
    uint64_t hdr_check;  /* the header's check: ties the two together */
    char path[448];      /* absolute path of the data file */
    uint64_t check;      /* FNV-1a of the fields above */
};
/* 0 if a hugetlbfs is there with SIZE bytes of free huge pages (a hint);
 * -ENODEV or -ENOSPC otherwise. */
RPAL_HIDDEN int rpal__huge_check_avail(uint64_t size);
/* Make the data file for the header whose inode is HDR_INO in the namespace
 * NSFD: SIZE bytes, mode MODE. Fills X (but for rpal__huge_seal) and returns its
 * descriptor, or -errno. */
RPAL_HIDDEN int rpal__huge_create(int nsfd, uint64_t hdr_ino, uint64_t size,
                            unsigned mode, struct huge_ext *x);
RPAL_HIDDEN void rpal__huge_seal(struct huge_ext *x, uint64_t hdr_check);
/* Read and check the extension from the header file HFD. */
RPAL_HIDDEN int rpal__huge_read(int hfd, uint64_t hdr_check, struct huge_ext *x);
/* rpal__huge_read, then open the data file with OFLAGS and check it is the one
 * named, of SIZE bytes, owned by OWNER; its descriptor, or -errno. */
RPAL_HIDDEN int rpal__huge_open(int hfd, uint64_t hdr_check, uint64_t size,
                          uid_t owner, int oflags, struct huge_ext *x);
/* Remove the data file X names, if it is still that file. */
RPAL_HIDDEN void rpal__huge_remove(const struct huge_ext *x);
/* Remove this namespace's data files whose creator is dead and whose header
 * inode IN_USE does not know; the number removed. */
RPAL_HIDDEN int rpal__huge_gc(int nsfd, int (*in_use)(uint64_t hdr_ino, void *arg),
                        void *use_arg,
                        void (*fn)(const char *kind, const char *name, void *arg),
                        void *arg);

/* The region half of rpal_gc(): returns the number of items removed. */
RPAL_HIDDEN int rpal__region_gc(void (*fn)(const char *kind, const char *name, void *arg),
                          void *arg);

/* ---- heap: the allocator of a member's own slot (src/heap.c) ---- */

struct heap;
/* Manage [BASE, BASE+LEN) (mapped read-write, reading as zeros, touched only
 * as blocks are handed out). LEN is a multiple of 64 KiB. */
RPAL_HIDDEN int rpal__heap_create(void *base, uint64_t len, struct heap **out);
RPAL_HIDDEN void rpal__heap_destroy(struct heap *h);
RPAL_HIDDEN void *rpal__heap_malloc(struct heap *h, size_t size);
RPAL_HIDDEN void *rpal__heap_calloc(struct heap *h, size_t n, size_t size);
RPAL_HIDDEN void *rpal__heap_realloc(struct heap *h, void *p, size_t size);
/* -EINVAL for anything that is not a live block of H; H is left intact. */
RPAL_HIDDEN int rpal__heap_free(struct heap *h, void *p);
/* Walk every internal structure and check its invariants: 0 or -EUCLEAN. */
RPAL_HIDDEN int rpal__heap_check(struct heap *h);
/* H lies in the file FD from offset OFF on (a member's slot memfd, its
 * header before): the heap keeps the file as long as its high-water mark
 * (plus less than SLOT_GROW_STEP) by growing it, never shrinking. Without
 * it (FD -1: the default) the memory is the caller's affair. */
RPAL_HIDDEN void rpal__heap_set_file(struct heap *h, int fd, uint64_t off);
/* The heap behind rpal_malloc() and friends (NULL: not in a domain). */
RPAL_HIDDEN void rpal__heap_set_current(struct heap *h);

/* ---- domain and service layers (src/domain.c, src/service.c) ---- */

#include <pthread.h>
#include "rpal.h"

/* The second half of the window holds the domain's slots. */
#define DOM_WINDOW_BASE (RPAL_WINDOW_BASE + RPAL_REGION_WINDOW_SIZE)
#if !defined(RPAL_TSAN) && !defined(RPAL_VALGRIND)
#define DOM_WINDOW_SIZE 0x100000000000ull /* 16 TiB */
#else
#define DOM_WINDOW_SIZE 0x4000000000ull /* 256 GiB: see RPAL_WINDOW_BASE */
#endif
#define DOM_MAX_SLOTS   1024u
#define SLOT_HDR_SIZE   (1ull << 20) /* slot header area; the heap follows */
/* A slot's file grows with its heap in steps of this: what peers can make
 * us allocate by reading is the heap's high-water mark plus less than a
 * step (docs/heap.md, "The slot's file"). */
#define SLOT_GROW_STEP  (4ull << 20)
#define SLOT_MAGIC      0x31544f534c415052ull /* "RPALSOT1" */
#define MEMBER_MAGIC    0x314d454d4c415052ull /* "RPALMEM1" */
#define MEMBER_MAX_SERVICES 8
#define MEMBER_MAX_PEERS    256

/* memcheck's leak check at exit reads every word of every writable mapping
 * it thinks addressable: a slot's pages past its file's end each raise a
 * SIGBUS, which it catches and goes on, a million times for a 4 GiB slot
 * (20 minutes per process: the CI run that did not finish). The valgrind
 * build tells it that those pages are not there until the file reaches
 * them (slot_create, file_reach); other builds compile nothing. */
#ifdef RPAL_VALGRIND
#include <valgrind/memcheck.h>
#define RPAL_VG_ABSENT(p, n)  ((void)VALGRIND_MAKE_MEM_NOACCESS((p), (n)))
#define RPAL_VG_PRESENT(p, n) ((void)VALGRIND_MAKE_MEM_DEFINED((p), (n)))
#else
#define RPAL_VG_ABSENT(p, n)  ((void)(p), (void)(n))
#define RPAL_VG_PRESENT(p, n) ((void)(p), (void)(n))
#endif

/* The start of every slot, written by its owner. */
struct slot_hdr {
    uint64_t magic;
    uint32_t slot;
    int32_t pid;
};

/* A member's claim record (<ns>/.domains/D/slot.N), rewritten by its owner
 * only; read by `rpal ls` and by services checking a requester's claim. */
struct member_rec {
    uint64_t magic;
    uint32_t version, slot;
    int32_t pid;
    uint32_t uid;
    uint64_t start;
    uint32_t nservices, npeers;
    char services[MEMBER_MAX_SERVICES][COMPONENT_MAX + 1];
    uint16_t peers[MEMBER_MAX_PEERS];
    /* Version 2: who the member is across pid namespaces (PID is its pid
     * in its own): its pidfs inode and its pid namespace's inode, 0 where
     * the kernel cannot say (docs/containers.md). */
    uint64_t pidino, pidns;
    /* Still version 2, read by older members as before: the geometry the
     * member joined with (struct dom_meta's fields), from which a joiner
     * rebuilds a corrupt meta while members live (issue 16, attack 7). */
    uint64_t geo_slot_size, geo_window;
    uint32_t geo_nslots, geo_pad;
};

/* What an epoll event of the domain's set points at: the layer that added
 * it (peer, service, channel) gives the function that handles its events,
 * so that the domain's dispatch loop knows none of them. HANDLE runs with
 * d->lock held and returns 1 if it filled *EV for the application. */
struct watch {
    void *obj;
    int (*handle)(rpal_domain *d, struct watch *w, uint32_t events, struct rpal_event *ev);
    /* Set by rpal__dom_watch_retire(): an event fetched before the descriptor
     * left the epoll set is ignored, and OBJ is freed once no dispatch that
     * could hold such an event is still running. */
    int retired;
    uint64_t retired_at;
    struct watch *next_retired;
};

/* What a layer above the domain (peers, services) does when the domain is
 * left (free everything it added to it, or refuse with nothing undone:
 * the layers are left in order and the first refusal ends the leave) and
 * in a forked child (close the parent's descriptors it holds); attached
 * by its first use of a domain. */
enum { DOM_LAYER_SERVICE, DOM_LAYER_PEER, DOM_LAYERS };
struct dom_layer {
    int (*leave)(rpal_domain *d);
    void (*fork_child)(rpal_domain *d);
};

/* One running rpal_domain_dispatch (on its stack, listed in d->dispatching):
 * the retirement count when its epoll_wait began. */
struct dispatch_rec {
    uint64_t start;
    struct dispatch_rec *next;
};

/* The handshake messages (service.c), also used to open channels. */
#define HS_KIND_SHARE 0u
#define HS_KIND_CHAN  1u
/* Every handshake message starts with these (src/service.c, src/channel.c). */
#define HS_MAGIC 0x3153484c41505231ull /* "1RPALHS1" */
/* Version 2: the key never travels. The requester's first message (its
 * hello: kind, service, slot, a fresh nonce) carries nothing of value; the
 * service answers with a challenge (its slot, its own nonce, and a MAC
 * proving it holds the key); the requester checks the kernel's word on who
 * listens against that slot's live claim and the MAC, and only then sends
 * its request (its MAC, its slot's memfd). See docs/domains.md. */
#define HS_VERSION 2u
#define HS_NONCE 16
#define HS_MAC 32

struct hs_req {
    uint64_t magic;
    uint32_t version, slot;
    uint64_t slot_size;
    char service[COMPONENT_MAX + 1];
    uint8_t nonce[HS_NONCE]; /* the requester's, the same in hello and request */
    uint8_t mac[HS_MAC];     /* SHARE request: proves the key (hs_mac) */
    uint32_t kind;   /* HS_KIND_* */
    uint32_t depth;  /* CHAN: ring entries */
    uint64_t addr;   /* CHAN: the caller's ring, in its slot */
};

struct hs_rep {
    uint64_t magic;
    uint32_t version;
    int32_t status;
    uint32_t slot, pad;
    uint64_t slot_size;
    uint64_t addr;   /* CHAN: the service's ring, in its slot */
    uint8_t nonce[HS_NONCE]; /* challenge: the service's */
    uint8_t mac[HS_MAC];     /* challenge: proves the service holds the key */
};

struct ucred;
/* Set by the channel layer on a service that has receivers: answers a
 * HS_KIND_CHAN request from the accepted peer P on SOCK (which it keeps on
 * success). Returns 0, *ADDR and *FD (a descriptor to send with the answer,
 * or -1), or a negative errno. d->lock held. */
typedef int (*chan_accept_fn)(rpal_service *s, rpal_peer *p, int sock,
                              const struct hs_req *req, uint64_t *addr, int *fd);

struct rpal_service {
    struct watch w;
    rpal_domain *d;
    char name[COMPONENT_MAX + 1];
    int lfd;
    rpal_key key;
    rpal_policy_fn policy;
    void *arg;
    chan_accept_fn chan_accept;  /* NULL until a receiver exists */
    struct rpal_receiver *receivers; /* channel layer's, under d->lock */
    unsigned rr;                 /* next receiver for a new channel */
    struct rpal_service *next;
};

struct pending {
    struct watch w;
    struct rpal_service *svc;
    int fd;
    int stage;              /* 0: hello expected, 1: request expected */
    pid_t pid;              /* the kernel's word on who connected */
    uid_t uid;
    uint64_t since;         /* accepted at (CLOCK_MONOTONIC ns): the deadline */
    uint8_t nonces[2 * HS_NONCE]; /* the requester's, then ours */
    struct pending *next;
};

struct rpal_peer {
    struct watch wsock, wpid;
    rpal_domain *d;
    struct rpal_peer_info info;
    int sock, pidfd;
    uint64_t base, size;
    _Atomic uint64_t readable; /* bytes from BASE known to be backed by its file
                                  (which never shrinks); see rpal__peer_readable */
    int mapped, reason;
    _Atomic int gone;    /* set under d->lock by the dispatch thread; read
                            without it by callers on their hot paths */
    int pkey;            /* own protection key, or -1 (under the closed key) */
    _Atomic int keyslot; /* its index in d->pkeys, or -1 (written under
                            d->lock, read without it by access_begin) */
    _Atomic int windows; /* access windows open on it, over all threads */
    _Atomic int nchans;  /* channels and connections that read its slot */
    int by_fdmap;        /* mapped by rpal_uds_fdmap: released with its last
                            connection */
    int pins;            /* rpal__peer_pin()s held (d->lock) */
    _Atomic int zero_key; /* its pages are under key 0, open to every thread:
                            while pinned, and after the last unpin until the
                            windows opened meanwhile end (written under
                            d->lock; read without it by access_begin/end) */
    _Atomic int relocking; /* zero_key_end is deciding (see there) */
    int released;        /* released while NCHANS held it: freed by the last
                            rpal__peer_put() */
    struct rpal_peer *next;
};

/* The counters of a member's channels and connections: records in its
 * claim file from STATS_OFF on, written by the owner (rpal__dom_stats_flush),
 * read by `rpal stat` (rpal_stats_foreach). */
#define STATS_OFF    65536u
#define STATS_MAX    4096u
#define STATS_MAGIC  0x3154534c41505231ull /* "1RPALST1" */
#define STATS_NCOUNT 11
struct stats_rec {
    uint64_t magic;                /* STATS_MAGIC in use, 0 free */
    uint32_t kind, peer_slot;      /* RPAL_STATS_* */
    int32_t peer_pid, fd;
    uint32_t budget_ns, state;
    char name[72];
    uint64_t c[STATS_NCOUNT];      /* in the order of struct rpal_stats */
    uint64_t check;                /* FNV-1a of what comes before */
    uint8_t pad[56];
};
_Static_assert(sizeof(struct stats_rec) == 256, "a counters record is 256 bytes");
/* 0 if R is a valid record (its name made safe to print), else -EBADMSG. */
RPAL_HIDDEN int rpal__dom_stats_validate(struct stats_rec *r);

/* Room for the protection keys a domain hands to its peers: x86-64 has 16,
 * key 0 included, and pkey_alloc says when none is left; peers without one
 * stay under the always-closed key until a window takes one. */
#define DOM_PKEYS 16
struct rpal_domain {
    char name[COMPONENT_MAX + 1];
    pid_t pid;           /* the member; a forked child is not */
    int dirfd;           /* O_PATH of <ns>/.domains/NAME */
    int claimfd;         /* slot.N, OFD-locked while we live */
    int memfd;           /* our sealed slot, read-only: handed to peers */
    int growfd;          /* the same file read-write: only the heap grows it */
    int epfd;
    uint64_t slot_size, window;
    unsigned nslots, slot;
    struct heap *heap;
    pthread_mutex_t lock; /* services, peers, pending, keys */
    const struct dom_layer *layers[DOM_LAYERS]; /* in the order they are left */
    struct rpal_service *services;
    struct rpal_peer *peers;
    struct pending *pending;
    int npending;
    int pkeys[DOM_PKEYS];
    _Atomic(rpal_peer *) pkey_owner[DOM_PKEYS]; /* written under lock; see key_claim */
    _Atomic int key_windows[DOM_PKEYS]; /* windows open under each key, all threads;
                                    KEY_CLAIMED added while being reassigned */
    int lockkey, have_lockkey;
    struct dispatch_rec *dispatching; /* dispatches under way */
    struct watch *retired;            /* watches waiting for them to end */
    uint64_t nretired;                /* retirements so far */
    uint64_t stats_used[STATS_MAX / 64]; /* records of the claim file in use */
    /* Against same-user tampering with our claim (issue 16, attack 7): the
     * domain directory opened for reading, byte N read-locked while we
     * live; the FNV-1a of the record we last wrote, and when dispatch last
     * checked it. d->lock. */
    int pinfd;
    uint64_t rec_sum, audit_ns;
};

struct wt_stats;
/* Counters' records (claim file): take one for ST (-ENOSPC: ST is counted
 * but not published), write ST's counters, give it back. LOCKED: d->lock
 * is held. */
RPAL_HIDDEN int rpal__dom_stats_open(rpal_domain *d, struct wt_stats *st, int locked);
RPAL_HIDDEN void rpal__dom_stats_flush(rpal_domain *d, struct wt_stats *st);
RPAL_HIDDEN void rpal__dom_stats_close(rpal_domain *d, struct wt_stats *st, int locked);
/* rpal_domain_dispatch; ANY: return (0 if no event came of it) as soon as
 * the epoll set had anything, so that a caller that also watches rings
 * (rpal_serve) looks at them again, and -EINTR if a signal came. */
RPAL_HIDDEN int rpal__dom_dispatch(rpal_domain *d, struct rpal_event *ev, int max, int timeout_ms,
                             int any);
RPAL_HIDDEN int rpal__dom_component_validate(const char *name);
RPAL_HIDDEN int rpal__dom_check(const rpal_domain *d);
RPAL_HIDDEN uint64_t rpal__dom_slot_addr(const rpal_domain *d, unsigned slot);
RPAL_HIDDEN int rpal__dom_claim_locked(int fd);
RPAL_HIDDEN void rpal__dom_publish(rpal_domain *d);
RPAL_HIDDEN int rpal__dom_read_member(int dirfd, unsigned slot, struct member_rec *rec);
/* W's descriptor has left d->epfd; free(W->obj) (malloc'd, W inside it)
 * once no dispatch that fetched its events before that is still under way:
 * at once if none runs. Objects freed by a thread other than the
 * dispatcher's go this way, or the dispatcher follows a pointer to freed
 * memory. d->lock held. */
RPAL_HIDDEN void rpal__dom_watch_retire(rpal_domain *d, struct watch *w);
/* Attach the layer L (DOM_LAYER_*) to D, once: its hooks run when D is
 * left and in a forked child. d->lock held. */
RPAL_HIDDEN void rpal__dom_layer_attach(rpal_domain *d, int which, const struct dom_layer *l);
/* The slot of the live member PID of D's domain: 0 and *SLOT, or -ESRCH. */
RPAL_HIDDEN int rpal__dom_member_slot(rpal_domain *d, pid_t pid, unsigned *slot);
/* Does the claim record REC name the process that the kernel says is PID
 * in our pid namespace (0: not visible here) with the pidfs inode INO (0:
 * unknown)? By inode where both are known, which holds in every namespace;
 * by pid only when REC was written in our pid namespace. */
RPAL_HIDDEN int rpal__dom_rec_is(const struct member_rec *rec, pid_t pid, uint64_t ino);
/* rpal__dom_member_slot by PID and INO: the slot of that live member, and
 * the pid it recorded (in its own namespace) in *RECPID (may be NULL). */
RPAL_HIDDEN int rpal__dom_member_find(rpal_domain *d, pid_t pid, uint64_t ino, unsigned *slot,
                                      pid_t *recpid);

/* ---- peers (src/peer.c) ---- */

/* FD is a peer's slot (of SIZE bytes, of which its file backs a part that
 * grows with its heap): sealed against shrinking, writing and new seals
 * (else -EBADMSG). */
RPAL_HIDDEN int rpal__peer_fd_check(int fd, uint64_t size);
/* 1 if [ADDR, ADDR+LEN) lies in P's slot and in the part its file backs,
 * so that reading it cannot raise SIGBUS; else 0. Every pointer and ring a
 * peer names is checked so before the library reads it or hands it on. */
RPAL_HIDDEN int rpal__peer_readable(rpal_peer *p, uint64_t addr, uint64_t len);
/* The live peer at SLOT, or NULL. d->lock held. */
RPAL_HIDDEN rpal_peer *rpal__peer_at_slot(rpal_domain *d, unsigned slot);
/* A peer's claimed SLOT and SIZE against its claim record and the kernel's
 * word on who it is (PID), offering SERVICE (NULL: any). d->lock held. */
RPAL_HIDDEN int rpal__peer_claim_check(rpal_domain *d, unsigned slot, uint64_t size, pid_t pid,
                                 const char *service);
/* The validated claim record REC names the process PID, offering SERVICE
 * (NULL: any): 0 or -EACCES. */
RPAL_HIDDEN int rpal__peer_rec_match(const struct member_rec *rec, pid_t pid, const char *service);
/* Map the peer at SLOT (checked) and start watching it. Takes SOCK (-1:
 * none), not MEMFD. d->lock held. */
RPAL_HIDDEN int rpal__peer_create(rpal_domain *d, int sock, int memfd, const struct ucred *cr,
                            unsigned slot, const char *service, rpal_peer **out);
/* rpal__peer_claim_check and rpal__peer_rec_match for a peer that the
 * kernel says is PID here (0: not visible) with the pidfs inode INO (0:
 * unknown): see rpal__dom_rec_is. */
RPAL_HIDDEN int rpal__peer_claim_check_who(rpal_domain *d, unsigned slot, uint64_t size,
                                           pid_t pid, uint64_t ino, const char *service);
RPAL_HIDDEN int rpal__peer_rec_match_who(const struct member_rec *rec, pid_t pid, uint64_t ino,
                                         const char *service);
/* Is P the process PID here / of pidfs inode INO (as rpal__dom_rec_is)? */
RPAL_HIDDEN int rpal__peer_is(const rpal_peer *p, pid_t pid, uint64_t ino);
/* rpal__peer_create with the peer's PIDFD (taken, even on failure; -1:
 * asked of SOCK's other end, else opened by CR's pid). */
RPAL_HIDDEN int rpal__peer_create_pidfd(rpal_domain *d, int sock, int memfd,
                                        const struct ucred *cr, int pidfd, unsigned slot,
                                        const char *service, rpal_peer **out);
/* rpal__peer_adopt for a peer whose pidfd PIDFD (-1: none; taken) has the
 * pidfs inode INO (0: unknown). */
RPAL_HIDDEN int rpal__peer_adopt_who(rpal_domain *d, int memfd, const struct ucred *cr,
                                     int pidfd, uint64_t ino, unsigned slot,
                                     uint64_t slot_size, rpal_peer **out, int *created);
/* The sharing with P ends (REASON 0: released by us, else why): unmapped,
 * no longer watched. d->lock held. */
RPAL_HIDDEN void rpal__peer_gone(rpal_domain *d, rpal_peer *p, int reason);
/* For rpal_uds_fdmap: the peer at SLOT, met on a connection whose other
 * end the kernel says is CR, which sent MEMFD as its slot. */
RPAL_HIDDEN int rpal__peer_adopt(rpal_domain *d, int memfd, const struct ucred *cr,
                               unsigned slot, uint64_t slot_size, rpal_peer **out,
                               int *created);
RPAL_HIDDEN int rpal__peer_guard(rpal_domain *d, rpal_peer *p);
RPAL_HIDDEN void rpal__peer_unguard(rpal_domain *d, rpal_peer *p);
RPAL_HIDDEN int rpal__peer_pin(rpal_peer *p);
/* Drop one NCHANS reference (taken with rpal_fetch_add_acq_rel); frees a
 * peer the application released meanwhile. LOCKED: d->lock is held. */
RPAL_HIDDEN void rpal__peer_put(rpal_peer *p, int locked);
RPAL_HIDDEN void rpal__peer_unpin(rpal_peer *p, int locked); /* LOCKED: d->lock held */
/* rpal_peer_access_begin/end for callers that may hold d->lock (LOCKED):
 * under protection keys, begin takes it to hand out a key. */
RPAL_HIDDEN int rpal__peer_access_begin_locked(rpal_peer *p, int locked);
RPAL_HIDDEN int rpal__peer_access_end_locked(rpal_peer *p, int locked);

/* ---- services (src/service.c) ---- */

/* The file name of service NAME's socket in its domain's directory
 * ("svc.NAME"). */
#define SVC_FILE_MAX 80
RPAL_HIDDEN void rpal__svc_sock_file(char file[SVC_FILE_MAX], const char *name);
/* One exchange of the handshake as the asking side: connect a new socket
 * to the service socket FILE of D's directory, send REQ (with FD, -1:
 * none), wait for the answer until TIMEOUT_MS (-1: no limit), receive it
 * into REP (a descriptor that came with it in *RFD, else -1) and check its
 * magic and version (-EPROTO). -ECONNRESET: the service closed without an
 * answer (each caller knows what that means for it). *SOCK is the
 * connection (or -1), the caller's to close, whatever the result. */
struct hs_req;
struct hs_rep;
/* The requester's side of a handshake on the service socket FILE: hello,
 * challenge (the listener checked, and its MAC with KEY unless NULL), then
 * REQ with FD (-1 none) and the answer *REP with *RFD; *SOCK the connection. */
RPAL_HIDDEN int rpal__svc_exchange(rpal_domain *d, const char *file, const struct hs_req *req,
                                   const rpal_key *key, int fd, int timeout_ms,
                                   struct hs_rep *rep, int *rfd, int *sock);
/* The MAC of a handshake (src/service.c): LABEL "requester" or "service",
 * over both nonces (NONCES: the requester's, then the service's), the
 * service's NAME and SLOT (the sender's slot), with the service's KEY. */
RPAL_HIDDEN void rpal__svc_hs_mac(const uint8_t key[16], const char *label, const uint8_t *nonces,
                                  const char *name, uint32_t slot, uint8_t out[HS_MAC]);
/* Path of the rendezvous socket of service NAME of D. */
struct sockaddr_un;
RPAL_HIDDEN int rpal__svc_path(const rpal_domain *d, const char *name, struct sockaddr_un *a);
RPAL_HIDDEN int rpal__svc_send_with_fd(int sock, const void *msg, size_t len, int fd);
RPAL_HIDDEN int rpal__svc_recv_with_fd(int sock, void *msg, size_t len, int *fd);
/* Walk the control messages of a received MH: the first NFD descriptors go
 * to FDS[0..NFD-1] (each that is still -1), every other one is closed;
 * credentials, if any, to *CR (CR may be NULL). Returns the number of
 * descriptors seen. */
struct msghdr;
RPAL_HIDDEN int rpal__svc_cmsg_take(struct msghdr *mh, int *fds, int nfd, struct ucred *cr);

/* ---- channel layer pieces shared with compat (src/channel.c) ---- */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define E_INLINE 1u
#define E_PTR    2u

/* An entry is published by storing its seqf last (release): the sequence
 * number of the message (1, 2, ... modulo 2^30) and its kind. The reader
 * polls the entry itself, so a call moves one cache line each way, as a
 * plain shared-memory ping-pong does; the ring indices are for sleepers. */
#define SEQF(n, flag) ((((uint32_t)(n)) & 0x3fffffffu) << 2 | (flag))
#define SEQ_OF(sf) ((sf) >> 2)
#define FLAG_OF(sf) ((sf) & 3u)
#define SEQ_WANT(n) (((uint32_t)(n)) & 0x3fffffffu)

struct ch_entry { /* one cache line */
    uint64_t tag;
    uint32_t len, seqf;
    uint64_t ptr;
    uint8_t data[RPAL_INLINE_MAX];
};
_Static_assert(sizeof(struct ch_entry) == 64, "an entry is one cache line");

/* P..P+LEN lies inside BASE..BASE+SIZE (no overflow). */
static inline int span_inside(uint64_t p, uint64_t len, uint64_t base, uint64_t size)
{
    return p >= base && len <= size && p - base <= size - len;
}

/* Allocate N zeroed bytes in our slot, 64-byte aligned; *RAW is what to
 * give rpal_free(). */
RPAL_HIDDEN void *rpal__ch_slot_alloc(size_t n, void **raw);
/* Put LEN bytes of DATA in entry E: inline if they fit; else as a pointer,
 * to DATA itself if IN_PLACE (it lies in our own slot), or to the one copy
 * made into our slot, stored in *COPY for the caller to free later.
 * Returns the entry's kind (E_INLINE, E_PTR) or a negative errno. */
RPAL_HIDDEN int rpal__ch_entry_fill(struct ch_entry *e, const void *data, size_t len,
                              int in_place, void **copy);

/* ---- waiting (src/wait.c): the channel layer's, used by compat too ----
 * docs/waiting.md. */

/* What one side of a channel or connection publishes for the other, in its
 * own slot, on a cache line of its own. Written only when it changes, so
 * that the line stays in both sides' caches while messages flow. */
struct wt_pub {
    /* 0: awake, it looks at the rings before it sleeps, so a publisher
     * sends no wake-up; else how to wake it: WT_WAKE_* */
    _Atomic uint32_t sleeps;
    _Atomic uint32_t cpu;     /* 1 + the CPU it waits on, 0 unknown */
    /* Stamped (CLOCK_MONOTONIC) by the owner before it wakes the other
     * side: when the message was published, so that the sleeper learns how
     * long its wait really was. Another process's word: clamped. */
    _Atomic uint64_t woke_ns;
    /* compat: wake-up bytes the owner sent on the socket, so that the
     * other end reads the socket only when some are there. */
    _Atomic uint32_t sock_bytes;
};
enum { WT_WAKE_FUTEX = 1, /* asleep on a futex the publisher wakes */
       WT_WAKE_BELL,      /* asleep in an epoll set: the connection's eventfd */
       WT_WAKE_SOCK };    /* not waiting in rpal: a byte on the socket */

/* What a waiter learned from its waits (private). */
struct wt_odds {
    uint32_t p16;      /* how often a wait was short, out of 65536 */
    uint32_t short_ns; /* how long the short ones were */
};
struct wt_learn {
    struct wt_odds calm;
    /* Of waits that began just after this thread woke the other side:
     * they hold its wake-up (a server that sleeps between sparse requests),
     * which waits of a pair that stays awake do not. */
    struct wt_odds woke;
};

/* One channel's or connection's counters (rpal_stats in rpal.h), private
 * to its owner; published in the claim file (dom_stats_*). */
struct wt_stats {
    uint64_t msgs_out, bytes_out, msgs_in, bytes_in;
    uint64_t wakes, wakes_skipped; /* wake-ups sent; publishes that found the other side awake */
    uint64_t waits, sleeps, spin_hits, yields, spin_ns;
    uint32_t budget_ns, state;     /* the last wait's budget; WT_RUN .. WT_SLEEP now */
    /* Where the record goes (src/domain.c). */
    uint64_t flushed_ns;
    int idx;                       /* in the claim file's table, -1: none */
    uint32_t kind, peer_slot;      /* RPAL_STATS_* */
    int32_t peer_pid, fd;
    char name[COMPONENT_MAX + 1];
};

enum { WT_RUN = 0, WT_SPIN = 1, WT_YIELD, WT_SLEEP, WT_TICK };

/* One wait, on the waiter's stack. */
struct wt_wait {
    struct wt_learn *l;
    struct wt_stats *st;  /* whose counters the wait goes to (may change) */
    uint64_t t0;          /* when it began; 0 until the clock is first read */
    uint64_t now;         /* the clock's last reading, 0 none */
    uint64_t spun;        /* time spent spinning before a sleep */
    uint32_t spins, yields, cap, budget, peer_cpu, my_cpu;
    uint8_t mode, policy, same, slept;
    uint8_t woke;         /* it began just after we woke the other side */
    uint32_t tick_min;    /* the shortest time between two clock reads of the spin */
};

RPAL_HIDDEN void rpal__wt_learn_init(struct wt_learn *l);
/* What a wait of W_NS teaches L (CAP: its channel's bound, UINT32_MAX none). */
RPAL_HIDDEN void rpal__wt_learn_note(struct wt_learn *l, uint64_t w_ns, uint32_t cap);
/* The budget (ns) of a waiter's next wait: 0, sleep at once. CAP: the
 * channel's own upper bound (UINT32_MAX: none). */
RPAL_HIDDEN uint32_t rpal__wt_budget(const struct wt_learn *l, uint32_t cap);
/* 0 if RPAL_WAKE=sock asks for wake-ups on sockets instead of eventfds
 * (to compare the two, and to run the fallback's code). */
RPAL_HIDDEN int rpal__wt_bells(void);
/* 1 + the CPU we run on (0 unknown). */
RPAL_HIDDEN uint32_t rpal__wt_my_cpu(void);
/* Start a wait with options O; PEER_CPU is what the other side published
 * (wt_pub.cpu). Sets W->mode: WT_SPIN, WT_YIELD or WT_SLEEP. */
RPAL_HIDDEN void rpal__wt_begin(struct wt_wait *w, struct wt_learn *l, struct wt_stats *st,
                          const struct rpal_chan_opts *o, uint32_t peer_cpu);
/* The condition was false: spin (or yield) once. WT_SLEEP: time to sleep;
 * WT_TICK: W->now was just read (check deadlines); 0 otherwise. */
RPAL_HIDDEN int rpal__wt_pause(struct wt_wait *w);
/* Around the sleep itself. rpal__wt_sleep_begin returns the CPU + 1 the thread
 * moved to when MAY_FOLLOW let it follow the other side (publish it), or
 * 0; *CPU0 is for rpal__wt_sleep_end. */
RPAL_HIDDEN uint32_t rpal__wt_sleep_begin(struct wt_wait *w, int may_follow, uint64_t *cpu0);
RPAL_HIDDEN void rpal__wt_sleep_end(struct wt_wait *w, uint64_t cpu0);
/* The wait is over; STAMP: the other side's woke_ns (0 if none). */
RPAL_HIDDEN void rpal__wt_end(struct wt_wait *w, uint64_t stamp);
/* The wait is over with nothing (a non-blocking caller will not sleep):
 * learned as a long wait. */
RPAL_HIDDEN void rpal__wt_end_empty(struct wt_wait *w);
/* A wake-up's system call began at T0 and is over (the sender's share of a
 * sleep's cost; one in SAMPLE_SLEEPS is measured, src/wait.c). */
RPAL_HIDDEN void rpal__wt_note_wake(uint64_t t0);
/* This thread just woke the other side (a system call to a sleeper): its
 * next wait is learned apart (struct wt_learn). */
RPAL_HIDDEN void rpal__wt_woke(void);
/* Should ST's counters be written out now (NOW: a clock reading, or 0)? */
RPAL_HIDDEN int rpal__wt_stats_due(const struct wt_stats *st, uint64_t now);
RPAL_HIDDEN void rpal__wt_stats_copy(const struct wt_stats *st, struct rpal_stats *out);

/* While a wait spins on rings, it looks at the kernel's descriptors this
 * often (an epoll set's or a poll's plain ones). */
#define KCHECK_NS 10000

/* Deadlines, written once for every wait of the channel and compat layers.
 * A timeout in ms (-1: none) becomes a limit in ns from the wait's start
 * (wt_limit_ns), or a deadline on rpal__prim_now_ns()'s clock (rpal__prim_deadline);
 * UINT64_MAX stands for none throughout. */
static inline uint64_t wt_limit_ns(int timeout_ms)
{
    return timeout_ms < 0 ? UINT64_MAX : (uint64_t)timeout_ms * 1000000;
}
/* What is left at NOW of LIMIT ns from T0 (T0 0: LIMIT is a deadline): 0
 * once it is past, UINT64_MAX if there is no limit. */
static inline uint64_t wt_left_ns(uint64_t t0, uint64_t limit, uint64_t now)
{
    if (limit == UINT64_MAX)
        return UINT64_MAX;
    return t0 + limit > now ? t0 + limit - now : 0;
}
/* A sleep of at most CAP ns that does not outlast LEFT (from wt_left_ns):
 * sleeps are cut into slices so that the waiter looks at the other side's
 * liveness now and then. */
static inline int64_t wt_slice_ns(uint64_t left, int64_t cap)
{
    return left < (uint64_t)cap ? (int64_t)left : cap;
}
/* LEFT as poll(2)'s timeout: ms rounded up (never a busy loop of 0 ms
 * polls before the deadline), -1 for none. */
static inline int wt_poll_ms(uint64_t left)
{
    if (left == UINT64_MAX)
        return -1;
    uint64_t ms = (left + 999999) / 1000000;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* ---- parsers of what others wrote, callable on a snapshot -----------------
 * Every function below reads memory or records another process wrote (its
 * slot, a shared file) and checks it (principle 3: nothing read from a peer
 * is trusted). Each is split from the code that finds that memory, so
 * that the fuzz targets in fuzz/ can feed it arbitrary bytes standing in
 * for the peer's (docs/fuzzing.md). */

/* Copy the entry SLOT of a peer's ring once into *E and check it: an inline
 * entry holds at most RPAL_INLINE_MAX bytes; a pointer entry's bytes lie
 * inside the peer's slot BASE..BASE+SIZE. Returns the kind (E_INLINE or
 * E_PTR) or -EPROTO. */
RPAL_HIDDEN int rpal__ch_entry_take(const struct ch_entry *slot, uint64_t base, uint64_t size,
                              struct ch_entry *e);
/* A HS_KIND_CHAN request's ring: DEPTH a power of two up to 1024, ADDR
 * 64-aligned with the ring inside the caller's slot BASE..BASE+SIZE, and
 * the ring there says TX_MAGIC and DEPTH (read from the slot: the caller
 * holds a window on it). 0 or -EINVAL. */
RPAL_HIDDEN int rpal__ch_tx_check(const struct hs_req *req, uint64_t base, uint64_t size);

/* compat (src/compat.c): a connection's ring in its owner's slot, read by
 * the other end, and the hello each end sends first. */
#define CX_MAGIC   0x3258524c41505231ull /* "1RPALRX2": a connection's ring */
#define FM_MAGIC   0x31504d4c41505231ull /* "1RPALMP1": the fdmap hello */
#define FM_VERSION 2u
struct cx_ring {
    uint64_t magic;
    uint32_t depth, pad0;
    _Alignas(64) _Atomic uint32_t tail;      /* messages published */
    _Alignas(64) _Atomic uint32_t head;      /* messages of the other ring consumed */
    _Alignas(64) struct wt_pub pub;          /* the owner's: asleep, and how to wake it */
    _Atomic uint32_t want_room;              /* 1: the owner waits for room */
    _Atomic uint32_t closed;                 /* 1: the owner closed; nothing follows */
    /* The downgrade back to the socket (rpal__cx_leave; docs/run.md):
     * DOWN 1, the owner leaves the rings (its tail, head and sock_bytes are
     * final) and DOWN_OFF is how far it read the message at its head;
     * DOWN_ACK 1, the owner took the other end's DOWN (its sock_bytes are
     * final, and what the leaving end had not read of its ring is its). */
    _Atomic uint32_t down, down_off, down_ack;
    _Alignas(64) struct ch_entry e[];
};
struct fm_hello {
    uint64_t magic;
    uint32_t version, slot;
    uint64_t slot_size;
    uint64_t ring;    /* our cx_ring, in our slot */
    uint32_t depth;
    int32_t pid;
    uint64_t pad[3];
};
/* The reader's place in the other end's ring THEIR (TDEPTH entries, in its
 * slot SBASE..SBASE+SSIZE). */
struct cx_reader {
    const struct cx_ring *their;
    uint32_t tdepth;
    uint32_t head;    /* their messages consumed */
    uint32_t off;     /* bytes of their current message already read */
    int broken;       /* the other end broke the ring's rules */
    uint64_t sbase, ssize;
    rpal_peer *peer;  /* whose slot it is: what its file covers (NULL: not checked) */
};
/* Copy up to LEN bytes of the messages published in R's ring into BUF,
 * advancing R; the number copied (0: none is there, or R->broken). */
RPAL_HIDDEN size_t rpal__cx_take(struct cx_reader *r, char *buf, size_t len);
/* The other end's hello H against what the kernel says: it is the process
 * PID in slot PSLOT of a domain of slots of SLOT_SIZE bytes. 0 or -EPROTO. */
RPAL_HIDDEN int rpal__cx_hello_check(const struct fm_hello *h, pid_t pid, unsigned pslot,
                               uint64_t slot_size);
/* The ring H names, in the other end's slot BASE..BASE+SIZE (mapped, and
 * read here): 0 or -EPROTO. */
RPAL_HIDDEN int rpal__cx_ring_check(const struct fm_hello *h, uint64_t base, uint64_t size);

/* For src/run.c (rpal run): rpal_uds_fdmap in two halves. _begin: if the
 * other end of FD may speak rpal, send our hello (1; 0: it may not, nothing
 * was sent). _end: wait up to TIMEOUT_MS for its hello (1: upgraded;
 * -EAGAIN: not there yet, call again; another errno: the connection is
 * unusable). _drop: forget a half-done one. */
RPAL_HIDDEN int rpal__cx_fdmap_begin(rpal_domain *d, int fd, int timeout_ms);
RPAL_HIDDEN int rpal__cx_fdmap_end(int fd, int timeout_ms);
RPAL_HIDDEN void rpal__cx_fdmap_drop(int fd);
/* An upgraded FD's readiness from the rings, as poll() would say it for
 * EVENTS (-ENOENT: not upgraded). HOW: CX_POLL_ARM, the caller is about to
 * wait outside rpal, so the other end must wake it through the socket;
 * CX_POLL_DRAIN, read the socket's wake-up bytes (it was readable). */
#define CX_POLL_ARM   1
#define CX_POLL_DRAIN 2
/* CX_POLL_AWAKE: the caller looks at the rings (it spins), so the other end
 * sends no wake-up; CX_POLL_IDLE: it no longer does (it returns). */
#define CX_POLL_AWAKE 4
#define CX_POLL_IDLE  8
/* Added to what an armed look returns (beyond poll's bits) when the
 * connection is also in an rpal epoll set: another thread waiting there
 * may publish the set's way to be woken (its bell, or none while it
 * looks) over the socket's, so a sleep on the socket must not be long
 * (CX_SLICE_NS at most, then look again). */
#define CX_POLL_SHARED 0x10000
/* The longest sleep of a wait on a connection before it looks again: at
 * the rings, and at the socket for the other end's death. */
#define CX_SLICE_NS 20000000
RPAL_HIDDEN int rpal__cx_poll(int fd, int events, int how);
/* rpal run sees every change of a descriptor's O_NONBLOCK (fcntl F_SETFL,
 * ioctl FIONBIO): connections then keep it instead of asking at each wait
 * (rpal__cx_nb_track), and forget it at each change (rpal__cx_nb_forget). */
RPAL_HIDDEN void rpal__cx_nb_track(void);
RPAL_HIDDEN void rpal__cx_nb_forget(int fd);
/* rpal run's poll of FD alone, for reading: sleep as a blocking read does,
 * on a futex the other end's next message, its close or its leaving wakes,
 * for at most MAX_NS (< 0: no limit; never above 20 ms, after which the
 * socket says whether the other end is gone). 0: look again; -EINTR;
 * -EXDEV: not upgraded here, or in an epoll set (whose bell wakes it):
 * wait in the kernel's poll on the socket. W: the learned wait the sleep
 * belongs to (src/wait.c: its cost is measured), or NULL. SIGS, RESTARTS:
 * the handlers counted when the call began, and whether SA_RESTART ones
 * let it go on (rpal__sig_ends). */
struct rpal_sigs;
RPAL_HIDDEN int rpal__cx_poll_sleep(int fd, int64_t max_ns, struct wt_wait *w,
                                    const struct rpal_sigs *sigs, int restarts);
/* The signal handlers run on this thread, as rpal run counts them (it
 * wraps the program's handlers, src/run.c): ALL of them, and INTR, those
 * that end a call the kernel would restart (no SA_RESTART). A wait on the
 * rings runs in user space, where a handler that runs while it spins, or
 * between two of its sleeps, would not end it as it ends the kernel's
 * sleep; and a futex sleep ends with -EINTR for any handler, also one
 * after which the kernel would restart the call. The waits look at these
 * (docs/run.md, "Signals"). Both stay 0 outside rpal run, and for a
 * handler installed behind its back (a raw rt_sigaction): a futex sleep's
 * -EINTR with nothing counted is then -EINTR, as before. */
struct rpal_sigs {
    volatile unsigned all, intr;
};
extern RPAL_HIDDEN __thread struct rpal_sigs rpal__sigs __attribute__((tls_model("initial-exec")));
/* -EINTR if a handler counted since SNAP (a copy of rpal__sigs taken when
 * the call began) ends the call: any for a call the kernel never restarts
 * (poll, select, epoll_wait; RESTARTS 0), one without SA_RESTART for one
 * it restarts (a blocking read or write with no socket timeout). */
static inline int rpal__sig_ends(const struct rpal_sigs *snap, int restarts)
{
    return (restarts ? rpal__sigs.intr != snap->intr : rpal__sigs.all != snap->all) ? -EINTR : 0;
}
/* Handlers ran since SNAP, and none ends the call (RESTARTS, and all had
 * SA_RESTART): the kernel would restart it, so it goes on. */
static inline int rpal__sig_restarts(const struct rpal_sigs *snap, int restarts)
{
    return restarts && rpal__sigs.all != snap->all && !rpal__sig_ends(snap, restarts);
}
/* rpal_epoll_wait with epoll_pwait's MASK (NULL: none), which the caller
 * has set on the thread: the sleep in the kernel takes it too, with every
 * signal blocked for the last look before it (src/compat.c set_sleep).
 * SIGS: rpal__sigs.all when the call began (a handler counted since ends
 * it with -EINTR). */
RPAL_HIDDEN int rpal__ep_wait(int epfd, struct epoll_event *ev, int max, int timeout_ms,
                              const sigset_t *mask, unsigned sigs);
/* Whether EPFD is a set rpal knows (else the kernel's, untouched). */
RPAL_HIDDEN int rpal__ep_ours(int epfd);
/* A poll or select over upgraded descriptors waits as rpal_epoll_wait does
 * (src/wait.c), with what FD's connection learned and on its counters:
 * -ENOENT if FD is not upgraded here. */
RPAL_HIDDEN int rpal__cx_wait_begin(int fd, struct wt_wait *w);
RPAL_HIDDEN void rpal__cx_wait_end(int fd, struct wt_wait *w);
/* Copy what is there to read without consuming it (MSG_PEEK). */
RPAL_HIDDEN ssize_t rpal__cx_peek(int fd, void *buf, size_t len);
/* The socket FD's SO_RCVTIMEO (SO_SNDTIMEO if FOR_ROOM) in ns, UINT64_MAX
 * for none: how long its blocking calls wait (a system call). */
RPAL_HIDDEN uint64_t rpal__cx_sock_timeout(int fd, int for_room);
/* The downgrade (docs/run.md): FD's connection leaves the rings for the
 * kernel socket, with no byte lost, duplicated or reordered, waiting up to
 * TIMEOUT_MS for the other end's acknowledgement. 0: FD is a plain socket
 * now (also when the other end is gone); -ENOENT: FD was not upgraded;
 * -ETIMEDOUT: the other end did not answer (the next call tries again). */
RPAL_HIDDEN int rpal__cx_leave(int fd, int timeout_ms);
/* rpal_read and rpal_write for src/run.c: -EXDEV instead of the kernel's
 * read or write once FD's connection went back to the socket (nothing of
 * it left in user space): the caller makes the kernel's call itself. */
RPAL_HIDDEN ssize_t rpal__cx_read(int fd, void *buf, size_t len);
RPAL_HIDDEN ssize_t rpal__cx_write(int fd, const void *buf, size_t len);
/* 2: FD is upgraded; 1: downgraded, with bytes still held in user space;
 * 0: neither (a plain descriptor). */
RPAL_HIDDEN int rpal__cx_state(int fd);
/* Bumped when a connection goes back to the socket at the other end's
 * request, or its last held bytes are gone. */
RPAL_HIDDEN extern _Atomic unsigned rpal__cx_down_gen;
/* shutdown(2) on FD; an upgraded one's other end is woken to see it. */
RPAL_HIDDEN int rpal__cx_shutdown(int fd, int how);

/* region (src/region.c): the header page of a region file. */
#define REGION_MAGIC   0x314745524c415052ull /* "RPALREG1" little-endian */
#define REGION_VERSION 1u
struct region_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;     /* sizeof(struct region_hdr) when written */
    uint64_t granule;      /* data's file offset and address alignment */
    uint64_t base;         /* data address in every process */
    uint64_t size;         /* data bytes */
    uint32_t flags;        /* RPAL_REGION_TRANSIENT */
    int32_t creator_pid;
    uint32_t creator_uid;
    uint32_t creator_pidns; /* its pid namespace's inode (32 bits: proc's
                               inode numbers are), 0 unknown or before #17 */
    uint64_t creator_start;
    uint64_t created_ns;
    uint64_t check;        /* FNV-1a of all the fields above */
};
RPAL_HIDDEN uint64_t rpal__region_hdr_check(const struct region_hdr *h);
/* 0 if H is the header of a region file of FILE_SIZE bytes, else -EBADMSG
 * or -EPROTO (another version). */
RPAL_HIDDEN int rpal__region_hdr_validate(const struct region_hdr *h, uint64_t file_size);

/* layout (src/layout.c): the layout table, two copies of which follow the
 * control page in a region's header area. */
#define LAY_MAGIC    0x324c54434c415052ull /* "RPALCTL2": the control page */
#define LAY_MAGIC_V1 0x314c54434c415052ull /* "RPALCTL1", before issue 19: -EPROTO */
#define LAY_OBJ_MAX  128u
/* An anonymous object's memory: the region file's own pages at the
 * object's offset (only the object a region is created with, and its
 * pieces), or pages of the side store (the lock file) from foff, which
 * rpal_region_map hands out once and never again. */
enum { LAY_STORE_REGION = 0, LAY_STORE_SIDE = 1 };
#define LAY_SIDE_BASE (2ull << 20) /* the side store: lock file offsets from */
#define LAY_SIDE_END  (1ull << 62) /* ... to */
enum { OP_INIT = 0, OP_MAP = 1, OP_PROTECT = 2, OP_UNMAP = 3 };
struct lay_obj {
    uint64_t off, len;
    uint32_t kind, prot;
    uint32_t maxprot;           /* FILE: PROT_WRITE only if its fd was writable */
    int32_t src_pid, src_fd;    /* FILE: the changer's descriptor, open while it
                                   propagates the change that mapped it */
    uint32_t store;             /* ANON: where its memory is, LAY_STORE_* */
    uint64_t dev, ino, foff;
    char path[RPAL_OBJ_PATH_MAX];
};
struct lay_table {
    uint32_t gen, nobj;
    uint32_t op, op_prot;       /* the change that made this generation */
    uint64_t op_off, op_len;
    uint64_t check;             /* over the fields above and obj[0..nobj) */
    struct lay_obj obj[LAY_OBJ_MAX];
};
/* The control page (at LAY_CTL_OFF of the header area). */
#define LAY_DET_MAX  64u
#define LAY_TURNS    8u          /* turnstile words, used in turn (turn_rotate) */
struct lay_ctl {
    uint64_t magic;
    _Atomic uint32_t gen;       /* futex word: the table is copy gen & 1 */
    _Atomic uint32_t ack;       /* futex word, always 0: agents wake it */
    /* The turnstile in front of the change lock (src/layout.c, turn_lock):
     * PI futex words, which the kernel writes, and the one in use. */
    uint32_t turn_cur;
    _Atomic uint32_t turn[LAY_TURNS];
    /* From here on, written by changers under the change lock
     * (ctl_tail_write): who holds the turnstile (pid, thread, start time),
     * and whether a holder died (the next change looks for what it left). */
    int32_t own_pid, own_tid;
    uint32_t heir;
    uint64_t own_start;
    uint32_t ndet;
    uint32_t dirty;             /* memory may be held outside the objects */
    uint64_t side_next;         /* first side-store byte never handed out */
    struct {
        int32_t pid;
        uint32_t gen;           /* the change that gave up on it */
        uint32_t recgen;        /* where its record stays while it is stuck */
        uint32_t pad;
    } det[LAY_DET_MAX];
};

/* The layout of a region of SIZE data bytes from the
 * header area HDR (REGION_HDR_MAP bytes, as mapped or read from the file):
 * the number of objects (the first MAX of them in OBJS) and *GEN, or
 * -EBADMSG. */
RPAL_HIDDEN int rpal__lay_parse(const uint8_t *hdr, uint64_t size, uint32_t *gen,
                          struct rpal_region_object *objs, unsigned max);
#define LAY_CTL_OFF RPAL_PAGE /* the control page, after the header page */
/* Where the table of generation GEN lies in the header area. */
RPAL_HIDDEN uint64_t rpal__lay_table_off(uint32_t gen);
/* Store the right checksum in that table of HDR (for the fuzz targets). */
RPAL_HIDDEN void rpal__lay_table_seal(uint8_t *hdr, uint32_t gen);

/* domain (src/domain.c): a domain's geometry, <ns>/.domains/NAME/meta. */
#define META_MAGIC 0x314d4f444c415052ull /* "RPALDOM1" */
#define META_VERSION 2u /* 2: the check is FNV-1a of the fields before it */
struct dom_meta {
    uint64_t magic;
    uint32_t version, nslots;
    uint64_t slot_size;
    uint64_t window;
    uint64_t check;
};
RPAL_HIDDEN uint64_t rpal__dom_meta_check(const struct dom_meta *m);
/* 0 if M is a geometry joiners accept, else -EBADMSG. */
RPAL_HIDDEN int rpal__dom_meta_validate(const struct dom_meta *m);
/* 0 if REC, read from the claim file of SLOT, is a valid record (its
 * service names then end in a NUL), else -EBADMSG. */
RPAL_HIDDEN int rpal__dom_member_validate(struct member_rec *rec, unsigned slot);

/* service (src/service.c): a handshake request as received; 0 if it is one
 * of our version (its service name then ends in a NUL), else -EPROTO. */
RPAL_HIDDEN int rpal__svc_req_check(struct hs_req *req);
/* A HS_KIND_SHARE request for the service NAME whose key is KEY, answering
 * the challenge of NONCES (the requester's nonce, then ours): 0, or
 * -EPROTO (another kind) or -EACCES (another service, a wrong MAC). */
RPAL_HIDDEN int rpal__svc_req_admit(const struct hs_req *req, const char *name, const uint8_t *key,
                                    const uint8_t *nonces);

/* ---- mac.c: HMAC-SHA-256 for the service handshake ---- */

/* One piece of the text a MAC covers. */
struct rpal__mac_part {
    const void *p;
    size_t n;
};
/* HMAC-SHA-256 (RFC 2104, FIPS 180-4) with KEY of KLEN bytes over the
 * concatenation of PARTS[0..NPARTS) into OUT. */
RPAL_HIDDEN void rpal__mac_hmac(const void *key, size_t klen, const struct rpal__mac_part *parts,
                                int nparts, uint8_t out[32]);
/* 1 if the N bytes at A and B are equal, in time independent of where they differ. */
RPAL_HIDDEN int rpal__mac_equal(const uint8_t *a, const uint8_t *b, size_t n);

#endif
