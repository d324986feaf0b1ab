/* kv_service: a small key-value service, the program to copy.
 *
 *   kv_service [--key-file PATH]
 *
 * It keeps its table in its own slot of the domain "default": its callers
 * map that slot read-only at the same address and read values in place,
 * without a call; writes go through calls (KV_PUT, KV_DEL), which only the
 * service applies. Run it, then build/examples/kv_client in another
 * terminal. It serves until SIGINT or SIGTERM.
 *
 * The shape of a service on one thread:
 *
 *   1. join the domain, put the shared data in the slot (rpal_malloc);
 *   2. register the service and create its receiver: before the key is
 *      handed out, since a caller that opens a channel to a service with
 *      no receiver gets -EAGAIN;
 *   3. hand out the key: here a file only our user may read; whoever holds
 *      the key may ask for consent (rpal_service_request), and the policy
 *      callback may still refuse;
 *   4. one loop, rpal_serve(): it answers consents and channel opens,
 *      reports callers that leave or die, and returns the requests, with no
 *      system call per request while they flow and no second thread;
 *   5. on the way out: the key file first (no new caller takes a dying
 *      key), then the receiver, the service, the domain (callers get
 *      -ESHUTDOWN, or -ESRCH if we die instead: a restart is theirs to
 *      notice, see kv_client.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <rpal.h>

#include "kv.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int die(const char *what, int err)
{
    fprintf(stderr, "kv_service: %s: %s\n", what, rpal_strerror(err));
    return 1;
}

/* ---- the table: ours in private memory, published in our slot ---- */

/* The table as we know it, in private memory: what we look up. Every
 * change is made here, then published into the shared table, which we
 * only ever write. */
static struct kv_data mine[KV_SLOTS];
static struct kv_table *table; /* in our slot: callers read it in place */

/* Change entry I to STATE, KEY, VALUE, and publish it under its sequence
 * number: odd while we write, even again after, so that a caller reading
 * it at the same time sees the change and reads again. */
static void entry_write(uint32_t i, uint32_t state, const char *key, const char *value,
                        uint32_t vlen)
{
    struct kv_data *d = &mine[i];
    memset(d, 0, sizeof *d);
    d->state = state;
    d->vlen = vlen;
    strcpy(d->key, key); /* checked shorter than KV_KEY_MAX */
    memcpy(d->value, value, vlen);
    uint64_t w[KV_WORDS];
    memcpy(w, d, sizeof w);
    struct kv_entry *e = &table->e[i];
    uint64_t s = atomic_load_explicit(&e->seq, memory_order_relaxed);
    atomic_store_explicit(&e->seq, s + 1, memory_order_relaxed);
    /* Each word a release: after the odd number, for a caller whose
     * acquire load reads it (and then sees that number). */
    for (size_t k = 0; k < KV_WORDS; k++)
        atomic_store_explicit(&e->w[k], w[k], memory_order_release);
    /* the words before the even number: pairs with the caller's acquire
     * load of seq */
    atomic_store_explicit(&e->seq, s + 2, memory_order_release);
}

/* The index of KEY's live entry, or -1; *FREE_I: where it would go (-1:
 * the table is full). */
static int find(const char *key, int *free_i)
{
    uint32_t h = kv_hash(key);
    *free_i = -1;
    for (uint32_t n = 0; n < KV_SLOTS; n++) {
        uint32_t i = (h + n) & (KV_SLOTS - 1);
        if (mine[i].state == KV_LIVE && !strcmp(mine[i].key, key))
            return (int)i;
        if (mine[i].state != KV_LIVE && *free_i < 0)
            *free_i = (int)i;
        if (mine[i].state == KV_EMPTY)
            break; /* the end of KEY's chain */
    }
    return -1;
}

static int put(const char *key, const char *value, uint32_t vlen)
{
    int free_i, i = find(key, &free_i);
    if (i < 0 && (i = free_i) < 0)
        return -ENOSPC;
    entry_write((uint32_t)i, KV_LIVE, key, value, vlen);
    return 0;
}

/* ---- the calls ---- */

/* Answer the request M (exactly once, as every request must be). */
static int answer(rpal_receiver *r, const struct rpal_msg *m)
{
    struct kv_req req;
    struct kv_rep rep = {0};
    size_t rep_len = KV_REP_HEAD;
    /* The request lies in the caller's memory, which the caller may still
     * change: copy it once, then check only the copy. */
    memset(&req, 0, sizeof req);
    memcpy(&req, m->data, m->len < sizeof req ? m->len : sizeof req);
    if (m->len < KV_REQ_HEAD || m->len > sizeof req ||
        memchr(req.key, 0, KV_KEY_MAX) == NULL || (req.op != KV_HELLO && !req.key[0])) {
        rep.status = -EINVAL;
    } else if (req.op == KV_HELLO) {
        rep.table = (uint64_t)(uintptr_t)table; /* the same address in the caller */
    } else if (req.op == KV_PUT) {
        if (req.vlen > KV_VALUE_MAX || m->len != KV_REQ_HEAD + req.vlen)
            rep.status = -EMSGSIZE;
        else
            rep.status = put(req.key, req.value, req.vlen);
    } else if (req.op == KV_DEL || req.op == KV_GET) {
        int free_i, i = find(req.key, &free_i);
        if (i < 0) {
            rep.status = -ENOENT;
        } else if (req.op == KV_DEL) {
            entry_write((uint32_t)i, KV_DELETED, "", "", 0);
        } else {
            rep.vlen = mine[i].vlen;
            memcpy(rep.value, mine[i].value, mine[i].vlen);
            rep_len += mine[i].vlen;
        }
    } else {
        rep.status = -EOPNOTSUPP;
    }
    return rpal_reply(r, m, &rep, rep_len);
}

