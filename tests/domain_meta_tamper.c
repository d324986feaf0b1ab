/* Issue 16, attack 7 (part): a process of the same user overwrites a
 * domain's meta. Before, every later join failed (-EBADMSG) for good; now a
 * joiner that finds it corrupt while no member is alive (no claim held)
 * replaces it. While a member is alive its geometry cannot be known from
 * outside, so a join still says -EBADMSG (the limit), and succeeds once
 * that member has left.
 */
#include "testlib.h"

#include <fcntl.h>

#define DOMAIN "tmeta"

static void tamper(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/.domains/%s/meta", rpal_ns_dir(), DOMAIN);
    int fd = open(path, O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, "garbage!", 8, 0) == 8);
    close(fd);
}

int main(void)
{
    t_init();
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    REQUIRE(rpal_domain_leave(d) == 0);
    tamper();
    int err = rpal_domain_join(DOMAIN, NULL, &d);
    printf("join after meta was overwritten, no member alive: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        CHECK(rpal_domain_leave(d) == 0);

    /* A live member: its geometry stands; a join waits for it to go. */
    int go[2], ready[2];
    REQUIRE(pipe(go) == 0 && pipe(ready) == 0);
    pid_t m = fork();
    REQUIRE(m >= 0);
    if (m == 0) {
        close(go[1]);
        rpal_domain *md;
        REQUIRE(rpal_domain_join(DOMAIN, NULL, &md) == 0);
        t_put(ready[1], 'r');
        t_get(go[0]);
        _exit(rpal_domain_leave(md) == 0 ? 0 : 1);
    }
    close(go[0]);
    REQUIRE(t_get(ready[0]) == 'r');
    tamper();
    err = rpal_domain_join(DOMAIN, NULL, &d);
    printf("join after meta was overwritten, a member alive: %s\n", rpal_strerror(err));
    CHECK(err == -EBADMSG);
    t_put(go[1], 'g');
    CHECK(t_wait(m) == 0);
    err = rpal_domain_join(DOMAIN, NULL, &d);
    printf("join once that member left: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        CHECK(rpal_domain_leave(d) == 0);
    return t_done();
}
