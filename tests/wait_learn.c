/* The wait's learning (src/wait.c), fed known wait lengths: the budget grows
 * when waits are short and falls to nothing when they are long, both ways
 * and more than once; a mix decides by which kind dominates; the budget
 * never exceeds a channel's cap or RPAL_SPIN_US; RPAL_SPIN_US=0 never spins
 * and fixed:N always spins N. And the placement rule: a waiter whose other
 * side published our CPU yields or sleeps, never spins; one whose other side
 * is elsewhere spins; waits after a wake-up are learned apart; a spin that
 * was preempted stops every spin of the process for 10 ms. */
#include "testlib.h"
#include "internal.h"

static void feed(struct wt_learn *l, uint64_t ns, int n)
{
    for (int i = 0; i < n; i++)
        rpal__wt_learn_note(l, ns, UINT32_MAX);
}

/* Run FN in a child with RPAL_SPIN_US=VALUE (read once per process). */
static void with_env(const char *value, void (*fn)(void))
{
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        setenv("RPAL_SPIN_US", value, 1);
        fn();
        _exit(t_failures ? 1 : 0);
    }
    CHECK(t_wait(p) == 0);
}

static void never_spins(void)
{
    struct wt_learn l;
    rpal__wt_learn_init(&l);
    feed(&l, 300, 200);
    CHECK(rpal__wt_budget(&l, UINT32_MAX) == 0);
}

static void fixed_spins(void)
{
    struct wt_learn l;
    rpal__wt_learn_init(&l);
    feed(&l, 10000000, 200); /* long waits: fixed all the same */
    CHECK(rpal__wt_budget(&l, UINT32_MAX) == 7000);
    CHECK(rpal__wt_budget(&l, 3000) == 3000); /* the channel's own cap still holds */
}

static void capped(void)
{
    struct wt_learn l;
    rpal__wt_learn_init(&l);
    feed(&l, 300, 200);
    uint32_t b = rpal__wt_budget(&l, UINT32_MAX);
    CHECK(b > 0 && b <= 2000);
}

