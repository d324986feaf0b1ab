/* wait: how one side of a channel or of an upgraded connection waits for
 * the other, and what it learns from it. Part of the channel layer:
 * src/channel.c (calls) and src/compat.c (upgraded sockets) wait through
 * it. docs/waiting.md explains the policy and the figures behind it.
 *
 * Spinning pays only when the wait is shorter than what a sleep and a
 * wake-up cost, and only while the other side runs on another CPU
 * (principle 6 of the design: wait smart, never costing more than the
 * socket it replaces). Neither is known in advance, so every waiter learns: it
 * keeps running averages of how often its waits were short (no longer than
 * a sleep and a wake-up cost, which this process measures as it sleeps and
 * wakes others) and of how long the short ones were, and at each wait takes
 * the cheapest of spinning for a budget, yielding (the other side runs on
 * our CPU, where spinning would only hold it off), or sleeping at once. A
 * waiter that slept learns the true length of its wait from the time the
 * other side stamps when it wakes it, so that a slow wake-up does not pass
 * for a long wait and keep it sleeping.
 *
 * A waiter that sleeps may also move to the CPU of the side that will wake
 * it (follow): the wake-up is then a hand-off on one CPU instead of waking
 * an idle one, which on a virtual machine costs tens of microseconds.
 */
#include "rpal.h"
#include "internal.h"
#include "atomics.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CAP_NS 100000u /* RPAL_SPIN_US's default: 100 us */
#define INIT_COST_NS   10000u  /* a sleep and a wake-up, until measured */
#define SAMPLE_SLEEPS  16u     /* one sleep (wake-up, late run) in this many is measured */
#define LAZY_SPINS     32u     /* spins before a wait first reads the clock */
#define POLL_SPINS     64u     /* RPAL_WAIT_POLL: spins between clock reads */
#define FLUSH_NS       100000000ull /* counters reach the claim file this often */
/* A spin whose clock jumps this much between two looks was preempted (32
 * pauses take 0.1-2 us); after one, no waiter of the process spins for
 * CROWDED_NS. */
#define PREEMPTED_NS   100000ull
#define CROWDED_NS     10000000ull

static struct {
    pthread_once_t once;
    uint32_t cap_ns;    /* no budget above this (RPAL_SPIN_US=N) */
    uint32_t fixed_ns;  /* RPAL_SPIN_US=fixed:N: always N; UINT32_MAX: learn */
    int quota_low;      /* the cgroup allows less than 1.5 CPUs */
    int follow;         /* RPAL_FOLLOW: sleepers move to their waker's CPU */
    int bells;          /* RPAL_WAKE=sock: no eventfd bells, bytes on sockets */
    uint32_t pause_ps;  /* one cpu_relax(), in picoseconds */
    /* Written as waits go (sampled): a line of their own, apart from the
     * settings every wait reads. */
    _Alignas(64) _Atomic uint32_t wake_ns;  /* running average: a wake-up, as its sender pays it */
    _Atomic uint32_t sleep_ns; /* running average: the CPU a sleep costs the sleeper */
    /* running average: from the other side's message to the sleeper
     * running again, woken across CPUs (the delay a sleep adds) */
    _Atomic uint32_t late_ns;
    /* when a spin of ours was last preempted (another thread wanted its
     * CPU): no spinning for a while after */
    _Atomic uint64_t crowded_ns;
    _Atomic uint32_t yield_ns; /* the cheapest yield seen: one that ran nobody */
} g = {.once = PTHREAD_ONCE_INIT};

/* QUOTA and PERIOD of the cgroup directory DIR (v2 cpu.max, or v1
 * cpu.cfs_quota_us and cpu.cfs_period_us): 1 if it allows less than 1.5
 * CPUs. */
