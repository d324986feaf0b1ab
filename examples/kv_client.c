/* kv_client: calls kv_service, checks every answer, exits 0 if all were
 * right.
 *
 *   kv_client [--key-file PATH] [--callers N] [--rounds N | --seconds S]
 *             [--reconnects N] [--wait S]
 *
 * A round: read "hello" in place, put five keys and read each back in
 * place, get one with a call, delete one and see it gone. With --callers
 * N, N processes do that at once, each a member of its own. With
 * --seconds S, rounds go on for S seconds; a service that stops or dies
 * meanwhile is waited for (up to 10 s) and asked again, and the round
 * starts over (a restarted service starts with an empty table: it is a
 * cache). --reconnects N ends the run once the service came back N times.
 * --wait S waits up to S seconds for a service at the start (default 1,
 * for a service started a moment before), then says what is missing.
 *
 * How the key reaches us: kv_service writes it to a file of mode 0600
 * ($XDG_RUNTIME_DIR/rpal-kv.key, else ~/.rpal-kv.key, or --key-file), so
 * that only its user can read it; we read it only if it is a regular file
 * of our own user that nobody else may read, since whoever can plant a key
 * could point us at a service of its choosing. Any secret channel would
 * do (a pipe to a child, an inherited descriptor, a configuration file).
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <rpal.h>

#include "kv.h"

#define WRONG 1 /* a round's answer that does not check: not the service's absence */

static const char *key_path;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* What we hold of the service while connected. */
struct kv {
    rpal_domain *d;
    rpal_peer *p;               /* the service: its slot mapped read-only */
    rpal_chan *c;               /* our calls to it */
    const struct kv_table *t;   /* its table, at its address in our process */
    pid_t pid;                  /* its process */
};

/* Errors that say the service is not there (not yet, or no more): worth
 * waiting for it. */
static int gone(int err)
{
    return err == -ESRCH || err == -ESHUTDOWN || err == -ECONNREFUSED || err == -ENOENT ||
           err == -EACCES || err == -EAGAIN || err == -ETIMEDOUT || err == -EPROTO;
}

/* The key, from a file that only our user may have written and read. */
static int read_key(char text[33])
{
    int fd = open(key_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == getuid() &&
        !(st.st_mode & 077))
        n = read(fd, text, 33);
    close(fd);
    if (n < 0)
        return -EPERM;
    text[n == 33 && text[32] == '\n' ? 32 : 0] = 0;
    return 0;
}

static int call(struct kv *k, const struct kv_req *req, size_t len, struct kv_rep *rep)
{
    size_t got;
    int err = rpal_call(k->c, req, len, rep, sizeof *rep, &got, 2000);
    if (err < 0)
        return err;
    /* The reply is the service's word: its length is checked like the rest. */
    if (got < KV_REP_HEAD || got > sizeof *rep || rep->vlen > KV_VALUE_MAX ||
        (rep->status == 0 && req->op == KV_GET && got != KV_REP_HEAD + rep->vlen))
        return -EPROTO;
    return rep->status;
}

/* Ask for consent, open a channel, find the table (once). */
static int try_connect(struct kv *k)
{
    char text[33];
    rpal_key key;
    int err = read_key(text);
    if (err < 0)
        return err;
    if (rpal_key_parse(text, &key) < 0)
        return -EACCES; /* half a key, or not one: a service being written */
    if ((err = rpal_service_request(k->d, KV_SERVICE, &key, 2000, &k->p)) < 0)
        return err;
    struct rpal_peer_info who;
    rpal_peer_info(k->p, &who);
    k->pid = who.pid;
    if ((err = rpal_chan_open(k->p, NULL, 2000, &k->c)) < 0)
        return err;
    struct kv_req req = {.op = KV_HELLO};
    struct kv_rep rep;
    if ((err = call(k, &req, KV_REQ_HEAD, &rep)) < 0)
        return err;
    /* A pointer from a peer: followed only if it lies in the peer's slot. */
    uintptr_t base = (uintptr_t)rpal_peer_base(k->p), size = rpal_peer_size(k->p);
    if (rep.table < base || rep.table % 8 || rep.table - base > size - sizeof *k->t)
        return -EPROTO;
    k->t = (const struct kv_table *)(uintptr_t)rep.table;
    rpal_peer_access_begin(k->p);
    int ok = k->t->magic == KV_MAGIC && k->t->nslots == KV_SLOTS;
    rpal_peer_access_end(k->p);
    return ok ? 0 : -EPROTO;
}