/* ---- consent ---- */

/* Called for each requester that presented the right key: 0 accepts. The
 * key is the consent; this is where a service would also look at who asks
 * (its uid and pid, checked by the kernel). */
static int policy(const struct rpal_peer_info *who, void *arg)
{
    (void)arg;
    return who->uid == getuid() ? 0 : -EPERM;
}

/* Leave the key in PATH for our callers: written to a new file of mode
 * 0600 (O_EXCL: a file planted there is never written through) renamed
 * over PATH, so that a caller never reads half a key. */
static int write_key(const char *path, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int err = 0;
    if (fchmod(fd, 0600) < 0 || dprintf(fd, "%s\n", text) != 33)
        err = errno ? -errno : -EIO;
    if (close(fd) < 0 && !err)
        err = -errno;
    if (!err && rename(tmp, path) < 0)
        err = -errno;
    if (err)
        unlink(tmp);
    return err;
}

/* Remove PATH if it still holds our key (a newer service may own it). */
static void remove_key(const char *path, const char *text)
{
    char buf[40] = "";
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    int ours = fgets(buf, sizeof buf, f) && !strncmp(buf, text, 32);
    fclose(f);
    if (ours)
        unlink(path);
}

int main(int argc, char **argv)
{
    const char *key_opt = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--key-file") && i + 1 < argc) {
            key_opt = argv[++i];
        } else {
            fprintf(stderr, "usage: kv_service [--key-file PATH]\n"
                            "(then run kv_client in another terminal)\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
    }
    char key_path[4096];
    if (kv_key_path(key_opt, key_path, sizeof key_path) < 0) {
        fprintf(stderr, "kv_service: no place for the key: set HOME or pass --key-file PATH\n");
        return 2;
    }
    /* SIGINT and SIGTERM end the loop (rpal_serve does not return early
     * for a signal: the loop looks at STOP between waits of 200 ms). */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* 1. The domain, and the table in our slot. */
    rpal_domain *d;
    int err = rpal_domain_join(NULL, NULL, &d);
    if (err < 0)
        return die("rpal_domain_join", err);
    table = rpal_calloc(1, sizeof *table);
    if (!table)
        return die("rpal_calloc", -ENOMEM);
    table->magic = KV_MAGIC;
    table->nslots = KV_SLOTS;
    put("hello", "world", 5); /* a value for callers to find */

    /* 2. The service and its receiver. */
    rpal_service *s;
    if ((err = rpal_service_register(d, KV_SERVICE, 0600, policy, NULL, &s)) < 0) {
        if (err == -EEXIST)
            fprintf(stderr, "kv_service: another kv_service runs in the domain "
                            "(`rpal ls` shows it): stop it first\n");
        return die("rpal_service_register", err);
    }
    rpal_receiver *r;
    if ((err = rpal_receiver_create(s, NULL, &r)) < 0)
        return die("rpal_receiver_create", err);

    /* 3. The key, for callers. */
    rpal_key key;
    char text[33];
    rpal_service_key(s, &key);
    rpal_key_format(&key, text);
    if ((err = write_key(key_path, text)) < 0) {
        fprintf(stderr, "kv_service: cannot write the key to %s: %s\n", key_path,
                rpal_strerror(err));
        return 1;
    }
    unsigned slot;
    rpal_domain_slot(d, &slot, NULL, NULL);
    printf("kv_service: pid %d, slot %u of domain \"%s\" in %s; table at %p; key in %s\n",
           (int)getpid(), slot, RPAL_DEFAULT_DOMAIN, rpal_ns_dir(), (void *)table, key_path);

    /* 4. One loop. */
    unsigned long requests = 0, callers = 0;
    while (!stop) {
        struct rpal_msg m;
        struct rpal_event ev;
        int n = rpal_serve(r, &m, &ev, 200);
        if (n == RPAL_SERVE_MSG) {
            err = answer(r, &m);
            /* -ESHUTDOWN: the caller left before its answer; nothing to do */
            if (err < 0 && err != -ESHUTDOWN)
                fprintf(stderr, "kv_service: rpal_reply: %s\n", rpal_strerror(err));
            requests++;
        } else if (n == RPAL_SERVE_EVENT) {
            struct rpal_peer_info who;
            rpal_peer_info(ev.peer, &who);
            if (ev.type == RPAL_EV_PEER_ACCEPTED) {
                callers++;
                printf("kv_service: caller pid %d (slot %u) accepted\n", (int)who.pid, who.slot);
            } else if (ev.type == RPAL_EV_PEER_GONE) {
                printf("kv_service: caller pid %d (slot %u) %s\n", (int)who.pid, who.slot,
                       ev.reason == 0 ? "left" : "died");
                rpal_peer_release(ev.peer); /* frees the handle */
            }
        } else if (n != -ETIMEDOUT) {
            die("rpal_serve", n);
            break;
        }
    }

    /* 5. Out, in this order. */
    remove_key(key_path, text);
    rpal_receiver_destroy(r);
    rpal_service_unregister(s);
    rpal_domain_leave(d);
    printf("kv_service: served %lu requests from %lu callers\n", requests, callers);
    return 0;
}
