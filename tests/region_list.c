/* One process builds a linked list of 100,000 nodes in a region using plain
 * pointers; another process, started with exec, attaches the region by name
 * and walks the list, checking every value. */
#include "testlib.h"

#define NODES 100000

struct node {
    struct node *next;
    uint64_t value;
    uint64_t square;
};

struct root {
    struct node *head;
    uint64_t count;
};

static uint64_t value_of(uint64_t i) { return i * 2654435761u + 7; }

static int walk(const char *name)
{
    rpal_region *r;
    int err = rpal_region_attach(name, RPAL_REGION_RDONLY, &r);
    if (err < 0) {
        fprintf(stderr, "walker: attach: %s\n", rpal_strerror(err));
        return 1;
    }
    struct root *root = rpal_region_addr(r);
    char *lo = rpal_region_addr(r), *hi = lo + rpal_region_size(r);
    uint64_t i = 0;
    for (struct node *n = root->head; n; n = n->next, i++) {
        if ((char *)n < lo || (char *)n >= hi) {
            fprintf(stderr, "walker: node %llu points outside the region\n",
                    (unsigned long long)i);
            return 1;
        }
        if (n->value != value_of(i) || n->square != n->value * n->value) {
            fprintf(stderr, "walker: node %llu has a wrong value\n",
                    (unsigned long long)i);
            return 1;
        }
    }
    if (i != root->count || i != NODES) {
        fprintf(stderr, "walker: walked %llu nodes, want %d\n",
                (unsigned long long)i, NODES);
        return 1;
    }
    printf("walker: %llu nodes checked at %p\n", (unsigned long long)i,
           (void *)root);
    return rpal_region_detach(r) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "walk"))
        return walk(argv[2]);
    t_init();

    const char *name = "lists/numbers";
    size_t size = (sizeof(struct root) + NODES * sizeof(struct node) + 4095) & ~4095ul;
    rpal_region *r;
    int err = rpal_region_create(name, size, 0600, 0, &r);
    REQUIRE(err == 0);

    /* Build the list back to front, scattering nodes over the region so that
     * the walk really follows pointers. */
    struct root *root = rpal_region_addr(r);
    struct node *nodes = (struct node *)(root + 1);
    root->head = NULL;
    for (uint64_t k = NODES; k-- > 0;) {
        uint64_t slot = (k * 7919) % NODES; /* 7919 is prime: a permutation */
        struct node *n = &nodes[slot];
        n->value = value_of(k);
        n->square = n->value * n->value;
        n->next = root->head;
        root->head = n;
    }
    root->count = NODES;

    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        execl("/proc/self/exe", argv[0], "walk", name, (char *)NULL);
        _exit(127);
    }
    CHECK(t_wait(child) == 0);

    /* A corrupted pointer is caught by the walker's bounds check. */
    nodes[(5 * 7919) % NODES].value ^= 1;
    child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        execl("/proc/self/exe", argv[0], "walk", name, (char *)NULL);
        _exit(127);
    }
    CHECK(t_wait(child) == 1);

    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(name) == 0);
    CHECK_ERR(rpal_region_attach(name, 0, &r), -ENOENT);
    return t_done();
}
