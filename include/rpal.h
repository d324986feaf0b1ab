/* rpal: Run Process As Library, in user space, on a stock Linux kernel.
 *
 * The one public header. Every function returns 0 (or a non-negative value
 * where documented) on success and a negative errno on failure; none of them
 * relies on errno. Handles are opaque. See rpal(7) and docs/ for the design.
 */
#ifndef RPAL_H
#define RPAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RPAL_VERSION_MAJOR 0
#define RPAL_VERSION_MINOR 1
#define RPAL_VERSION_PATCH 0

/* The library's version as "MAJOR.MINOR.PATCH" (of the loaded library, which
 * may be newer than the header the program was built with). */
const char *rpal_version(void);

/* A human-readable message for a negative errno returned by rpal. Knows the
 * meaning rpal gives to a few codes (EBADMSG: not an rpal region, ...). */
const char *rpal_strerror(int err);

/* ---- recovery points: access to memory that may vanish ---- */

/* Run fn(arg) under a recovery point for [addr, addr+len): if fn touches a
 * page of that range that is gone (a named region truncated by a writer, or
 * unmapped / re-protected for every sharer), fn is abandoned where it
 * faulted and rpal_guard returns -EIO (the page lies past the end of its
 * file: SIGBUS) or -EFAULT (no mapping or no permission: SIGSEGV) instead of
 * the signal killing the process. Otherwise it returns fn's own result.
 * Guards are per thread and nest; a fault is recovered by the innermost guard
 * whose range holds the address. A fault anywhere else, a kill(2)ed signal,
 * and a fault in another thread go to the handler that was installed before
 * rpal's (by default: the process dies as usual). Because fn may be
 * abandoned half-way, it must not take locks or allocate. The first call
 * installs rpal's SIGSEGV and SIGBUS handlers; a handler installed after
 * that must chain to the previous one for guards to keep working.
 * -EINVAL: fn NULL or the range wraps. */
int rpal_guard(const void *addr, size_t len, int (*fn)(void *arg), void *arg);

/* memcpy(dst, src, len) under a recovery point covering both ranges:
 * 0, -EIO or -EFAULT as rpal_guard (dst may then be partly written). */
int rpal_guard_copy(void *dst, const void *src, size_t len);

/* ------------------------------------------------------------------------ */
/* Regions: named, same-address shared memory (the mshare model).            */
/* ------------------------------------------------------------------------ */

/* Longest region name, in bytes, without the terminating NUL. A name is one
 * or more components separated by '/'; each component is 1 to 64 characters
 * from [A-Za-z0-9_.-] and does not start with '.'. */
#define RPAL_NAME_MAX 200

/* Flags for rpal_region_create() and rpal_region_attach(). */
#define RPAL_REGION_RDONLY    0x1u /* attach: map read-only (kernel-enforced) */
#define RPAL_REGION_TRANSIENT 0x2u /* create: `rpal gc` may remove the region
                                      once its creator is dead and no live
                                      process has it attached */
#define RPAL_REGION_EMPTY     0x10u /* create: address space only, every page
                                       PROT_NONE; objects are placed later
                                       with rpal_region_map() (without it the
                                       region starts as one anonymous object
                                       over its whole size, read-write) */
#define RPAL_REGION_HUGE      0x4u /* create: data in 2 MiB huge pages on
                                      hugetlbfs, base and size multiples of
                                      1 GiB, so that every attacher shares
                                      the kernel's page tables of the data
                                      (see rpal_region_create()) */
#define RPAL_REGION_OVERQUOTA 0x20u /* info only (stat, foreach): a region of
                                       another user (not root) beyond its
                                       owner's quota of the shared window:
                                       attach says -EDQUOT (rpal.7) */

typedef struct rpal_region rpal_region;

/* Create the region NAME of SIZE bytes (a multiple of the page size) with
 * file mode MODE (0 means 0600; the umask does not apply) in the namespace
 * directory, and attach it read-write. Creation is exclusive: if NAME exists,
 * -EEXIST. Missing parent directories of NAME are created with MODE plus the
 * search bit wherever MODE grants read. The memory reads as zeros.
 * FLAGS: RPAL_REGION_TRANSIENT, RPAL_REGION_HUGE. A huge region's SIZE is a
 * multiple of 1 GiB (else -EINVAL); its data lives in a file on a hugetlbfs
 * with 2 MiB pages ($RPAL_HUGE_DIR, or the first one mounted; none: -ENODEV),
 * all of its huge pages are reserved at creation (too few free: -ENOSPC),
 * and processes that attach it in the same mode share one set of page-table
 * pages for it instead of 2 MiB per GiB each. */
