/* A handshake's deadline holds while signals come (issue 15): the waits
 * for a service's answer restarted their full timeout after every EINTR,
 * so a requester interrupted more often than its timeout never timed out.
 *
 * A service process registers and then never dispatches: its socket takes
 * connections and requests (the kernel's backlog) but nobody answers.
 * Every 20 ms a SIGALRM (no SA_RESTART) interrupts this process, for 3 s.
 * rpal_service_request with a 300 ms timeout must fail with -ETIMEDOUT
 * well before the signals stop.
 *
 * Then the same for a channel: a second service accepts our sharing and
 * then stops dispatching, so that rpal_chan_open's request is never
 * answered.
 */
#include "testlib.h"

#include <signal.h>
#include <sys/time.h>

#define DOMAIN "tdeadline"

static volatile sig_atomic_t g_ticks;

static void on_tick(int sig)
{
    (void)sig;
    if (++g_ticks >= 150) { /* 3 s of signals, then quiet */
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
    }
}

static void ticks_start(void)
{
    g_ticks = 0;
    struct sigaction sa = {.sa_handler = on_tick}; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    REQUIRE(sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    REQUIRE(setitimer(ITIMER_REAL, &it, NULL) == 0);
}

static void ticks_stop(void)
{
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
}

/* A service "svc" that answers ACCEPT sharings (dispatching until it has
 * seen them), then never dispatches again; killed by the test. Its key
 * comes on the returned pipe. */
static pid_t silent_service(int accept, int *key_fd)
{
    int kp[2];
    REQUIRE(pipe(kp) == 0);
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0) {
        close(kp[0]);
        rpal_domain *d;
        rpal_service *s;
        REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
        REQUIRE(rpal_service_register(d, "svc", 0, NULL, NULL, &s) == 0);
        t_key_send(kp[1], s);
        for (int seen = 0; seen < accept;) {
            struct rpal_event ev;
            int n = rpal_domain_dispatch(d, &ev, 1, 1000);
            if (n == 1 && ev.type == RPAL_EV_PEER_ACCEPTED)
                seen++;
        }
        for (;;)
            pause();
    }
    close(kp[1]);
    *key_fd = kp[0];
    return c;
}

static void reap(pid_t c)
{
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
}

int main(void)
{
    t_init();
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);

    /* 1. The sharing request. */
    int kfd;
    pid_t c = silent_service(0, &kfd);
    rpal_key k = t_key_recv(kfd);
    rpal_peer *p = NULL;
    ticks_start();
    int64_t t0 = t_now_ms();
    int err = rpal_service_request(d, "svc", &k, 300, &p);
    int64_t took = t_now_ms() - t0;
    ticks_stop();
    CHECK(err == -ETIMEDOUT);
    CHECK(took >= 250 && took < 2000);
    printf("request: %d after %lld ms, %d signals\n", err, (long long)took, (int)g_ticks);
    reap(c);
    close(kfd);

    /* 2. The channel request. */
    c = silent_service(1, &kfd);
    k = t_key_recv(kfd);
    REQUIRE(rpal_service_request(d, "svc", &k, 5000, &p) == 0);
    rpal_chan *ch = NULL;
    ticks_start();
    t0 = t_now_ms();
    err = rpal_chan_open(p, NULL, 300, &ch);
    took = t_now_ms() - t0;
    ticks_stop();
    CHECK(err == -ETIMEDOUT);
    CHECK(took >= 250 && took < 2000);
    printf("channel: %d after %lld ms, %d signals\n", err, (long long)took, (int)g_ticks);
    reap(c);
    close(kfd);
    rpal_domain_leave(d);
    return t_done();
}
