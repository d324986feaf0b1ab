/* Issue 16, attack 1 for the compat hello: rpal_uds_fdmap on a socketpair
 * we made, whose other end went to a process that is no member of the
 * domain. That process speaks first with a well-formed hello (its own
 * kernel-checked credentials). Our slot's memfd must not reach it: the
 * upgrade fails (-EPROTO) and it receives no descriptor. Before #16 our
 * hello (with the memfd) went out before theirs was checked.
 */
#include "testlib.h"
#include "internal.h"

#define DOMAIN "tcimpostor"

static void outsider(int s, int out)
{
    struct fm_hello h = {.magic = FM_MAGIC, .version = FM_VERSION, .slot = 1,
                         .slot_size = 1ull << 30, .ring = 1ull << 40, .depth = 64,
                         .pid = getpid()};
    union {
        char b[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr h;
    } u = {0};
    struct iovec iov = {&h, sizeof h};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                       .msg_controllen = sizeof u.b};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_CREDENTIALS;
    cm->cmsg_len = CMSG_LEN(sizeof(struct ucred));
    struct ucred cr = {getpid(), getuid(), getgid()};
    memcpy(CMSG_DATA(cm), &cr, sizeof cr);
    REQUIRE(sendmsg(s, &m, 0) == (ssize_t)sizeof h);
    int fds = 0;
    int64_t until = t_now_ms() + 1500;
    while (t_now_ms() < until) {
        char buf[256];
        union {
            char b[CMSG_SPACE(sizeof(int) * 4)];
            struct cmsghdr h;
        } v;
        struct iovec io = {buf, sizeof buf};
        struct msghdr r = {.msg_iov = &io, .msg_iovlen = 1, .msg_control = v.b,
                           .msg_controllen = sizeof v.b};
        struct pollfd pf = {s, POLLIN, 0};
        if (poll(&pf, 1, 100) != 1)
            continue;
        ssize_t n = recvmsg(s, &r, 0);
        if (n <= 0)
            break;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&r); c; c = CMSG_NXTHDR(&r, c))
            if (c->cmsg_type == SCM_RIGHTS)
                fds += (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    }
    REQUIRE(write(out, &fds, sizeof fds) == (ssize_t)sizeof fds);
    _exit(0);
}

int main(void)
{
    t_init();
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    int sv[2], op[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0 && pipe(op) == 0);
    pid_t b = fork();
    REQUIRE(b >= 0);
    if (b == 0) {
        close(sv[0]);
        outsider(sv[1], op[1]);
    }
    close(sv[1]);
    int err = rpal_uds_fdmap(d, sv[0], 1000);
    printf("rpal_uds_fdmap with an outsider: %d (%s)\n", err, rpal_strerror(err));
    CHECK(err == -EPROTO);
    close(sv[0]);
    int fds = -1;
    REQUIRE(read(op[0], &fds, sizeof fds) == (ssize_t)sizeof fds);
    printf("descriptors the outsider received: %d\n", fds);
    CHECK(fds == 0);
    CHECK(t_wait(b) == 0);
    rpal_domain_leave(d);
    return t_done();
}