static int dir_quota_low(const char *dir, int v2)
{
    char q[64], file[700];
    long quota = -1, period = 0;
    snprintf(file, sizeof file, v2 ? "%s/cpu.max" : "%s/cpu.cfs_quota_us", dir);
    FILE *f = fopen(file, "re");
    if (!f)
        return 0;
    if (fgets(q, sizeof q, f)) {
        if (v2)
            sscanf(q, "%ld %ld", &quota, &period); /* "max 100000": no quota */
        else
            quota = strtol(q, NULL, 10);
    }
    fclose(f);
    if (!v2) {
        snprintf(file, sizeof file, "%s/cpu.cfs_period_us", dir);
        if ((f = fopen(file, "re"))) {
            if (fgets(q, sizeof q, f))
                period = strtol(q, NULL, 10);
            fclose(f);
        }
    }
    return quota > 0 && period > 0 && quota * 2 < period * 3;
}

/* Does the v1 controller list LIST ("cpu,cpuacct") name "cpu"? */
static int has_cpu(const char *list)
{
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n == 3 && !strncmp(p, "cpu", 3))
            return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

/* The CPU quota of our cgroup and of its parents: 1 if any of them allows
 * less than 1.5 CPUs, where a spinning waiter burns what the side it waits
 * for needs (a container limited to one CPU, say). */
static int quota_is_low(void)
{
    char line[512], path[600] = "";
    int v2 = 0;
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *ctl = strchr(line, ':'), *rel = ctl ? strchr(ctl + 1, ':') : NULL;
        if (!rel)
            continue;
        *rel++ = 0;
        if (!strcmp(ctl + 1, "")) { /* v2: "0::/path" */
            if (!path[0]) {
                snprintf(path, sizeof path, "/sys/fs/cgroup%s", rel);
                v2 = 1;
            }
        } else if (has_cpu(ctl + 1)) {
            snprintf(path, sizeof path, "/sys/fs/cgroup/%s%s", ctl + 1, rel);
            v2 = 0;
            break; /* a v1 cpu controller rules over the v2 line */
        }
    }
    fclose(f);
    while (path[0]) {
        if (dir_quota_low(path, v2))
            return 1;
        char *cut = strrchr(path, '/');
        if (!cut || cut == path)
            break;
        *cut = 0;
        if (strlen(path) < strlen("/sys/fs/cgroup/x"))
            break;
    }
    return 0;
}

static void wt_atfork_child(void);

static void init_once(void)
{
    g.cap_ns = DEFAULT_CAP_NS;
    g.fixed_ns = UINT32_MAX;
    const char *e = getenv("RPAL_SPIN_US");
    if (e) {
        int fixed = !strncmp(e, "fixed:", 6);
        char *end;
        unsigned long us = strtoul(fixed ? e + 6 : e, &end, 10);
        if (*end == 0 && end != (fixed ? e + 6 : e) && us <= 1000000) {
            g.cap_ns = (uint32_t)us * 1000;
            if (fixed)
                g.fixed_ns = g.cap_ns;
        }
    }
    e = getenv("RPAL_FOLLOW");
    g.follow = !(e && !strcmp(e, "0"));
    e = getenv("RPAL_WAKE");
    g.bells = !(e && !strcmp(e, "sock"));
    g.quota_low = quota_is_low();
    /* What a pause costs here (10 to 150 cycles, by CPU), so that a wait
     * that ends after a few spins is timed without reading the clock. */
    uint64_t t = rpal__prim_now_ns();
    for (int i = 0; i < 2000; i++)
        cpu_relax();
    uint64_t ps = (rpal__prim_now_ns() - t) * 1000 / 2000;
    g.pause_ps = ps ? (ps < 1000000 ? (uint32_t)ps : 1000000) : 1;
    rpal_store_relaxed(&g.wake_ns, INIT_COST_NS / 2);
    rpal_store_relaxed(&g.sleep_ns, INIT_COST_NS / 2);
    rpal_store_relaxed(&g.yield_ns, UINT32_MAX);
    pthread_atfork(NULL, NULL, wt_atfork_child);
}

