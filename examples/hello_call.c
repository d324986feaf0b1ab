/* examples/hello_call.c: a service and a caller, two processes, one call.
 * Build: cc hello_call.c $(pkg-config --cflags --libs rpal) */
#include <rpal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static int caller(const rpal_key *key)        /* a process of its own (forked here) */
{
    rpal_domain *d; rpal_peer *p; rpal_chan *c;
    char reply[64];
    size_t n;
    int err;
    if ((err = rpal_domain_join(NULL, NULL, &d)) < 0 ||
        (err = rpal_service_request(d, "hello", key, 2000, &p)) < 0 || /* consent, by key */
        (err = rpal_chan_open(p, NULL, 2000, &c)) < 0 ||
        (err = rpal_call(c, "world", 5, reply, sizeof reply - 1, &n, 2000)) < 0) {
        fprintf(stderr, "caller: %s\n", rpal_strerror(err));
        return 1;
    }
    reply[n] = 0;
    printf("pid %d called pid %d: \"%s\"\n", (int)getpid(), (int)getppid(), reply);
    fflush(stdout);                           /* before _exit */
    rpal_chan_close(c);                       /* channels, then the peer, then the domain */
    rpal_peer_release(p);
    rpal_domain_leave(d);
    return 0;
}

int main(void)
{
    rpal_domain *d; rpal_service *s; rpal_receiver *r; rpal_key key;
    int err;
    if ((err = rpal_domain_join(NULL, NULL, &d)) < 0 ||
        (err = rpal_service_register(d, "hello", 0600, NULL, NULL, &s)) < 0 ||
        (err = rpal_receiver_create(s, NULL, &r)) < 0) { /* before anyone has the key */
        fprintf(stderr, "service: %s\n", rpal_strerror(err));
        return 1;
    }
    rpal_service_key(s, &key);                /* to whom we choose: here, our child */
    pid_t child = fork();
    if (child == 0)
        _exit(caller(&key));
    for (int done = 0; !done;) {              /* one loop: consents, requests, departures */
        struct rpal_msg m;
        struct rpal_event ev;
        int n = rpal_serve(r, &m, &ev, 5000);
        if (n == RPAL_SERVE_MSG) {
            char out[64];
            int len = snprintf(out, sizeof out, "hello, %.*s", (int)(m.len < 32 ? m.len : 32),
                               (const char *)m.data);
            rpal_reply(r, &m, out, (size_t)len); /* every request gets one reply */
        } else if (n == RPAL_SERVE_EVENT && ev.type == RPAL_EV_PEER_GONE) {
            rpal_peer_release(ev.peer);       /* the caller left (or died) */
            done = 1;
        } else if (n < 0) {
            fprintf(stderr, "service: %s\n", rpal_strerror(n));
            done = 1;
        }
    }
    int st = 0;
    waitpid(child, &st, 0);
    rpal_receiver_destroy(r);
    rpal_service_unregister(s);
    rpal_domain_leave(d);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