int rpal_region_create(const char *name, size_t size, unsigned mode,
                       unsigned flags, rpal_region **out);

/* Attach the existing region NAME at the address it has in every process,
 * with its current layout (see rpal_region_map()). FLAGS: 0 or
 * RPAL_REGION_RDONLY. The cost does not depend on the size. Returns 0, or
 * the (positive) number of file objects that could not be opened here
 * (moved, replaced or unreadable): their ranges stay PROT_NONE. */
int rpal_region_attach(const char *name, unsigned flags, rpal_region **out);

/* Unmap the region from this process and free the handle. The region itself
 * stays until it is unlinked. */
int rpal_region_detach(rpal_region *r);

/* Remove NAME from the namespace. Processes that have it attached keep their
 * mapping; the memory is freed when the last one detaches or exits. */
int rpal_region_unlink(const char *name);

/* The region's data: the same address in every process that attaches it. */
void *rpal_region_addr(const rpal_region *r);
size_t rpal_region_size(const rpal_region *r);

struct rpal_region_info {
    char name[RPAL_NAME_MAX + 1];
    uint64_t size;         /* bytes of data */
    uint64_t base;         /* address of the data in every process */
    uint32_t mode;         /* file permission bits */
    uint32_t flags;        /* RPAL_REGION_TRANSIENT, RPAL_REGION_HUGE,
                              RPAL_REGION_OVERQUOTA */
    uint32_t uid, gid;     /* owner of the region's file */
    int32_t creator_pid;
    uint32_t creator_uid;
    int creator_alive;     /* 1 if the creating process still runs; 2 if it
                              is in another pid namespace (counted as
                              running: its pid cannot be judged here) */
    uint64_t created_ns;   /* CLOCK_REALTIME at creation */
    int nattached;         /* live processes that map it (that we may see) */
    pid_t attached[16];    /* the first of them */
};

/* ---- the layout: objects inside a region, the same for every sharer ---- */

/* What is mapped inside a region, and with which protection, is the same in
 * every process that has it attached, as memory is for threads: a change
 * made by one process has been applied in every live sharer when the call
 * returns. Changes need a read-write handle (-EBADF otherwise) and are
 * serialised over all processes. OFFSET and LENGTH are multiples of 4096
 * inside the region (-ERANGE outside it); PROT is PROT_NONE or a mix of
 * PROT_READ, PROT_WRITE and PROT_EXEC (<sys/mman.h>). A read-only attacher
 * maps every object without PROT_WRITE. See rpal_region_map(3) and
 * docs/regions.md. */

/* Optional in/out argument of the change calls (may be NULL). */
struct rpal_region_change {
    int timeout_ms;     /* in: how long to wait for the sharers (0: 1000) */
    unsigned applied;   /* out: other sharers that applied the change */
    unsigned failed;    /* out: sharers that answered but could not apply it
                           (e.g. could not open a file object): they map the
                           range PROT_NONE */
    unsigned dead;      /* out: sharers gone when the change looked: died
                           before answering (skipped), or just after */
    unsigned detached;  /* out: sharers that did not answer in time (or were
                           detached by an earlier change and are not gone
                           yet): they unmap the region when they run, and
                           until then may not have the change */
};

/* The three layout changes return 0 when every live sharer has the change,
 * the number of sharers detached (which may not have it: after a protect
 * to read-only, they may still write until they run again) as a positive
 * value, or a negative errno (nothing changed). */

/* Place an object at OFFSET: anonymous shared memory (FD -1; new memory,
 * which reads as zeros) or LENGTH bytes of the regular file FD from
 * FILE_OFFSET (opened read-write for PROT_WRITE). The range must hold no
 * object (-EEXIST). */
int rpal_region_map(rpal_region *r, uint64_t offset, uint64_t length, int prot,
                    int fd, uint64_t file_offset, struct rpal_region_change *chg);