static void init(void)
{
    pthread_once(&g.once, init_once);
}

/* What one sleep with its wake-up costs this process, in CPU. */
static uint64_t cost_ns(void)
{
    return (uint64_t)rpal_load_relaxed(&g.wake_ns) + rpal_load_relaxed(&g.sleep_ns);
}

/* What a sleep costs the conversation: its CPU (C), and the delay it adds
 * before our next message, for which the other side is waiting. Spinning,
 * the other side pays that delay in CPU; asleep, its own sleep's C: so the
 * delay counts for at most C. Without it a request-reply pair settles
 * where both sleep whenever the server's work per request is above C/2
 * (pgbench against PostgreSQL: 18 us against a C of 15 us here), though
 * both spinning costs each side less CPU, sleeps included, than that
 * (docs/waiting.md). */
static uint64_t sleep_cost_ns(void)
{
    uint64_t c = cost_ns(), late = rpal_load_relaxed(&g.late_ns);
    return c + (late < c ? late : c);
}

/* A running average (1/8 of each new sample): benign races between threads
 * only lose a sample. */
static void average(_Atomic uint32_t *avg, uint64_t sample)
{
    int64_t a = rpal_load_relaxed(avg);
    if (sample > 10000000)
        sample = 10000000; /* a preempted sample says nothing of the cost */
    rpal_store_relaxed(avg, (uint32_t)(a + ((int64_t)sample - a) / 8));
}

void rpal__wt_learn_init(struct wt_learn *l)
{
    init();
    l->calm.p16 = 1u << 15;          /* half the waits short, to begin with */
    l->calm.short_ns = INIT_COST_NS / 4;
    l->woke = l->calm;
}

/* The costs above are averaged over one sleep, wake-up and late run in
 * SAMPLE_SLEEPS of each thread: a count shared by the threads, or a store
 * at every one, would move the line between CPUs at every wait of a
 * many-threaded client (pgbench -j 8). */
static _Thread_local uint32_t tl_nsleeps, tl_nwakes, tl_nlate;
/* Set by a wake-up this thread made, taken by its next wait. */
static _Thread_local uint8_t tl_woke;
/* Waits after a wake-up that their odds said to sleep through. */
static _Thread_local uint32_t tl_woke_sleeps;
#define PROBE_EVERY 16u

void rpal__wt_woke(void)
{
    tl_woke = 1;
}

static uint64_t bmax_ns(uint32_t cap)
{
    uint64_t b = sleep_cost_ns();
    if (b > g.cap_ns)
        b = g.cap_ns;
    return b < cap ? b : cap;
}

/* Whether spinning may pay at all: not under a low CPU quota, nor while
 * more threads want the CPUs than there are (a spin takes the CPU from one
 * of them, maybe the very side it waits for). */
static int may_spin(void)
{
    if (g.quota_low)
        return 0;
    uint64_t crowded = rpal_load_relaxed(&g.crowded_ns);
    return !crowded || rpal__prim_now_ns() - crowded >= CROWDED_NS;
}

static uint32_t budget_of(const struct wt_odds *l, uint32_t cap)
{
    if (g.fixed_ns != UINT32_MAX)
        return g.fixed_ns < cap ? g.fixed_ns : cap;
    if (!may_spin())
        return 0;
    uint64_t c = sleep_cost_ns(), bmax = bmax_ns(cap);
    /* Spin for as long as a sleep costs (BMAX: then a wait costs at most
     * twice the best choice made knowing its length), if that costs
     * clearly less on average than sleeping at once (by a fifth: C is
     * measured, and moves): a short wait (probability P, length S) costs
     * S; any other costs the spin spent in vain and the sleep after it.
     * Sleeping costs C. */
    uint64_t p = l->p16;
    if (p * l->short_ns + (65536 - p) * (bmax + c) < 65536 * c * 4 / 5)
        return (uint32_t)bmax;
    return 0;
}

