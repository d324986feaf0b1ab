/* Channel churn: callers come and go (closing their channel, leaving, exiting
 * without a word, or killed in the middle of a call) while a service serves
 * them with a receiver thread and dispatches on another, the layout the
 * documentation recommends. Each ending races the receiver, which frees the
 * dead caller's channel, against the dispatcher, which may have fetched the
 * event of that channel's connection just before: the freed channel must not
 * be touched (under SAN=1 or TSAN=1 a use after free fails the test). The
 * service must survive every round and still answer a last caller
 * correctly, and it must leave the domain cleanly when told to stop.
 * CHURN_ROUNDS=N changes the number of rounds (two callers each). */
#include "testlib.h"

#include <pthread.h>
#include <stdatomic.h>

#define DOM "churn"
#define CALL_MS 2000

static int keyp[2], stopp[2];
static atomic_int stop_recv;
static rpal_service *svc;
static atomic_long served;

static void *receiver_main(void *arg)
{
    (void)arg;
    rpal_receiver *r;
    REQUIRE(rpal_receiver_create(svc, NULL, &r) == 0);
    while (!atomic_load(&stop_recv)) {
        int err = t_serve_xor(r, 20);
        if (err == -ETIMEDOUT)
            continue;
        /* The caller may have gone between its request and our reply. */
        REQUIRE(err == 0 || err == -ESHUTDOWN || err == -ESRCH);
        atomic_fetch_add(&served, 1);
    }
    REQUIRE(rpal_receiver_destroy(r) == 0);
    return NULL;
}

static int service(void)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOM, NULL, &d) == 0);
    REQUIRE(rpal_service_register(d, "echo", 0, NULL, NULL, &svc) == 0);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, receiver_main, NULL) == 0);
    t_key_send(keyp[1], svc);
    long gone = 0;
    for (;;) {
        struct rpal_event ev[8];
        int n = rpal_domain_dispatch(d, ev, 8, 5);
        REQUIRE(n >= 0);
        for (int i = 0; i < n; i++)
            if (ev[i].type == RPAL_EV_PEER_GONE) {
                REQUIRE(rpal_peer_release(ev[i].peer) == 0);
                gone++;
            }
        struct pollfd pf = {stopp[0], POLLIN, 0};
        if (poll(&pf, 1, 0) == 1)
            break;
    }
    atomic_store(&stop_recv, 1);
    pthread_join(th, NULL);
    printf("service: %ld calls served, %ld peers gone\n", atomic_load(&served), gone);
    REQUIRE(rpal_service_unregister(svc) == 0);
    REQUIRE(rpal_domain_leave(d) == 0);
    return 0;
}

enum ending { END_CLOSE, END_LEAVE, END_EXIT, END_KILL_IDLE, END_KILL_CALL, NENDINGS };

/* One caller: a few checked calls, then ENDING. */
static void caller(const rpal_key *k, enum ending ending, unsigned seed)
{
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOM, NULL, &d) == 0);
    rpal_peer *p;
    REQUIRE(rpal_service_request(d, "echo", k, CALL_MS, &p) == 0);
    rpal_chan *c;
    int err;
    for (int tries = 0; (err = rpal_chan_open(p, NULL, CALL_MS, &c)) == -EAGAIN && tries < 100; tries++)
        usleep(10000); /* the receiver thread may not exist yet */
    REQUIRE(err == 0);
    unsigned calls = seed % 20;
    unsigned char req[64], rep[64];
    for (unsigned i = 0; i < calls; i++) {
        size_t len = 1 + (seed + i) % sizeof req;
        for (size_t j = 0; j < len; j++)
            req[j] = (unsigned char)(seed + i * 31 + j);
        size_t rlen = 0;
        err = rpal_call(c, req, len, rep, sizeof rep, &rlen, CALL_MS);
        if (err < 0) {
            fprintf(stderr, "pid %d call %u of %zu bytes: %s\n", (int)getpid(), i, len,
                    rpal_strerror(err));
            exit(1);
        }
        REQUIRE(t_xor_ok(req, len, rep, rlen));
    }
    switch (ending) {
    case END_CLOSE:
        REQUIRE(rpal_chan_close(c) == 0);
        REQUIRE(rpal_peer_release(p) == 0);
        REQUIRE(rpal_domain_leave(d) == 0);
        _exit(0);
    case END_LEAVE:
        REQUIRE(rpal_domain_leave(d) == 0); /* the channel goes with it */
        _exit(0);
    case END_EXIT:
        _exit(0);
    case END_KILL_IDLE:
        raise(SIGKILL);
        break;
    case END_KILL_CALL:
        /* Killed with a request in the ring that the receiver may be
         * reading at that moment. */
        REQUIRE(rpal_send(c, req, 16, 1) == 0);
        raise(SIGKILL);
        break;
    default:
        break;
    }
    _exit(3);
}

/* Wait for PID at most MS milliseconds; its wait status, or -1 (killed). */
static int wait_ms(pid_t pid, int ms)
{
    int st;
    for (int i = 0; i < ms; i++) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return st;
        usleep(1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

int main(void)
{
    t_init();
    const char *env = getenv("CHURN_ROUNDS");
    int rounds = env ? atoi(env) : 150;
    REQUIRE(pipe(keyp) == 0 && pipe(stopp) == 0);
    pid_t spid = fork();
    REQUIRE(spid >= 0);
    if (spid == 0)
        _exit(service());
    rpal_key k = t_key_recv(keyp[0]);
    unsigned seed = (unsigned)getpid();
    int bad = 0, ended[NENDINGS] = {0};
    for (int round = 0; round < rounds && !bad; round++) {
        pid_t kids[2];
        enum ending how[2];
        for (int j = 0; j < 2; j++) {
            seed = seed * 1103515245u + 12345u;
            how[j] = (enum ending)((seed >> 16) % NENDINGS);
            kids[j] = fork();
            REQUIRE(kids[j] >= 0);
            if (kids[j] == 0)
                caller(&k, how[j], seed >> 8);
        }
        for (int j = 0; j < 2; j++) {
            int st = wait_ms(kids[j], 10 * CALL_MS);
            int killed = how[j] == END_KILL_IDLE || how[j] == END_KILL_CALL;
            int ok = killed ? st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL
                            : st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
            if (!ok) {
                fprintf(stderr, "round %d: caller %d (ending %d) ended with status %#x\n",
                        round, j, (int)how[j], st);
                bad = 1;
            }
            ended[how[j]]++;
        }
        int sst;
        if (waitpid(spid, &sst, WNOHANG) == spid) {
            fprintf(stderr, "round %d: the service died (status %#x)\n", round, sst);
            CHECK(0);
            return 1;
        }
    }
    CHECK(!bad);
    printf("%d rounds: %d closed, %d left, %d exited, %d killed idle, %d killed in a call\n",
           rounds, ended[END_CLOSE], ended[END_LEAVE], ended[END_EXIT],
           ended[END_KILL_IDLE], ended[END_KILL_CALL]);
    /* The service still answers. */
    pid_t last = fork();
    REQUIRE(last >= 0);
    if (last == 0)
        caller(&k, END_CLOSE, 19); /* 19 checked calls */
    int st = wait_ms(last, 10 * CALL_MS);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    REQUIRE(write(stopp[1], "x", 1) == 1);
    st = wait_ms(spid, 10 * CALL_MS);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fprintf(stderr, "the service ended with status %#x\n", st);
    CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return t_done();
}
