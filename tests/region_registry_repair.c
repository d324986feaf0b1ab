/* Issue 16, attack 4 (part): the address registry is writable by everyone
 * who may create regions in a shared namespace, and `truncate -s 1
 * .rpal-registry` made every later region creation fail (-EBADMSG) for
 * every user. A registry of the wrong size (cut, or grown) is now set back
 * to its size and used: creation works, and regions made before still
 * attach.
 */
#include "testlib.h"

#include <fcntl.h>

static void resize(off_t size)
{
    char path[512];
    snprintf(path, sizeof path, "%s/.rpal-registry", rpal_ns_dir());
    REQUIRE(truncate(path, size) == 0);
}

int main(void)
{
    t_init();
    rpal_region *a, *b, *c, *a2;
    REQUIRE(rpal_region_create("a", 1 << 20, 0600, 0, &a) == 0);
    REQUIRE(rpal_region_detach(a) == 0);
    resize(1);
    int err = rpal_region_create("b", 1 << 20, 0600, 0, &b);
    printf("create after the registry was cut to 1 byte: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        rpal_region_detach(b);
    resize(64 << 20);
    err = rpal_region_create("c", 1 << 20, 0600, 0, &c);
    printf("create after the registry was grown to 64 MiB: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        rpal_region_detach(c);
    err = rpal_region_attach("a", 0, &a2);
    printf("attach of a region made before: %s\n", rpal_strerror(err));
    CHECK(err == 0);
    if (err == 0)
        rpal_region_detach(a2);
    return t_done();
}