uint32_t rpal__wt_budget(const struct wt_learn *l, uint32_t cap)
{
    return budget_of(&l->calm, cap);
}

static void note_of(struct wt_odds *l, uint64_t w_ns, uint32_t cap)
{
    int shrt = w_ns <= bmax_ns(cap);
    int64_t p = l->p16;
    l->p16 = (uint32_t)(p + (((int64_t)shrt << 16) - p) / 8);
    if (shrt) {
        int64_t s = l->short_ns;
        l->short_ns = (uint32_t)(s + ((int64_t)w_ns - s) / 8);
    }
}

void rpal__wt_learn_note(struct wt_learn *l, uint64_t w_ns, uint32_t cap)
{
    note_of(&l->calm, w_ns, cap);
}

/* ---- following the waker's CPU ---- */

#define FOLLOW_AGAIN_NS 10000000ull /* after unfollowing, stay free this long */

static _Thread_local struct {
    uint32_t to;          /* CPU + 1 this thread narrowed itself to, or 0 */
    cpu_set_t orig, mine; /* its mask before, and the one it set */
    uint64_t freed_ns;    /* when it last let go */
} tf;

static uint32_t follow(uint32_t peer_cpu)
{
    if (!g.follow || !peer_cpu || peer_cpu > CPU_SETSIZE || tf.to == peer_cpu)
        return 0;
    /* Not at once after letting go: a load that comes and goes would
     * otherwise move the thread back and forth at every change. */
    if (tf.freed_ns && rpal__prim_now_ns() - tf.freed_ns < FOLLOW_AGAIN_NS)
        return 0;
    if (!tf.to && sched_getaffinity(0, sizeof tf.orig, &tf.orig) < 0)
        return 0;
    /* Only inside the CPUs we may use, and never against a pin: a thread
     * its owner put on one CPU stays there. */
    int cpu = (int)peer_cpu - 1;
    if (!CPU_ISSET(cpu, &tf.orig) || CPU_COUNT(&tf.orig) < 2)
        return 0;
    CPU_ZERO(&tf.mine);
    CPU_SET(cpu, &tf.mine);
    if (sched_setaffinity(0, sizeof tf.mine, &tf.mine) < 0)
        return 0;
    tf.to = peer_cpu;
    return peer_cpu;
}

/* Give the thread its own CPU mask back if it followed someone. */
static void wt_unfollow(void)
{
    if (!tf.to)
        return;
    cpu_set_t now;
    /* The application may have set a mask of its own meanwhile: keep it. */
    if (sched_getaffinity(0, sizeof now, &now) == 0 && CPU_EQUAL(&now, &tf.mine))
        sched_setaffinity(0, sizeof tf.orig, &tf.orig);
    tf.to = 0;
    tf.freed_ns = rpal__prim_now_ns();
}

int rpal__wt_bells(void)
{
    init();
    return g.bells;
}

uint32_t rpal__wt_my_cpu(void)
{
    int c = sched_getcpu();
    return c < 0 ? 0 : (uint32_t)c + 1;
}

/* ---- one wait ---- */

