/* Shared by the tests of same-user tampering with a domain (issue 16,
 * attack 7): a member process driven through pipes, and what the test asks
 * of it. */
#ifndef RPAL_TESTS_TAMPER_H
#define RPAL_TESTS_TAMPER_H

#include "testlib.h"
#include "internal.h"

#include <fcntl.h>
#include <poll.h>

struct tm_member {
    pid_t pid;
    int ctl, out; /* our ends: commands to it, its lines to us */
    unsigned slot;
    rpal_key key;
};

/* The member's life: join DOMAIN (slot size SIZE, 0: the default), register "svc", say "READY slot key" on
 * OUT, answer requests from its dispatch loop; 'd' on IN: wait 150 ms (a
 * member checks its claim at most every 100 ms), dispatch once, say "D";
 * 'q' or end of file: leave. */
static inline int tm_member_main(const char *domain, uint64_t size, int in, int out)
{
    alarm(60);
    rpal_domain *d;
    rpal_service *s;
    struct rpal_domain_opts o = {.slot_size = size};
    int err = rpal_domain_join(domain, &o, &d);
    if (err < 0) {
        t_put_line(out, "FAIL %d\n", err);
        return 1;
    }
    REQUIRE(rpal_service_register(d, "svc", 0600, NULL, NULL, &s) == 0);
    rpal_key k;
    char text[33];
    unsigned slot;
    REQUIRE(rpal_service_key(s, &k) == 0 && rpal_key_format(&k, text) == 0);
    REQUIRE(rpal_domain_slot(d, &slot, NULL, NULL) == 0);
    t_put_line(out, "READY %u %s\n", slot, text);
    struct rpal_event ev[8];
    for (;;) {
        struct pollfd pf[2] = {{rpal_domain_fd(d), POLLIN, 0}, {in, POLLIN, 0}};
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            return 1;
        if (pf[0].revents)
            for (int i = 0, n = rpal_domain_dispatch(d, ev, 8, 0); i < n; i++)
                if (ev[i].type == RPAL_EV_PEER_GONE)
                    rpal_peer_release(ev[i].peer);
        if (!pf[1].revents)
            continue;
        char c = t_get(in);
        if (c != 'd')
            break;
        usleep(150 * 1000);
        (void)rpal_domain_dispatch(d, ev, 8, 0);
        t_put_line(out, "D\n");
    }
    return rpal_domain_leave(d) == 0 ? 0 : 1;
}

/* Fork a member of DOMAIN (slot size SIZE) into *M; 0 once it is READY. */
static inline int tm_member_start(const char *domain, uint64_t size, struct tm_member *m)
{
    int ctl[2], out[2];
    REQUIRE(pipe(ctl) == 0 && pipe(out) == 0);
    m->pid = fork();
    REQUIRE(m->pid >= 0);
    if (m->pid == 0) {
        close(ctl[1]);
        close(out[0]);
        _exit(tm_member_main(domain, size, ctl[0], out[1]));
    }
    close(ctl[0]);
    close(out[1]);
    m->ctl = ctl[1];
    m->out = out[0];
    char line[128], text[64];
    if (t_get_line(m->out, line, sizeof line, 10000) < 0 ||
        sscanf(line, "READY %u %40s", &m->slot, text) != 2 || rpal_key_parse(text, &m->key) < 0)
        return -1;
    return 0;
}

/* Have M dispatch once (and so check its claim); 0 once it did. */
static inline int tm_member_dispatch(struct tm_member *m)
{
    char line[16];
    t_put(m->ctl, 'd');
    return t_get_line(m->out, line, sizeof line, 10000) == 0 && !strcmp(line, "D") ? 0 : -1;
}

/* M leaves and exits: its exit status. */
static inline int tm_member_stop(struct tm_member *m)
{
    t_put(m->ctl, 'q');
    close(m->ctl);
    close(m->out);
    return t_wait(m->pid);
}

/* Ask M's service from D and read M's slot header through the sharing:
 * 0 if M's slot says it is M's. */
static inline int tm_talk(rpal_domain *d, struct tm_member *m)
{
    rpal_peer *p;
    int err = rpal_service_request(d, "svc", &m->key, 5000, &p);
    if (err < 0) {
        printf("request to the member of slot %u: %s\n", m->slot, rpal_strerror(err));
        return err;
    }
    REQUIRE(rpal_peer_access_begin(p) == 0);
    const struct slot_hdr *h = rpal_peer_base(p);
    int ok = h && h->magic == SLOT_MAGIC && h->slot == m->slot && h->pid == m->pid;
    REQUIRE(rpal_peer_access_end(p) == 0);
    REQUIRE(rpal_peer_release(p) == 0);
    return ok ? 0 : -EBADMSG;
}

/* The path of FILE in DOMAIN's directory, into BUF. */
static inline const char *tm_path(char *buf, size_t size, const char *domain, const char *file)
{
    snprintf(buf, size, "%s/.domains/%s/%s", rpal_ns_dir(), domain, file);
    return buf;
}

/* `rpal gc`'s output (the command of $RPAL_BIN, else build/) into OUT: 0,
 * or -1 if there is no such command (the caller then says so and checks
 * the library's rpal_gc alone). */
static inline int tm_rpal_gc(char *out, size_t size)
{
    const char *bin = getenv("RPAL_BIN");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s/rpal", bin && *bin ? bin : "build");
    out[0] = 0;
    if (access(cmd, X_OK) != 0) {
        printf("no rpal command at %s: its gc lines are not checked\n", cmd);
        return -1;
    }
    strncat(cmd, " gc", sizeof cmd - strlen(cmd) - 1);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    pclose(p);
    printf("rpal gc:\n%s", out);
    return 0;
}

#endif
