/* A service with a live receiver is not freed under it (issue 15):
 * rpal_service_unregister and rpal_domain_leave say -EBUSY and do nothing,
 * the service still answers requests, and once the receiver is destroyed
 * both succeed. (Before, unregister freed the service and the receiver's
 * destroy then wrote into freed memory: AddressSanitizer's report.)
 */
#include "testlib.h"

#define DOMAIN "tbusy"

int main(void)
{
    t_init();
    rpal_domain *d;
    rpal_service *s;
    rpal_receiver *r;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    REQUIRE(rpal_service_register(d, "svc", 0, NULL, NULL, &s) == 0);
    REQUIRE(rpal_receiver_create(s, NULL, &r) == 0);

    CHECK(rpal_service_unregister(s) == -EBUSY);
    CHECK(rpal_domain_leave(d) == -EBUSY);

    /* Still registered and listed: a caller process gets a channel. */
    int kp[2];
    REQUIRE(pipe(kp) == 0);
    t_key_send(kp[1], s);
    pid_t c = fork();
    REQUIRE(c >= 0);
    if (c == 0) {
        rpal_domain *cd;
        rpal_chan *ch = t_svc_open_key(kp[0], DOMAIN, NULL, &cd);
        unsigned char msg[8] = "busy", rep[8];
        size_t n = 0;
        int err = rpal_call(ch, msg, sizeof msg, rep, sizeof rep, &n, 5000);
        _exit(err == 0 && t_xor_ok(msg, sizeof msg, rep, n) ? 0 : 1);
    }
    int64_t until = t_now_ms() + 10000;
    int st = 0;
    pid_t w = 0;
    while ((w = waitpid(c, &st, WNOHANG)) == 0 && t_now_ms() < until) {
        struct rpal_event ev[4];
        rpal_domain_dispatch(d, ev, 4, 10);
        t_serve_xor(r, 10);
    }
    CHECK(w == c && WIFEXITED(st) && WEXITSTATUS(st) == 0);

    rpal_receiver_destroy(r);
    CHECK(rpal_service_unregister(s) == 0);
    CHECK(rpal_domain_leave(d) == 0);
    return t_done();
}