/* Change the protection of a range; every page of it must belong to an
 * object (-ENXIO). */
int rpal_region_protect(rpal_region *r, uint64_t offset, uint64_t length,
                        int prot, struct rpal_region_change *chg);

/* Remove the objects in a range (every page of it must belong to one,
 * -ENXIO); the range becomes PROT_NONE again and anonymous memory is freed. */
int rpal_region_unmap(rpal_region *r, uint64_t offset, uint64_t length,
                      struct rpal_region_change *chg);

#define RPAL_OBJ_ANON 1
#define RPAL_OBJ_FILE 2
#define RPAL_OBJ_PATH_MAX 256

struct rpal_region_object {
    uint64_t offset, length; /* in the region */
    int kind;                /* RPAL_OBJ_ANON or RPAL_OBJ_FILE */
    int prot;                /* PROT_* every read-write sharer maps it with */
    uint64_t file_offset;    /* FILE: where in the file */
    uint64_t dev, ino;       /* FILE: which file */
    char path[RPAL_OBJ_PATH_MAX]; /* FILE: its path when it was mapped ("" if
                                     longer), how later attachers open it */
};

/* The current layout of NAME: stores at most MAX objects in offset order
 * and the change counter in *GENERATION (may be NULL); returns the number
 * of objects (which may exceed MAX). Needs read permission, like stat. */
int rpal_region_layout(const char *name, uint32_t *generation,
                       struct rpal_region_object *objs, unsigned max);

/* Describe NAME without attaching it. */
int rpal_region_stat(const char *name, struct rpal_region_info *info);

/* Call FN for every region in the namespace that the caller may see, in
 * name order. A non-zero return from FN stops the walk and is returned. */
int rpal_region_foreach(int (*fn)(const struct rpal_region_info *info,
                                  void *arg),
                        void *arg);

/* ------------------------------------------------------------------------ */
/* Namespace and housekeeping.                                               */
/* ------------------------------------------------------------------------ */

/* The namespace directory: $RPAL_DIR, or /dev/shm/rpal. */
const char *rpal_ns_dir(void);

/* Remove what belongs only to dead processes: transient regions whose
 * creator died and that no live process maps, address reservations of
 * processes that died while creating a region, reservations of regions
 * whose file was removed by other means, lock files of regions that never
 * got (or lost) their name, slot claims and service sockets of dead domain
 * members; in a namespace shared by several users, registry entries of
 * another user (not root) beyond its quota. FN (may be NULL) is called once
 * per removed item with a short kind ("region", "reservation", "quota",
 * "lock", "member", "service") and a name.
 * Returns the number of items removed, or a negative errno. */
int rpal_gc(void (*fn)(const char *kind, const char *name, void *arg),
            void *arg);

/* ------------------------------------------------------------------------ */
/* Domains: slots at the same address in every member (RPAL's partitions).   */
/* ------------------------------------------------------------------------ */

/* A domain is a window of address space reserved (PROT_NONE) in every
 * member. Each member owns one slot of it: writable by the owner, and mapped
 * read-only in the peers that it shares with (after consent). A process is
 * in at most one domain at a time. The slot is not inherited across fork():
 * a child joins on its own. */

#define RPAL_DEFAULT_DOMAIN "default"
/* The slot size of a domain whose creator asks for none (slot_size 0, or
 * NULL options): 64 GiB, 256 slots in the 16 TiB window; 4 GiB, 64 slots,
 * when the library is built for ThreadSanitizer or valgrind, whose window
 * is 256 GiB (see docs/sanitizers.md). The library's build decides, not the
 * flags of the program that includes this header (a program built with
 * TSan may use a library built without it): a call, not a constant. */
uint64_t rpal_default_slot_size(void);
#define RPAL_DEFAULT_SLOT_SIZE (rpal_default_slot_size())

typedef struct rpal_domain rpal_domain;
typedef struct rpal_service rpal_service;
typedef struct rpal_peer rpal_peer;

struct rpal_domain_opts {
    uint64_t slot_size; /* bytes, a power of two >= 16 MiB; 0: the default.
                           Used by the member that creates the domain; a
                           later joiner passing a different size gets
                           -EINVAL. */
};