int main(void)
{
    t_init();
    with_env("0", never_spins);
    with_env("fixed:7", fixed_spins);
    with_env("2", capped);

    struct wt_learn l;
    rpal__wt_learn_init(&l);
    for (int round = 0; round < 3; round++) {
        feed(&l, 400, 64); /* back to back: short waits */
        uint32_t b = rpal__wt_budget(&l, UINT32_MAX);
        CHECK(b > 0);
        CHECK(b <= 100000); /* RPAL_SPIN_US's default bound */
        CHECK(rpal__wt_budget(&l, 1500) <= 1500);
        feed(&l, 2000000, 64); /* 2 ms between messages: sleep at once */
        CHECK(rpal__wt_budget(&l, UINT32_MAX) == 0);
    }
    /* A mix: three short waits in four spin, one in four do not. */
    for (int i = 0; i < 400; i++)
        rpal__wt_learn_note(&l, i % 4 ? 400 : 2000000, UINT32_MAX);
    CHECK(rpal__wt_budget(&l, UINT32_MAX) > 0);
    for (int i = 0; i < 400; i++)
        rpal__wt_learn_note(&l, i % 4 ? 2000000 : 400, UINT32_MAX);
    CHECK(rpal__wt_budget(&l, UINT32_MAX) == 0);

    /* Placement: the way a wait begins. */
    feed(&l, 400, 200);
    REQUIRE(rpal__wt_budget(&l, UINT32_MAX) > 0);
    uint32_t me = rpal__wt_my_cpu();
    REQUIRE(me > 0);
    struct rpal_chan_opts adaptive = {0}, poll = {.wait = RPAL_WAIT_POLL},
                          sleep = {.wait = RPAL_WAIT_SLEEP}, same = {.same_cpu = 1};
    struct wt_wait w;
    rpal__wt_begin(&w, &l, NULL, &adaptive, me); /* the other side runs on our CPU */
    CHECK(w.mode == WT_YIELD);
    rpal__wt_begin(&w, &l, NULL, &adaptive, me + 1); /* elsewhere */
    CHECK(w.mode == WT_SPIN);
    rpal__wt_begin(&w, &l, NULL, &adaptive, 0); /* unknown: spin */
    CHECK(w.mode == WT_SPIN);
    rpal__wt_begin(&w, &l, NULL, &same, me + 1); /* the application says one CPU */
    CHECK(w.mode == WT_YIELD);
    rpal__wt_begin(&w, &l, NULL, &poll, me);
    CHECK(w.mode == WT_SPIN && w.policy == RPAL_WAIT_POLL);
    rpal__wt_begin(&w, &l, NULL, &sleep, me + 1);
    CHECK(w.mode == WT_SLEEP);
    feed(&l, 2000000, 200);
    rpal__wt_begin(&w, &l, NULL, &adaptive, me); /* long waits on our CPU: sleep */
    CHECK(w.mode == WT_SLEEP);
    rpal__wt_begin(&w, &l, NULL, &adaptive, me + 1);
    CHECK(w.mode == WT_SLEEP);

    /* A yield that runs nobody (we are alone on this CPU) ends the yielding:
     * the next step is a sleep. */
    int a, b;
    if (t_two_cpus(&a, &b) == 0 || a >= 0) {
        REQUIRE(t_pin(a) == 0);
        feed(&l, 400, 200);
        rpal__wt_begin(&w, &l, NULL, &adaptive, rpal__wt_my_cpu());
        REQUIRE(w.mode == WT_YIELD);
        int steps = 0;
        while (rpal__wt_pause(&w) != WT_SLEEP && w.mode != WT_SLEEP && steps < 1000)
            steps++;
        CHECK(w.mode == WT_SLEEP);
        CHECK(steps < 1000);
    }

    /* Waits that begin just after this thread woke the other side are
     * learned apart: long ones there (a server asleep between sparse
     * requests) do not stop the spin of waits that need no wake-up. */
    uint32_t elsewhere = 1u << 20; /* no such CPU: never ours, wherever we run */
    feed(&l, 400, 200);
    for (int i = 0; i < 64; i++) {
        rpal__wt_woke();
        rpal__wt_begin(&w, &l, NULL, &adaptive, elsewhere);
        rpal__wt_end_empty(&w); /* learned as a long wait */
    }
    /* ... and sleep at once, but for one in 16, which spins all the same
     * (the probe that lets two sleeping sides find they could stay awake);
     * a wait that ends empty (a read that would not wait) hands the mark
     * on to the next. */
    int probes = 0;
    for (int i = 0; i < 32; i++) {
        rpal__wt_begin(&w, &l, NULL, &adaptive, elsewhere);
        CHECK(w.woke);
        probes += w.mode == WT_SPIN;
        rpal__wt_end_empty(&w);
    }
    CHECK(probes >= 1 && probes <= 3);
    rpal__wt_begin(&w, &l, NULL, &adaptive, elsewhere);
    rpal__wt_end(&w, 0); /* a wait: the mark is taken */
    rpal__wt_begin(&w, &l, NULL, &adaptive, elsewhere);
    CHECK(w.mode == WT_SPIN && !w.woke);
    CHECK(rpal__wt_budget(&l, UINT32_MAX) > 0);
    rpal__wt_end(&w, 0);

    /* A spin that was preempted (its clock jumps: here a sleep of 20 ms
     * between two looks stands for another thread taking the CPU) ends,
     * and nobody in the process spins for 10 ms; then spinning comes back. */
    feed(&l, 400, 200);
    rpal__wt_begin(&w, &l, NULL, &adaptive, elsewhere);
    REQUIRE(w.mode == WT_SPIN);
    /* (a budget that does not run out first, however slow the rounds: an
     * emulator's can take longer than the learned one) */
    w.budget = UINT32_MAX;
    int ticks = 0, guard = 0;
    while (ticks < 3 && guard++ < 1000000) /* one round to compare with, then the jump */
        if (rpal__wt_pause(&w) == WT_TICK && ++ticks == 2)
            usleep(20000);
    CHECK(w.mode == WT_SLEEP);
    CHECK(rpal__wt_budget(&l, UINT32_MAX) == 0);
    rpal__wt_begin(&w, &l, NULL, &adaptive, elsewhere);
    CHECK(w.mode == WT_SLEEP);
    usleep(12000);
    CHECK(rpal__wt_budget(&l, UINT32_MAX) > 0);
    return t_done();
}
