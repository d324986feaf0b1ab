/* RPAL_DEFAULT_SLOT_SIZE is the size of a slot in a domain whose creator
 * asked for none (slot_size 0): the library's default, whatever flags the
 * program that uses it was built with. Here the program pretends to be built
 * for valgrind (RPAL_VALGRIND, defined before rpal.h) while the library is
 * the suite's build: in the usual build the two differ (the library's small
 * window belongs to its own valgrind and ThreadSanitizer builds only). */
#ifndef RPAL_VALGRIND
#define RPAL_VALGRIND 1
#endif
#include "testlib.h"

int main(void)
{
    t_init();
    rpal_domain *d;
    int err = rpal_domain_join("defsize", NULL, &d);
    if (err < 0) {
        fprintf(stderr, "join: %s\n", rpal_strerror(err));
        return 1;
    }
    unsigned slot;
    void *base;
    uint64_t size;
    CHECK_ERR(rpal_domain_slot(d, &slot, &base, &size), 0);
    if (size != RPAL_DEFAULT_SLOT_SIZE)
        fprintf(stderr, "slot of %llu bytes, RPAL_DEFAULT_SLOT_SIZE %llu\n",
                (unsigned long long)size, (unsigned long long)RPAL_DEFAULT_SLOT_SIZE);
    CHECK(size == RPAL_DEFAULT_SLOT_SIZE);
    /* Asked for by name, the default is the same slot size. */
    rpal_domain_leave(d);
    struct rpal_domain_opts o = {.slot_size = RPAL_DEFAULT_SLOT_SIZE};
    CHECK_ERR(rpal_domain_join("defsize2", &o, &d), 0);
    CHECK_ERR(rpal_domain_slot(d, &slot, &base, &size), 0);
    CHECK(size == RPAL_DEFAULT_SLOT_SIZE);
    rpal_domain_leave(d);
    return t_done();
}