/* Join the domain NAME (NULL: "default"), creating it if needed, and take a
 * free slot. OPTS may be NULL. -EBUSY if this process is already in a
 * domain; -ENOSPC if every slot is taken by a live member. */
int rpal_domain_join(const char *name, const struct rpal_domain_opts *opts,
                     rpal_domain **out);

/* Release every peer, unregister every service, give the slot back. */
int rpal_domain_leave(rpal_domain *d);

/* This member's slot: its index, base address and size. */
int rpal_domain_slot(const rpal_domain *d, unsigned *index, void **base,
                     uint64_t *size);

/* A descriptor that becomes readable (poll/epoll) when rpal_domain_dispatch()
 * has work: a handshake to answer, a peer that died or released. */
int rpal_domain_fd(const rpal_domain *d);

enum rpal_event_type {
    RPAL_EV_PEER_ACCEPTED = 1, /* a requester was granted one of our services */
    RPAL_EV_PEER_GONE = 2,     /* a peer released, or died; its slot is unmapped */
};

struct rpal_event {
    int type;          /* enum rpal_event_type */
    int reason;        /* PEER_GONE: 0 released, -ESRCH died */
    rpal_peer *peer;   /* valid until rpal_peer_release() */
};

/* Answer pending handshakes and collect peer events, waiting at most
 * TIMEOUT_MS (0: do not wait, -1: forever) for the first one. Returns the
 * number of events stored in EV (at most MAX), or a negative errno. */
int rpal_domain_dispatch(rpal_domain *d, struct rpal_event *ev, int max,
                         int timeout_ms);

/* A live member of a domain, as `rpal ls` shows it. */
struct rpal_member_info {
    char domain[65];
    unsigned slot;
    uint64_t base, slot_size;
    pid_t pid;
    uint32_t uid;
    unsigned nservices, npeers;
    char services[8][65];  /* the services it offers */
    unsigned peers[256];   /* the slots of the members it shares with */
    /* Its pid namespace (inode of /proc/PID/ns/pid; 0: unknown), and 1 if
     * that is not the caller's: then PID is its pid in its own namespace,
     * not one the caller can use (docs/containers.md). */
    uint64_t pidns;
    int other_pidns;
};

/* Call FN for every live member of every domain the caller may see, by
 * domain name then slot. A non-zero return from FN stops the walk. */
int rpal_domain_foreach(int (*fn)(const struct rpal_member_info *info,
                                  void *arg),
                        void *arg);

/* ---- the heap in one's own slot ---- */

/* Allocate in the caller's own slot (thread-safe). Peers that share with us
 * read these blocks at the same address. NULL if not in a domain or out of
 * memory. */
void *rpal_malloc(size_t size);
void *rpal_calloc(size_t n, size_t size);
void *rpal_realloc(void *p, size_t size);
/* 0, or -EINVAL for a pointer that is not a live block of our own heap (a
 * peer's memory, a stray pointer, a double free): reported, never followed. */
int rpal_free(void *p);

/* ---- services and consent ---- */

/* An unguessable key (128 random bits) that a requester must present. */
typedef struct {
    uint8_t bytes[16];
} rpal_key;

/* 32 hex digits and a NUL; and back (-EINVAL on anything else). */
int rpal_key_format(const rpal_key *key, char out[33]);
int rpal_key_parse(const char *text, rpal_key *key);

struct rpal_peer_info {
    pid_t pid;          /* checked by the kernel (SO_PEERCRED) */
    uint32_t uid, gid;
    unsigned slot;
    char service[RPAL_NAME_MAX + 1];
};

/* A policy callback: 0 accepts, a negative errno refuses (the requester gets
 * -EACCES). Called only for requesters that presented the right key. */
typedef int (*rpal_policy_fn)(const struct rpal_peer_info *requester,
                              void *arg);

/* Register the service NAME in D's domain; MODE (0: 0600) is the permission
 * of its rendezvous socket: who may ask at all. POLICY may be NULL (accept
 * anyone with the key). -EEXIST if a live process has the name. */
int rpal_service_register(rpal_domain *d, const char *name, unsigned mode,
                          rpal_policy_fn policy, void *arg,
                          rpal_service **out);
int rpal_service_key(const rpal_service *s, rpal_key *key);
int rpal_service_unregister(rpal_service *s);