void rpal__wt_begin(struct wt_wait *w, struct wt_learn *l, struct wt_stats *st,
              const struct rpal_chan_opts *o, uint32_t peer_cpu)
{
    w->l = l;
    w->st = st;
    w->t0 = w->now = w->spun = 0;
    w->spins = w->yields = 0;
    w->woke = 0;
    w->tick_min = UINT32_MAX;
    w->slept = 0;
    w->cap = o->spin_us ? o->spin_us * 1000u : UINT32_MAX;
    w->policy = (uint8_t)o->wait;
    w->peer_cpu = peer_cpu;
    w->my_cpu = rpal__wt_my_cpu();
    w->same = o->same_cpu || (peer_cpu && peer_cpu == w->my_cpu);
    if (o->wait == RPAL_WAIT_POLL) {
        w->mode = o->same_cpu ? WT_YIELD : WT_SPIN;
        w->budget = UINT32_MAX;
        return;
    }
    if (o->wait == RPAL_WAIT_SLEEP) {
        w->mode = WT_SLEEP;
        w->budget = 0;
        return;
    }
    w->woke = tl_woke;
    tl_woke = 0;
    w->budget = budget_of(w->woke ? &l->woke : &l->calm, w->cap);
    /* Busy enough to spin: the two sides are better apart, each spinning
     * on its own CPU; let the scheduler spread us again (not for a probe,
     * below: one wait in 16 would keep a sleeping pair from following). */
    if (w->budget && tf.to)
        wt_unfollow();
    /* Two sides that both sleep wake each other at every message, so each
     * one's waits hold the other's wake-up and say "sleep": they would stay
     * there even where both spinning costs less. One wait in PROBE_EVERY of
     * those spins all the same (at most 1/16 of a sleep's cost each): if
     * the other side answers within it, it finds us awake, its next wait
     * needs no wake-up, and the pair can stay awake. */
    if (w->woke && !w->budget && o->wait == RPAL_WAIT_ADAPTIVE && g.fixed_ns == UINT32_MAX &&
        ++tl_woke_sleeps % PROBE_EVERY == 0 && may_spin())
        w->budget = (uint32_t)bmax_ns(w->cap);
    w->mode = !w->budget ? WT_SLEEP : w->same ? WT_YIELD : WT_SPIN;
    if (st)
        st->budget_ns = w->budget;
}

/* The clock, and when the wait began: before the first read, a wait is
 * timed by its spins. */
static uint64_t tick(struct wt_wait *w)
{
    w->now = rpal__prim_now_ns();
    if (!w->t0)
        w->t0 = w->now - (uint64_t)w->spins * g.pause_ps / 1000;
    return w->now;
}

int rpal__wt_pause(struct wt_wait *w)
{
    if (w->mode == WT_SPIN) {
        cpu_relax();
        uint32_t every = w->policy == RPAL_WAIT_POLL ? POLL_SPINS : LAZY_SPINS;
        if (++w->spins % every == 0) {
            uint64_t before = w->now;
            tick(w);
            /* A jump, against the shortest round of 32 looks seen in this
             * wait (a caller that looks at many descriptors per spin has
             * long rounds, not a preemption). */
            uint64_t dt = before ? w->now - before : 0;
            int jumped = before && w->tick_min != UINT32_MAX && dt >= PREEMPTED_NS &&
                         dt >= 8 * (uint64_t)w->tick_min;
            if (before && dt < w->tick_min)
                w->tick_min = (uint32_t)dt;
            if (jumped && w->policy != RPAL_WAIT_POLL) {
                rpal_store_relaxed(&g.crowded_ns, w->now);
                w->spun = w->now - w->t0;
                w->mode = WT_SLEEP;
            } else if (w->now - w->t0 >= w->budget) {
                w->spun = w->now - w->t0;
                w->mode = WT_SLEEP;
            }
            return WT_TICK;
        }
        return 0;
    }
    if (w->mode == WT_YIELD) {
        uint64_t a = w->now ? w->now : tick(w);
        sched_yield();
        uint64_t dt = tick(w) - a;
        w->yields++;
        /* A yield that came straight back ran nobody: the other side is
         * not runnable here (it sleeps, or waits for something else), so
         * yielding again only burns the CPU. Sleep instead. */
        uint32_t floor = rpal_load_relaxed(&g.yield_ns);
        if (dt < floor)
            rpal_store_relaxed(&g.yield_ns, (uint32_t)dt);
        /* And yielding never costs more than the budget, as spinning: a
         * yield misjudged as running someone (the floor measured when
         * system calls were cheaper) is then bounded all the same. */
        if (w->policy != RPAL_WAIT_POLL &&
            (dt < 2 * (uint64_t)floor + 500 || w->now - w->t0 >= w->budget))
            w->mode = WT_SLEEP;
        return WT_TICK;
    }
    return WT_SLEEP;
}