/* Drop what we hold of the service. */
static void disconnect(struct kv *k)
{
    if (k->c)
        rpal_chan_close(k->c); /* channels before their peer */
    if (k->p) {
        /* A service that left has released us: let dispatch report it
         * before we release our end and ask anew. */
        struct rpal_event ev[8];
        while (rpal_domain_dispatch(k->d, ev, 8, 0) > 0)
            ;
        rpal_peer_release(k->p);
    }
    k->c = NULL;
    k->p = NULL;
    k->t = NULL;
}

/* Connect, trying for up to WAIT_S seconds while the service is absent. */
static int connect_kv(struct kv *k, double wait_s)
{
    double end = now_s() + wait_s;
    for (;;) {
        int err = try_connect(k);
        if (err == 0)
            return 0;
        disconnect(k);
        if (!gone(err) || now_s() >= end)
            return err;
        usleep(50000);
    }
}

/* ---- reading in place ---- */

/* A consistent copy of entry E, or -EAGAIN if it kept changing: the
 * service rewrites entries while we read them, so the copy counts only if
 * E's sequence number was the same even number before and after it. The
 * tries are bounded: a service that keeps the number odd must not hang us. */
static int entry_read(const struct kv_entry *e, struct kv_data *out)
{
    for (int tries = 0; tries < 1000; tries++) {
        /* pairs with the release store that ends the service's write */
        uint64_t s = atomic_load_explicit(&e->seq, memory_order_acquire);
        if (s & 1) {
            sched_yield();
            continue;
        }
        uint64_t w[KV_WORDS];
        /* Each word an acquire: the second look at seq comes after all of
         * them, and a word of a write in progress shows its odd number. */
        for (size_t k = 0; k < KV_WORDS; k++)
            w[k] = atomic_load_explicit(&e->w[k], memory_order_acquire);
        if (atomic_load_explicit(&e->seq, memory_order_relaxed) == s) {
            memcpy(out, w, sizeof *out);
            return 0;
        }
    }
    return -EAGAIN;
}

/* Look KEY up in the service's table without a call: 1 and the value in
 * VALUE (VLEN bytes), 0 if absent, or a negative errno. */
static int lookup(const struct kv *k, const char *key, char *value, uint32_t *vlen)
{
    uint32_t h = kv_hash(key);
    int found = 0;
    rpal_peer_access_begin(k->p); /* the service's slot is read from here */
    for (uint32_t i = 0; i < KV_SLOTS; i++) {
        struct kv_data d;
        if ((found = entry_read(&k->t->e[(h + i) & (KV_SLOTS - 1)], &d)) < 0)
            break;
        if (d.state == KV_EMPTY)
            break;
        if (d.state == KV_LIVE && !strncmp(d.key, key, KV_KEY_MAX)) {
            /* a length read from a peer is checked before use */
            found = d.vlen <= KV_VALUE_MAX ? 1 : -EPROTO;
            if (found == 1) {
                memcpy(value, d.value, d.vlen);
                *vlen = d.vlen;
            }
            break;
        }
    }
    rpal_peer_access_end(k->p);
    return found;
}

/* ---- one round ---- */

/* KEY into a request: 0, or -EINVAL if it does not fit. */
static int set_key(struct kv_req *req, const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n >= KV_KEY_MAX)
        return -EINVAL;
    memcpy(req->key, key, n + 1);
    return 0;
}

static int put(struct kv *k, const char *key, const char *value)
{
    size_t vlen = strlen(value);
    if (vlen > KV_VALUE_MAX)
        return -EMSGSIZE;
    /* A request in our own slot (rpal_malloc) is read in place by the
     * service: no copy. A smaller one would travel in the ring. */
    struct kv_req *req = rpal_malloc(sizeof *req);
    if (!req)
        return -ENOMEM;
    memset(req, 0, sizeof *req);
    req->op = KV_PUT;
    req->vlen = (uint32_t)vlen;
    memcpy(req->value, value, vlen);
    struct kv_rep rep;
    int err = set_key(req, key);
    if (err == 0)
        err = call(k, req, KV_REQ_HEAD + vlen, &rep);
    rpal_free(req);
    return err;
}

static int get(struct kv *k, int op, const char *key, struct kv_rep *rep)
{
    struct kv_req req = {.op = (uint32_t)op};
    int err = set_key(&req, key);
    return err < 0 ? err : call(k, &req, KV_REQ_HEAD, rep);
}