/* Ask the service NAME for sharing, presenting KEY, waiting at most
 * TIMEOUT_MS for its answer (the service answers from its dispatch loop).
 * On success each side maps the other's slot read-only at its address.
 * -EACCES: wrong key or refused (nothing is mapped); -ENOENT: no such
 * service; -ETIMEDOUT; -ECONNREFUSED: its process is gone. */
int rpal_service_request(rpal_domain *d, const char *name, const rpal_key *key,
                         int timeout_ms, rpal_peer **out);

/* End the sharing with P (either side may): both unmap each other's slot;
 * the other side gets RPAL_EV_PEER_GONE with reason 0. Frees P. */
int rpal_peer_release(rpal_peer *p);

/* Opt-in hardening of the calling process against peers of its own user
 * (docs/hardening.md "Threat model"). RPAL_HARDEN_NO_PTRACE: no longer
 * dumpable (PR_SET_DUMPABLE 0), so that a non-root process cannot write or
 * read our memory through /proc/PID/mem or process_vm_writev/readv, nor
 * reopen our descriptors through /proc/PID/fd. Costs: no core dumps, and
 * only root can attach a debugger or strace. Lost at execve. */
#define RPAL_HARDEN_NO_PTRACE 0x1u
int rpal_harden(unsigned flags);

int rpal_peer_info(const rpal_peer *p, struct rpal_peer_info *info);
/* The peer's slot, mapped read-only (NULL once the peer is gone). */
const void *rpal_peer_base(const rpal_peer *p);
uint64_t rpal_peer_size(const rpal_peer *p);

/* ---- protection keys ---- */

#define RPAL_CAP_PKU 0x1u /* peer slots are guarded by protection keys */

/* What this machine gives: RPAL_CAP_PKU if the CPU and kernel have
 * protection keys. */
unsigned rpal_capabilities(void);

/* Open and close a window, for the calling thread, in which P's slot may be
 * read. Outside a window a read of a peer's slot faults (SEGV_PKUERR) when
 * RPAL_CAP_PKU is set; without it these only count. Windows nest. */
int rpal_peer_access_begin(rpal_peer *p);
int rpal_peer_access_end(rpal_peer *p);

/* ------------------------------------------------------------------------ */
/* Channels and calls.                                                       */
/* ------------------------------------------------------------------------ */

/* A channel joins one caller thread to a service it shares with. The
 * requests live in the caller's slot, the replies in the service's: each
 * side writes only its own memory. A channel is used by one thread at a
 * time; open one per calling thread. */

#define RPAL_HAVE_CALL 1 /* this header has the channel API */

typedef struct rpal_chan rpal_chan;
typedef struct rpal_receiver rpal_receiver;

enum rpal_wait_policy {
    RPAL_WAIT_ADAPTIVE = 0, /* learn from past waits: spin only while waits are
                               shorter than a sleep costs and the other side
                               runs on another CPU; yield when it shares ours;
                               else sleep (docs/waiting.md) */
    RPAL_WAIT_POLL = 1,     /* spin until the deadline (burns a CPU) */
    RPAL_WAIT_SLEEP = 2,    /* sleep on a futex at once */
};

struct rpal_chan_opts {
    int wait;          /* enum rpal_wait_policy */
    unsigned spin_us;  /* ADAPTIVE: the most a wait spins (0: RPAL_SPIN_US,
                          100 us by default); the budget is learned below it */
    int same_cpu;      /* caller and receiver share one CPU (RPAL's "cpu
                          lock"): hand over with sched_yield(), never spin.
                          ADAPTIVE finds this out by itself */
    unsigned depth;    /* ring entries, a power of two <= 1024 (0: 64) */
};

/* Requests and replies up to this size travel inside the ring entry. */
#define RPAL_INLINE_MAX 40

/* Open a channel to the service behind PEER (a peer we requested). Blocks
 * until the service's dispatch loop has accepted it, at most TIMEOUT_MS. */
int rpal_chan_open(rpal_peer *peer, const struct rpal_chan_opts *opts,
                   int timeout_ms, rpal_chan **out);
int rpal_chan_close(rpal_chan *c);

