/* One loop for a service (rpal_serve): a single-threaded service answers
 * the consent handshakes and the channel opens of two callers and their
 * calls through the same call, both while calls flow back to back and with
 * pauses that put it to sleep (woken by its bell, or with RPAL_WAKE=sock by
 * a byte on the caller's connection); a caller killed in the middle is
 * reported as PEER_GONE by rpal_serve itself, within a second, while the
 * other caller goes on; a timeout with nothing to do is -ETIMEDOUT; and
 * while requests flow back to back on two CPUs the service sends no
 * wake-up and sleeps next to never (no system call per request). */
#include "testlib.h"

static int keyp[2], ready[2];

static void on_alarm(int sig)
{
    (void)sig;
}

static int service(void)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join("serve", NULL, &d) == 0);
    rpal_service *s;
    REQUIRE(rpal_service_register(d, "svc", 0, NULL, NULL, &s) == 0);
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(s, NULL, &r) == 0);
    struct rpal_msg m;
    struct rpal_event ev;
    CHECK_ERR(rpal_serve(r, &m, &ev, 0), -ETIMEDOUT); /* nothing yet */
    /* A signal ends a sleeping wait with -EINTR (no SA_RESTART), so that a
     * loop can look at the flag its handler set. */
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    for (int i = 0; i < 2; i++) {
        int64_t t0 = t_now_ms();
        ualarm(50000, 0);
        int err = i ? rpal_receive(r, &m, 3000) : rpal_serve(r, &m, &ev, 3000);
        CHECK_ERR(err, -EINTR);
        CHECK(t_now_ms() - t0 < 2000);
    }
    t_key_send(keyp[1], s);
    t_key_send(keyp[1], s); /* one per caller */
    long msgs = 0;
    int gone = 0, requests = 0;
    int64_t killed_at = 0;
    for (int64_t end = t_now_ms() + 60000; t_now_ms() < end;) {
        int n = rpal_serve(r, &m, &ev, 200);
        if (n == -ETIMEDOUT || n == -EINTR)
            continue;
        REQUIRE(n == RPAL_SERVE_MSG || n == RPAL_SERVE_EVENT);
        if (n == RPAL_SERVE_EVENT) {
            if (ev.type == RPAL_EV_PEER_ACCEPTED) {
                requests++;
            } else if (ev.type == RPAL_EV_PEER_GONE) {
                gone++;
                if (gone == 1) {
                    /* The killed caller (its killer sent the time along). */
                    int64_t ms = 0;
                    REQUIRE(read(ready[0], &killed_at, sizeof killed_at) == sizeof killed_at);
                    ms = t_now_ms() - killed_at;
                    printf("a killed caller: PEER_GONE after %lld ms\n", (long long)ms);
                    CHECK(ms < (getenv("RPAL_EMULATED") ? 10000 : 1000));
                }
                rpal_peer_release(ev.peer);
                if (gone == 2)
                    break;
            }
            continue;
        }
        const unsigned char *in = m.data;
        unsigned char out[256];
        size_t len = m.len < sizeof out ? m.len : sizeof out;
        for (size_t i = 0; i < len; i++)
            out[i] = in[i] ^ 0x5A;
        int err = rpal_reply(r, &m, out, len);
        CHECK(err == 0 || err == -ESHUTDOWN);
        msgs++;
    }
    printf("served %ld requests, %d consents, %d callers gone\n", msgs, requests, gone);
    CHECK(requests == 2);
    CHECK(gone == 2);
    rpal_receiver_destroy(r);
    rpal_service_unregister(s);
    rpal_domain_leave(d);
    return t_done();
}

static int call(rpal_chan *c, int i)
{
    unsigned char req[24], rep[24];
    size_t rlen;
    for (int j = 0; j < 24; j++)
        req[j] = (unsigned char)(i * 7 + j);
    int err = rpal_call(c, req, sizeof req, rep, sizeof rep, &rlen, 5000);
    if (err < 0)
        fprintf(stderr, "call %d: %s\n", i, rpal_strerror(err));
    return err == 0 && t_xor_ok(req, sizeof req, rep, rlen) ? 0 : -1;
}

/* A caller on CPU (or anywhere, -1): back to back, then with pauses. With
 * VICTIM, it stops halfway and waits to be killed. */
static int caller(int cpu, int victim)
{
    REQUIRE(t_pin(cpu) == 0);
    rpal_domain *d;
    rpal_chan *c = t_svc_open_key(keyp[0], "serve", NULL, &d);
    for (int i = 0; i < 2000; i++)
        REQUIRE(call(c, i) == 0);
    struct rpal_stats a, b;
    rpal_chan_stats(c, &a);
    for (int i = 0; i < 20000; i++)
        REQUIRE(call(c, i) == 0);
    rpal_chan_stats(c, &b);
    if (!victim)
        printf("back to back: %llu calls, %llu wake-ups sent to the service\n",
               (unsigned long long)(b.msgs_out - a.msgs_out),
               (unsigned long long)(b.wakes - a.wakes));
    if (victim) {
        for (;;)
            pause(); /* killed here */
    }
    for (int i = 0; i < 300; i++) { /* 1 ms apart: the service sleeps each time */
        REQUIRE(call(c, i) == 0);
        t_sleep_us(1000);
    }
    struct rpal_stats z;
    rpal_chan_stats(c, &z);
    printf("1 ms apart: 300 calls, %llu wake-ups sent\n", (unsigned long long)(z.wakes - b.wakes));
    CHECK(z.wakes - b.wakes >= 200); /* the service slept and was woken */
    rpal_chan_close(c);
    rpal_domain_leave(d);
    return t_done() == 0 && (b.wakes - a.wakes) * 10 <= 20000 ? 0 : 2;
}

static void run(const char *wake)
{
    if (wake)
        setenv("RPAL_WAKE", wake, 1);
    else
        unsetenv("RPAL_WAKE");
    REQUIRE(pipe(keyp) == 0 && pipe(ready) == 0);
    int a, b;
    int two = t_two_cpus(&a, &b) == 0;
    pid_t s = fork();
    REQUIRE(s >= 0);
    if (s == 0) {
        t_pin(two ? b : -1);
        _exit(service());
    }
    pid_t v = fork();
    REQUIRE(v >= 0);
    if (v == 0)
        _exit(caller(two ? a : -1, 1));
    pid_t h = fork();
    REQUIRE(h >= 0);
    if (h == 0)
        _exit(caller(two ? a : -1, 0));
    /* Kill the victim once it is well into its calls. */
    usleep(300000);
    int64_t now = t_now_ms();
    REQUIRE(kill(v, SIGKILL) == 0);
    REQUIRE(write(ready[1], &now, sizeof now) == sizeof now);
    CHECK(t_wait(v) == 128 + SIGKILL);
    int rc = t_wait(h);
    /* 2: more than one call in ten needed a wake-up while they flowed back
     * to back on two CPUs (another load took a CPU?); said, not failed. */
    CHECK(rc == 0 || (rc == 2 && two));
    if (rc == 2)
        printf("(back to back, the service slept more than expected: a loaded machine?)\n");
    CHECK(t_wait(s) == 0);
    close(keyp[0]), close(keyp[1]), close(ready[0]), close(ready[1]);
}

int main(void)
{
    t_init();
    run(NULL);     /* bells */
    run("sock");   /* bytes on the channels' connections */
    return t_done();
}