/* Is KEY's value WANT (NULL: absent)? Read in place; if the entry kept
 * changing, or if it is not what we want, a call asks the service, which
 * tells a service that went away (its error) from a wrong answer (WRONG). */
static int check(struct kv *k, const char *key, const char *want)
{
    char value[KV_VALUE_MAX];
    uint32_t vlen = 0;
    int found = lookup(k, key, value, &vlen);
    if (found < 0 && found != -EAGAIN)
        return found;
    int how = found >= 0; /* 1: in place, 0: by call */
    for (;;) {
        if (found >= 0 && found == (want != NULL) &&
            (!want || (vlen == strlen(want) && !memcmp(value, want, vlen))))
            return 0;
        if (!how)
            break;
        struct kv_rep rep;
        int err = get(k, KV_GET, key, &rep);
        if (err < 0 && err != -ENOENT)
            return err;
        found = err == 0;
        vlen = rep.vlen;
        memcpy(value, rep.value, vlen);
        how = 0;
        fprintf(stderr, "kv_client: pid %d: %s read in place is not what we want\n",
                (int)getpid(), key);
    }
    fprintf(stderr, "kv_client: pid %d: %s is %s%.*s%s (want %s%s%s)\n", (int)getpid(), key,
            found ? "\"" : "absent", found ? (int)vlen : 0, value, found ? "\"" : "",
            want ? "\"" : "", want ? want : "absent", want ? "\"" : "");
    return WRONG;
}

static int round_once(struct kv *k, int round, int say)
{
    char key[5][KV_KEY_MAX], value[5][KV_VALUE_MAX];
    int err;
    if ((err = check(k, "hello", "world")) != 0)
        return err;
    for (int i = 0; i < 5; i++) {
        snprintf(key[i], sizeof key[i], "c%d.%d", (int)getpid(), i);
        snprintf(value[i], sizeof value[i], "value %d of pid %d, round %d", i, (int)getpid(),
                 round);
        if ((err = put(k, key[i], value[i])) < 0 || (err = check(k, key[i], value[i])) != 0)
            return err;
    }
    struct kv_rep rep;
    if ((err = get(k, KV_GET, key[2], &rep)) < 0)
        return err;
    if (rep.vlen != strlen(value[2]) || memcmp(rep.value, value[2], rep.vlen)) {
        fprintf(stderr, "kv_client: pid %d: get %s: a wrong value\n", (int)getpid(), key[2]);
        return WRONG;
    }
    if ((err = get(k, KV_DEL, key[0], &rep)) < 0 || (err = check(k, key[0], NULL)) != 0)
        return err;
    if ((err = get(k, KV_GET, key[0], &rep)) == 0) {
        fprintf(stderr, "kv_client: pid %d: %s still there after delete\n", (int)getpid(),
                key[0]);
        return WRONG;
    }
    if (err != -ENOENT)
        return err;
    if (say) {
        printf("kv_client: pid %d: hello = \"world\", read in place in the service's slot\n",
               (int)getpid());
        printf("kv_client: pid %d: 5 puts, each read back in place; a get and a delete by "
               "call: every answer checked\n", (int)getpid());
    }
    return 0;
}

struct opts {
    int callers, rounds, reconnects;
    double seconds, wait;
};