uint32_t rpal__wt_sleep_begin(struct wt_wait *w, int may_follow, uint64_t *cpu0)
{
    if (!w->now)
        tick(w);
    *cpu0 = 0;
    if (tl_nsleeps++ % SAMPLE_SLEEPS == 0) {
        struct timespec ts;
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
            *cpu0 = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1;
    }
    if (w->st)
        w->st->state = WT_SLEEP;
    return may_follow && !w->same ? follow(w->peer_cpu) : 0;
}

void rpal__wt_sleep_end(struct wt_wait *w, uint64_t cpu0)
{
    if (cpu0) {
        struct timespec ts;
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
            average(&g.sleep_ns, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + 1 -
                                     cpu0);
    }
    w->slept = 1;
    w->mode = WT_SLEEP;
    tick(w);
    if (w->st)
        w->st->state = WT_RUN;
}

void rpal__wt_end(struct wt_wait *w, uint64_t stamp)
{
    uint64_t len;
    if (!w->t0 && !w->now) {
        len = (uint64_t)w->spins * g.pause_ps / 1000; /* a few spins: never read the clock */
    } else {
        uint64_t now = rpal__prim_now_ns();
        len = now - w->t0;
        /* The other side's stamp of when it woke us (its word: clamped) is
         * when the wait really ended; the rest was the wake-up. */
        if (w->slept && stamp > w->t0 && stamp < now) {
            len = stamp - w->t0;
            /* Woken from another CPU: how late we run after the message
             * (on our own CPU, it is the waker's turn running, not a cost). */
            if (w->peer_cpu && rpal__wt_my_cpu() != w->peer_cpu && tl_nlate++ % SAMPLE_SLEEPS == 0)
                average(&g.late_ns, now - stamp);
        }
        w->now = now;
    }
    struct wt_stats *st = w->st;
    if (st) {
        st->waits++;
        st->yields += w->yields;
        if (w->slept) {
            st->sleeps++;
            st->spin_ns += w->spun;
        } else if (w->mode == WT_SPIN) {
            st->spin_hits++;
            st->spin_ns += len;
        }
    }
    if (w->policy == RPAL_WAIT_ADAPTIVE)
        note_of(w->woke ? &w->l->woke : &w->l->calm, len, w->cap);
}

void rpal__wt_end_empty(struct wt_wait *w)
{
    tl_woke = w->woke; /* not a wait (a read that would not wait): the next one is */
    if (w->st) {
        w->st->waits++;
        w->st->yields += w->yields;
    }
    if (w->policy == RPAL_WAIT_ADAPTIVE)
        note_of(w->woke ? &w->l->woke : &w->l->calm, UINT64_MAX, w->cap);
}

void rpal__wt_note_wake(uint64_t t0)
{
    if (tl_nwakes++ % SAMPLE_SLEEPS == 0)
        average(&g.wake_ns, rpal__prim_now_ns() - t0);
}

int rpal__wt_stats_due(const struct wt_stats *st, uint64_t now)
{
    return (st->waits & 1023) == 0 || (now && now - st->flushed_ns >= FLUSH_NS);
}

void rpal__wt_stats_copy(const struct wt_stats *st, struct rpal_stats *out)
{
    *out = (struct rpal_stats){st->msgs_out, st->bytes_out, st->msgs_in, st->bytes_in,
                               st->wakes, st->wakes_skipped, st->waits, st->sleeps,
                               st->spin_hits, st->yields, st->spin_ns, st->budget_ns, 0};
}

/* A forked child runs on the forking thread's mask: give it back the one
 * that thread had before it followed anybody. */
static void wt_atfork_child(void)
{
    if (tf.to) {
        sched_setaffinity(0, sizeof tf.orig, &tf.orig);
        tf.to = 0;
    }
}