/* Synchronous call: send REQ (LEN bytes), wait for the reply, copy at most
 * REPLY_MAX bytes of it into REPLY and its length into *REPLY_LEN.
 * A request inside the caller's own slot (rpal_malloc) is passed as a
 * pointer and read in place by the service (zero copy); a small one is
 * copied into the ring; a large one elsewhere is copied once into the slot.
 * -ETIMEDOUT: no reply by the deadline; -ESRCH: the service died;
 * -ESHUTDOWN: it closed the channel or released us; -EMSGSIZE: the reply
 * did not fit (*REPLY_LEN says how big it was). */
int rpal_call(rpal_chan *c, const void *req, size_t len, void *reply,
              size_t reply_max, size_t *reply_len, int timeout_ms);

/* Asynchronous: queue a request tagged TAG (-EAGAIN if DEPTH are already
 * outstanding) and collect replies in order with rpal_complete(). */
int rpal_send(rpal_chan *c, const void *req, size_t len, uint64_t tag);
int rpal_complete(rpal_chan *c, uint64_t *tag, void *reply, size_t reply_max,
                  size_t *reply_len, int timeout_ms);

/* A received request. DATA points into the caller's slot (read in place,
 * inside an access window the library opens until the reply) or into the
 * ring entry; it is valid until rpal_reply(). */
struct rpal_msg {
    const void *data;
    size_t len;
    rpal_peer *peer;    /* who called */
    void *internal[2];  /* for rpal_reply */
    unsigned char inline_copy[RPAL_INLINE_MAX]; /* small requests land here */
};

/* A receiver serves channels of service S on the calling thread; new
 * channels are spread over a service's receivers. */
int rpal_receiver_create(rpal_service *s, const struct rpal_chan_opts *opts,
                         rpal_receiver **out);
int rpal_receiver_destroy(rpal_receiver *r);

/* Wait at most TIMEOUT_MS for the next request on any of R's channels. */
int rpal_receive(rpal_receiver *r, struct rpal_msg *m, int timeout_ms);

/* One loop for a service, on one thread: wait at most TIMEOUT_MS for the
 * next request on any of R's channels (into *M, as rpal_receive) or the next
 * event of R's domain (into *EV, as rpal_domain_dispatch, whose work of
 * answering handshakes it also does). Returns RPAL_SERVE_MSG or
 * RPAL_SERVE_EVENT, -ETIMEDOUT, or a negative errno. While requests flow it
 * makes no system call per request (the domain's set is looked at every 64
 * requests, and every 10 us of waiting); asleep, it wakes for either. */
enum { RPAL_SERVE_MSG = 1, RPAL_SERVE_EVENT = 2 };
int rpal_serve(rpal_receiver *r, struct rpal_msg *m, struct rpal_event *ev, int timeout_ms);

/* Answer M, exactly once. A reply up to RPAL_INLINE_MAX bytes travels in
 * the ring; a larger one is copied once into our slot, where the caller
 * reads it (the library frees it once the caller has taken it). */
int rpal_reply(rpal_receiver *r, const struct rpal_msg *m, const void *data,
               size_t len);

/* What a channel or an upgraded connection has done, and what waiting on
 * it cost: why it costs what it costs. */
struct rpal_stats {
    uint64_t msgs_out, bytes_out;  /* messages and bytes sent */
    uint64_t msgs_in, bytes_in;    /* and received */
    uint64_t wakes;                /* wake-ups sent: the other side slept */
    uint64_t wakes_skipped;        /* messages that found it awake: none sent */
    uint64_t waits;                /* times we waited for the other side */
    uint64_t sleeps;               /* waits that slept in the kernel */
    uint64_t spin_hits;            /* waits that a spin ended */
    uint64_t yields;               /* sched_yield()s to the other side */
    uint64_t spin_ns;              /* time spent spinning */
    uint32_t budget_ns;            /* the spin budget of the last wait */
    uint32_t reserved;
};

/* The counters of channel C, or of the upgraded connection FD (-EBADF: not
 * an upgraded connection of ours). */
int rpal_chan_stats(const rpal_chan *c, struct rpal_stats *out);
int rpal_fd_stats(int fd, struct rpal_stats *out);

enum { RPAL_STATS_CALLER = 1, RPAL_STATS_SERVICE = 2, RPAL_STATS_CONN = 3 };