/* One caller: a member of the domain of its own. */
static int caller(const struct opts *o)
{
    struct kv k = {0};
    int err = rpal_domain_join(NULL, NULL, &k.d);
    if (err < 0) {
        fprintf(stderr, "kv_client: rpal_domain_join: %s\n", rpal_strerror(err));
        return 1;
    }
    if ((err = connect_kv(&k, o->wait)) < 0) {
        fprintf(stderr, "kv_client: cannot reach kv_service: %s\n", rpal_strerror(err));
        if (err == -ENOENT || err == -ECONNREFUSED)
            fprintf(stderr, "kv_client: is it running? Start build/examples/kv_service first "
                            "(as the same user, with the same RPAL_DIR), then this (key: %s)\n",
                    key_path);
        else if (err == -EPERM)
            fprintf(stderr, "kv_client: %s is not a file of ours that only we may read: "
                            "not trusted\n", key_path);
        else if (err == -EACCES)
            fprintf(stderr, "kv_client: the key in %s was refused: an old one?\n", key_path);
        rpal_domain_leave(k.d);
        return 1;
    }
    printf("kv_client: pid %d connected to kv_service (pid %d); its table is at %p\n",
           (int)getpid(), (int)k.pid, (const void *)k.t);
    double start = now_s(), lost = 0;
    int rounds = 0, since = 0, restarts = 0, rc = 0; /* SINCE: rounds since the last restart */
    for (;;) {
        double t = now_s() - start;
        if (o->reconnects) {
            if (restarts >= o->reconnects && since > 0)
                break;
            if (t >= o->seconds) {
                fprintf(stderr, "kv_client: pid %d: the service came back %d times in %.0f s, "
                                "not %d\n", (int)getpid(), restarts, o->seconds, o->reconnects);
                rc = 1;
                break;
            }
        } else if (o->seconds > 0 ? t >= o->seconds : rounds >= o->rounds) {
            break;
        }
        err = round_once(&k, rounds, o->callers == 1 && rounds == 0);
        if (err == 0) {
            rounds++;
            since++;
            if (o->seconds > 0 || o->reconnects)
                usleep(1000); /* a few hundred rounds a second is plenty */
            continue;
        }
        if (err == WRONG || !gone(err)) {
            if (err != WRONG)
                fprintf(stderr, "kv_client: pid %d: %s\n", (int)getpid(), rpal_strerror(err));
            rc = 1;
            break;
        }
        /* The service stopped (-ESHUTDOWN) or died (-ESRCH): wait for the
         * next one, and start the round over with it. */
        printf("kv_client: pid %d: kv_service %s; waiting for it\n", (int)getpid(),
               err == -ESHUTDOWN ? "left" : err == -ESRCH ? "died" : rpal_strerror(err));
        lost = now_s();
        disconnect(&k);
        if ((err = connect_kv(&k, 10)) < 0) {
            fprintf(stderr, "kv_client: pid %d: no kv_service for 10 s: %s\n", (int)getpid(),
                    rpal_strerror(err));
            rc = 1;
            break;
        }
        restarts++;
        since = 0;
        printf("kv_client: pid %d reconnected to kv_service (pid %d) after %.2f s\n",
               (int)getpid(), (int)k.pid, now_s() - lost);
    }
    disconnect(&k);
    rpal_domain_leave(k.d);
    printf("kv_client: pid %d: %d round%s, %d reconnect%s: %s\n", (int)getpid(), rounds,
           rounds == 1 ? "" : "s", restarts, restarts == 1 ? "" : "s", rc ? "FAILED" : "ok");
    return rc;
}

static int usage(int rc)
{
    fprintf(stderr, "usage: kv_client [--key-file PATH] [--callers N] [--rounds N | --seconds S]\n"
                    "                 [--reconnects N] [--wait S]\n"
                    "(run kv_service first, in another terminal)\n");
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o = {.callers = 1, .rounds = 1, .wait = 1};
    const char *key_opt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help"))
            return usage(0);
        if (!v)
            return usage(2);
        i++;
        if (!strcmp(a, "--key-file"))
            key_opt = v;
        else if (!strcmp(a, "--callers") && (o.callers = atoi(v)) >= 1 && o.callers <= 100)
            ;
        else if (!strcmp(a, "--rounds") && (o.rounds = atoi(v)) >= 1)
            ;
        else if (!strcmp(a, "--seconds") && (o.seconds = atof(v)) > 0)
            ;
        else if (!strcmp(a, "--reconnects") && (o.reconnects = atoi(v)) >= 1)
            ;
        else if (!strcmp(a, "--wait") && (o.wait = atof(v)) >= 0)
            ;
        else
            return usage(2);
    }
    if (o.reconnects && o.seconds <= 0)
        o.seconds = 60; /* the most we wait for the restarts */
    static char path[4096];
    if (kv_key_path(key_opt, path, sizeof path) < 0) {
        fprintf(stderr, "kv_client: where is the key? Set HOME or pass --key-file PATH\n");
        return 2;
    }
    key_path = path;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (o.callers == 1)
        return caller(&o);
    /* Many callers: processes, each joining the domain on its own (a
     * member's slot is not inherited across fork). */
    pid_t kids[100];
    for (int i = 0; i < o.callers; i++) {
        if ((kids[i] = fork()) == 0)
            _exit(caller(&o));
        if (kids[i] < 0) {
            perror("kv_client: fork");
            return 1;
        }
    }
    int failed = 0;
    for (int i = 0; i < o.callers; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    printf("kv_client: %d callers, %d failed\n", o.callers, failed);
    return failed ? 1 : 0;
}
