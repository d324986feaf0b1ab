/* Issue 16, attack 6: a peer of the same user writes a service's slot
 * through /proc/PID/mem and process_vm_writev (the kernel lets processes of
 * one uid that may ptrace each other do it, whatever the mappings). With
 * rpal_harden(RPAL_HARDEN_NO_PTRACE) in the service both fail, the word
 * keeps its value, and the sharing itself still works. Checked without the
 * hardening first, so that the test can fail. Runs as a non-root user
 * (root may do anything: as root the test drops to uid 65534).
 */
#include "testlib.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/uio.h>

#define DOMAIN "tharden"
#define NOBODY 65534

/* The service: a word (42) in its slot; ITS address and the key go out on
 * OUT; prints the word's value on OUT when STOP says 'v', leaves on EOF. */
/* How many ways of writing another process's memory the machine has (2:
 * process_vm_writev and /proc/PID/mem). */
static int ways = 2;

static void service(int harden, int out, int stop)
{
    rpal_domain *d;
    rpal_service *s;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    REQUIRE(rpal_service_register(d, "svc", 0, NULL, NULL, &s) == 0);
    volatile uint64_t *w = rpal_malloc(sizeof *w);
    REQUIRE(w);
    *w = 42;
    if (harden)
        REQUIRE(rpal_harden(RPAL_HARDEN_NO_PTRACE) == 0);
    uint64_t addr = (uint64_t)(uintptr_t)w;
    REQUIRE(write(out, &addr, sizeof addr) == sizeof addr);
    t_key_send(out, s);
    for (;;) {
        struct rpal_event ev[4];
        rpal_domain_dispatch(d, ev, 4, 20);
        struct pollfd pf = {stop, POLLIN, 0};
        if (poll(&pf, 1, 0) != 1)
            continue;
        char c;
        if (read(stop, &c, 1) != 1)
            break;
        uint64_t v = *w;
        REQUIRE(write(out, &v, sizeof v) == sizeof v);
    }
    _exit(0);
}

/* Start a service (hardened or not), share with it, try both writes;
 * the word's value afterwards. *WROTE counts the writes that went through. */
static uint64_t attack(rpal_domain *d, int harden, int *wrote)
{
    int op[2], sp[2];
    REQUIRE(pipe(op) == 0 && pipe(sp) == 0);
    pid_t p = fork();
    REQUIRE(p >= 0);
    if (p == 0) {
        close(op[0]);
        close(sp[1]);
        service(harden, op[1], sp[0]);
    }
    close(op[1]);
    close(sp[0]);
    uint64_t addr, v = 666;
    REQUIRE(read(op[0], &addr, sizeof addr) == sizeof addr);
    rpal_key k = t_key_recv(op[0]);
    rpal_peer *peer;
    int err = rpal_service_request(d, "svc", &k, 2000, &peer);
    CHECK(err == 0); /* the hardening does not stop the sharing */
    if (err == 0) {
        rpal_peer_access_begin(peer);
        CHECK(*(volatile uint64_t *)(uintptr_t)addr == 42); /* the read-only view */
        rpal_peer_access_end(peer);
    }
    *wrote = 0;
    struct iovec l = {&v, sizeof v}, r = {(void *)(uintptr_t)addr, sizeof v};
    ssize_t n = process_vm_writev(p, &l, 1, &r, 1, 0);
    /* qemu-user has no process_vm_writev (ENOSYS): one way fewer to try. */
    ways = 1 + !(n < 0 && errno == ENOSYS);
    printf("%s service: process_vm_writev %s\n", harden ? "hardened" : "plain",
           n == sizeof v ? "wrote" : strerror(errno));
    *wrote += n == sizeof v;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)p);
    int fd = open(path, O_RDWR);
    v = 777;
    n = fd < 0 ? -1 : pwrite(fd, &v, sizeof v, (off_t)addr);
    printf("%s service: /proc/PID/mem %s\n", harden ? "hardened" : "plain",
           n == sizeof v ? "wrote" : strerror(errno));
    *wrote += n == sizeof v;
    if (fd >= 0)
        close(fd);
    REQUIRE(write(sp[1], "v", 1) == 1);
    REQUIRE(read(op[0], &v, sizeof v) == sizeof v);
    if (err == 0)
        rpal_peer_release(peer);
    close(sp[1]);
    close(op[0]);
    t_wait(p);
    return v;
}

int main(void)
{
    t_init();
    if (geteuid() == 0) {
        REQUIRE(chown(rpal_ns_dir(), NOBODY, NOBODY) == 0);
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            t_skip("cannot drop to uid 65534");
        /* A change of uid made us (and so the service we fork) undumpable:
         * back to an ordinary process of that user. */
        REQUIRE(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == 0);
    }
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    int wrote;
    uint64_t v = attack(d, 0, &wrote);
    printf("plain service: %d writes went through, the word reads %llu\n", wrote,
           (unsigned long long)v);
    if (wrote == 0)
        t_skip("this kernel stops same-user ptrace writes already (Yama ptrace_scope?)");
    CHECK(wrote == ways && v == 777);
    CHECK(rpal_harden(0x80) == -EINVAL);
    v = attack(d, 1, &wrote);
    printf("hardened service: %d writes went through, the word reads %llu\n", wrote,
           (unsigned long long)v);
    CHECK(wrote == 0 && v == 42);
    rpal_domain_leave(d);
    return t_done();
}