/* One channel or connection of a live member, as `rpal stat` shows it. The
 * counters are those of at most 100 ms ago (or 1,024 waits). */
struct rpal_stats_entry {
    char domain[65];
    unsigned slot;         /* the member's */
    pid_t pid;
    int kind;              /* RPAL_STATS_*: the caller's or the service's end
                              of a channel, or an upgraded connection */
    unsigned peer_slot;
    pid_t peer_pid;
    int fd;                /* CONN: the descriptor, in the member */
    char service[65];      /* CALLER, SERVICE: the service */
    uint32_t state;        /* 0 running, 1 spinning, 2 yielding, 3 asleep */
    struct rpal_stats s;
    /* 1 if the member (PID), or its peer (PEER_PID), is in another pid
     * namespace than the caller's: the pid is then its pid in its own
     * namespace, as rpal_member_info says (0 if no one could name it). */
    int other_pidns, peer_other_pidns;
};

/* Call FN for every channel and upgraded connection of every live member
 * of every domain the caller may see. A non-zero return from FN stops the
 * walk. */
int rpal_stats_foreach(int (*fn)(const struct rpal_stats_entry *e, void *arg), void *arg);

/* ------------------------------------------------------------------------ */
/* Compat: an epoll + Unix-socket program switches with a few lines.
 *
 * rpal_uds_fdmap() upgrades a connected Unix stream socket between two
 * members of one domain: each end then writes messages into a ring in its
 * own slot and reads the other's, and the socket only carries wake-ups
 * (one byte, sent only to a peer that said it sleeps) and the end of the
 * connection. rpal_read/rpal_write/rpal_close take the place of
 * read/write/close on such a descriptor, and act as those on any other.
 * rpal_epoll_ctl/rpal_epoll_wait take the place of epoll_ctl/epoll_wait on
 * an epoll set: mapped descriptors report EPOLLIN/EPOLLOUT from their rings
 * (level-triggered, EPOLLET and EPOLLONESHOT as epoll has them), plain ones
 * as the kernel says; while ring events are pending, waiting makes no
 * system call. Add every descriptor of such a set with rpal_epoll_ctl.
 * One thread at a time may wait on a set. See rpal_uds_fdmap(3). */

#define RPAL_HAVE_COMPAT 1 /* this header has the compat API */

struct epoll_event;

/* Upgrade the connected Unix stream socket FD (connected to a process of
 * D's domain, which calls rpal_uds_fdmap on its end too) to an rpal
 * connection, with an in-band handshake (slot memfds pass as SCM_RIGHTS; the
 * peer's credentials are checked against its slot claim).
 * Returns 1 when upgraded; 0 when the peer is not a member of the domain:
 * nothing was sent or received and FD works exactly as before; -ETIMEDOUT
 * when the peer did not answer within TIMEOUT_MS, -EPROTO when it answered
 * something else (the connection is then unusable: close it). */
int rpal_uds_fdmap(rpal_domain *d, int fd, int timeout_ms);

/* Like read(2)/write(2) on FD (stream semantics: a read may return part of
 * a message, or several), but through the rings when FD is mapped. Bytes,
 * 0 at the end of the connection, or a negative errno: -EAGAIN when FD is
 * non-blocking and nothing can be done now. A write of up to
 * RPAL_INLINE_MAX bytes travels inside the ring; a larger one is copied
 * once into our slot. */
ssize_t rpal_read(int fd, void *buf, size_t len);
ssize_t rpal_write(int fd, const void *buf, size_t len);
/* Close FD (and its rpal connection: the peer reads the end). */
int rpal_close(int fd);

/* epoll_ctl(2)/epoll_wait(2) for sets that may hold mapped descriptors.
 * Wait returns the number of events or a negative errno. */
int rpal_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);
int rpal_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
                    int timeout_ms);
/* For a foreign event loop that watches EPFD (the "backend fd", as libuv's
 * uv_backend_fd): call before the loop blocks. Returns the timeout the loop
 * may block for: 0 when rpal events are pending (call rpal_epoll_wait with
 * timeout 0), -1 when none (peers will wake EPFD up). */
int rpal_epoll_timeout(int epfd);

#ifdef __cplusplus
}
#endif
#endif /* RPAL_H */
