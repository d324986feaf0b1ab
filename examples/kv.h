/* What kv_service and kv_client share: the table the service keeps in its
 * own slot, which callers read in place through the shared memory; the
 * calls that change it; and where the service leaves its key.
 *
 * The table is the service's memory: it alone writes it (principle 2 of
 * docs/design.md), and every caller maps it read-only at the same address.
 * A caller reads an entry without a call, under the entry's sequence
 * number (a seqlock); it writes only through calls (KV_PUT, KV_DEL), which
 * the service checks and applies. See examples/kv_service.c.
 *
 * Both sides access an entry's words atomically (C11 <stdatomic.h>): the
 * service rewrites them while callers read them, in other processes. Each
 * word the service stores is a release (after the odd sequence number) and
 * each word a caller loads an acquire (before its second look at the
 * number), so that no fence is needed, which ThreadSanitizer could not
 * follow.
 */
#ifndef KV_H
#define KV_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define KV_SERVICE "kv"       /* the service's name in the domain */
#define KV_MAGIC 0x656c6261742d766bull /* "kv-table" */
#define KV_SLOTS 1024u        /* entries in the table, a power of two */
#define KV_KEY_MAX 32u        /* bytes of a key, its NUL included */
#define KV_VALUE_MAX 80u      /* bytes of a value */

enum { KV_EMPTY = 0, KV_LIVE = 1, KV_DELETED = 2 };

struct kv_data {               /* 120 bytes: 15 words */
    uint32_t state;           /* KV_EMPTY, KV_LIVE or KV_DELETED */
    uint32_t vlen;            /* bytes of value */
    char key[KV_KEY_MAX];     /* NUL-terminated (a caller checks anyway) */
    char value[KV_VALUE_MAX];
};
#define KV_WORDS (sizeof(struct kv_data) / sizeof(uint64_t))
_Static_assert(sizeof(struct kv_data) % sizeof(uint64_t) == 0, "kv_data is whole words");

struct kv_entry {             /* 128 bytes: two cache lines */
    /* Even while the entry is stable, odd while the service rewrites it:
     * a reader that sees the same even number before and after its copy
     * has a consistent copy. */
    _Atomic uint64_t seq;
    _Atomic uint64_t w[KV_WORDS]; /* a struct kv_data, as words */
};

struct kv_table {             /* lives in the service's slot */
    uint64_t magic;           /* KV_MAGIC */
    uint32_t nslots;          /* KV_SLOTS */
    uint32_t pad;
    struct kv_entry e[KV_SLOTS];
};

/* The calls. A request is its 40-byte head (which travels inside the ring
 * entry), and for KV_PUT the value after it. */
enum { KV_HELLO = 1, KV_PUT = 2, KV_DEL = 3, KV_GET = 4 };

struct kv_req {
    uint32_t op;              /* KV_HELLO, KV_PUT, KV_DEL, KV_GET */
    uint32_t vlen;            /* KV_PUT: bytes of value */
    char key[KV_KEY_MAX];     /* NUL-terminated */
    char value[KV_VALUE_MAX]; /* KV_PUT only */
};
#define KV_REQ_HEAD offsetof(struct kv_req, value)

struct kv_rep {
    int32_t status;           /* 0, or a negative errno */
    uint32_t vlen;            /* KV_GET: bytes of value */
    uint64_t table;           /* KV_HELLO: the table's address, in the service's slot */
    char value[KV_VALUE_MAX]; /* KV_GET */
};
#define KV_REP_HEAD offsetof(struct kv_rep, value)

/* Where the table entry of KEY is looked for first (FNV-1a). */
static inline uint32_t kv_hash(const char *key)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < KV_KEY_MAX && key[i]; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h;
}

/* The file in which the service leaves its key for its callers: PATH if
 * given (--key-file), else $XDG_RUNTIME_DIR/rpal-kv.key (a directory only
 * its user may enter), else $HOME/.rpal-kv.key. The file is made with mode
 * 0600: whoever may read it may call the service, so only the user who
 * runs the service may (the domain's directory says the same: its members
 * are processes of one user). */
static inline int kv_key_path(const char *path, char *out, size_t size)
{
    const char *run = getenv("XDG_RUNTIME_DIR"), *home = getenv("HOME");
    int n;
    if (path)
        n = snprintf(out, size, "%s", path);
    else if (run && *run)
        n = snprintf(out, size, "%s/rpal-kv.key", run);
    else if (home && *home)
        n = snprintf(out, size, "%s/.rpal-kv.key", home);
    else
        return -1;
    return n > 0 && (size_t)n < size ? 0 : -1;
}

#endif /* KV_H */
