/* shared_list: two processes share a linked list built with plain pointers.
 *
 * The parent creates a region, builds a list of NODES nodes in it with
 * ordinary pointers, and starts a second program with exec. That program
 * attaches the region by name, finds the list at the same address, walks it
 * and checks every value. It also times attaching a small and a large region,
 * to show that attaching costs the same whatever the size.
 *
 *   shared_list [--nodes N] [--large GIB] [--json]
 *
 * --large sets the large region's size (64 GiB): valgrind's memcheck keeps
 * state for every mapped page, and needs 1 (make valgrind).
 */
#include "rpal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct node {
    struct node *next;
    uint64_t value;
};

struct list {
    struct node *head;
    uint64_t count, sum;
};

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int die(const char *what, int err)
{
    fprintf(stderr, "shared_list: %s: %s\n", what, rpal_strerror(err));
    return 1;
}

/* The second process: attach read-only, walk, check. */
static int reader(const char *name, const char *small, const char *large, int json,
                  unsigned long long gib)
{
    rpal_region *r, *s, *l;
    double t0 = now_us();
    int err = rpal_region_attach(name, RPAL_REGION_RDONLY, &r);
    double t_list = now_us() - t0;
    if (err < 0)
        return die("attach", err);
    const struct list *list = rpal_region_addr(r);
    uint64_t n = 0, sum = 0;
    t0 = now_us();
    for (const struct node *p = list->head; p; p = p->next, n++)
        sum += p->value;
    double t_walk = now_us() - t0;
    int ok = n == list->count && sum == list->sum;

    t0 = now_us();
    if ((err = rpal_region_attach(small, RPAL_REGION_RDONLY, &s)) < 0)
        return die("attach small", err);
    double t_small = now_us() - t0;
    t0 = now_us();
    if ((err = rpal_region_attach(large, RPAL_REGION_RDONLY, &l)) < 0)
        return die("attach large", err);
    double t_large = now_us() - t0;

    if (json)
        printf("{\"nodes\":%llu,\"ok\":%s,\"base\":\"%p\",\"walk_us\":%.1f,"
               "\"attach_list_us\":%.1f,\"attach_4k_us\":%.1f,"
               "\"attach_64g_us\":%.1f,\"large_gib\":%llu}\n",
               (unsigned long long)n, ok ? "true" : "false", (void *)list,
               t_walk, t_list, t_small, t_large, gib);
    else
        printf("reader (pid %d, exec'd): attached '%s' at %p in %.1f us\n"
               "  walked %llu nodes through plain pointers in %.1f us: %s\n"
               "  attach of a 4 KiB region: %.1f us, of a %llu GiB region: %.1f us\n",
               (int)getpid(), name, (void *)list, t_list, (unsigned long long)n,
               t_walk, ok ? "every value checks" : "MISMATCH", t_small, gib, t_large);
    rpal_region_detach(r);
    rpal_region_detach(s);
    rpal_region_detach(l);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 7 && !strcmp(argv[1], "--reader"))
        return reader(argv[2], argv[3], argv[4], atoi(argv[5]), strtoull(argv[6], NULL, 10));
    uint64_t nodes = 1000000;
    unsigned long long gib = 64;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--nodes") && i + 1 < argc)
            nodes = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--large") && i + 1 < argc &&
                 (gib = strtoull(argv[++i], NULL, 10)) >= 1 && gib <= 1024)
            ;
        else {
            fprintf(stderr, "usage: shared_list [--nodes N] [--large GIB] [--json]\n");
            return 2;
        }
    }
    char name[64], small[64], large[64], gibs[24];
    snprintf(gibs, sizeof gibs, "%llu", gib);
    snprintf(name, sizeof name, "demo-list-%d", (int)getpid());
    snprintf(small, sizeof small, "demo-small-%d", (int)getpid());
    snprintf(large, sizeof large, "demo-large-%d", (int)getpid());
    size_t size = (sizeof(struct list) + nodes * sizeof(struct node) + 4095) & ~(size_t)4095;

    rpal_region *r, *s = NULL, *l;
    int err = rpal_region_create(name, size, 0600, RPAL_REGION_TRANSIENT, &r);
    if (err < 0)
        return die("create", err);
    if ((err = rpal_region_create(small, 4096, 0600, RPAL_REGION_TRANSIENT, &s)) < 0 ||
        (err = rpal_region_create(large, gib << 30, 0600, RPAL_REGION_TRANSIENT, &l)) < 0) {
        rpal_region_detach(r);
        if (s)
            rpal_region_detach(s);
        rpal_region_unlink(name);
        rpal_region_unlink(small);
        return die("create", err);
    }
    struct list *list = rpal_region_addr(r);
    struct node *pool = (struct node *)(list + 1);
    double t0 = now_us();
    for (uint64_t i = nodes; i-- > 0;) {
        pool[i].value = i * 3 + 1;
        pool[i].next = list->head;
        list->head = &pool[i];
        list->sum += pool[i].value;
    }
    list->count = nodes;
    if (!json)
        printf("writer (pid %d): built %llu nodes in region '%s' at %p in %.0f us\n",
               (int)getpid(), (unsigned long long)nodes, name, (void *)list,
               now_us() - t0);
    fflush(stdout);

    /* This program's path, resolved before exec: valgrind answers the
     * readlink with the program it runs, but exec of /proc/self/exe itself
     * would start valgrind's tool. */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        n = snprintf(self, sizeof self, "/proc/self/exe");
    self[n] = 0;
    pid_t pid = fork();
    if (pid == 0) {
        execl(self, argv[0], "--reader", name, small, large, json ? "1" : "0", gibs,
              (char *)NULL);
        _exit(127);
    }
    int st = 1;
    waitpid(pid, &st, 0);
    rpal_region_detach(r);
    rpal_region_detach(s);
    rpal_region_detach(l);
    rpal_region_unlink(name);
    rpal_region_unlink(small);
    rpal_region_unlink(large);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
