/* Issue 16, attack 7 (meta): a process of the same user writes over a
 * domain's meta, or removes it. Before, every later join failed (-EBADMSG)
 * for as long as any member lived. Now:
 *  - no member alive: the next joiner writes it anew;
 *  - a member alive (slots of 1 GiB, not the default): the next joiner,
 *    asking for no size, rebuilds it from the geometry the live member's
 *    claim record gives, puts it in place at once (never half written),
 *    joins, and the two share slots: the joiner reads the member's slot;
 *  - removed while a member lives: the joiner writes the member's geometry,
 *    not the default one (which would cut the window otherwise);
 *  - `rpal gc` and rpal_gc rebuild it too, and say so ("repaired meta",
 *    kind "meta-rebuilt").
 */
#include "tamper.h"

#define DOMAIN "tmeta"
#define SIZE (1ull << 30)

static void tamper(void)
{
    char path[512];
    int fd = open(tm_path(path, sizeof path, DOMAIN, "meta"), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, "garbage!", 8, 0) == 8);
    close(fd);
}

/* 0 if meta on disk is a valid geometry of slots of SIZE. */
static int meta_ok(void)
{
    char path[512];
    struct dom_meta m;
    int fd = open(tm_path(path, sizeof path, DOMAIN, "meta"), O_RDONLY);
    int ok = fd >= 0 && pread(fd, &m, sizeof m, 0) == (ssize_t)sizeof m &&
             rpal__dom_meta_validate(&m) == 0 && m.slot_size == SIZE;
    if (fd >= 0)
        close(fd);
    return ok ? 0 : -1;
}

/* Join with no size asked, then talk to M: 0 if both went well. */
static int join_and_talk(struct tm_member *m, const char *what)
{
    rpal_domain *d;
    int err = rpal_domain_join(DOMAIN, NULL, &d);
    printf("join after meta was %s, a member alive: %s\n", what, rpal_strerror(err));
    if (err < 0)
        return err;
    uint64_t size = 0;
    unsigned slot = 0;
    CHECK(rpal_domain_slot(d, &slot, NULL, &size) == 0 && size == SIZE && slot != m->slot);
    CHECK(meta_ok() == 0);
    err = tm_talk(d, m);
    printf("the joiner reads the member's slot through a sharing: %s\n", rpal_strerror(err));
    CHECK(rpal_domain_leave(d) == 0);
    return err;
}

static void gc_note(const char *kind, const char *name, void *arg)
{
    printf("gc: %s %s\n", kind, name);
    if (!strcmp(kind, "meta-rebuilt") && !strcmp(name, DOMAIN))
        ++*(int *)arg;
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
    char path[512];
    REQUIRE(unlink(tm_path(path, sizeof path, DOMAIN, "meta")) == 0);

    struct tm_member m;
    REQUIRE(tm_member_start(DOMAIN, SIZE, &m) == 0);
    tamper();
    CHECK(join_and_talk(&m, "overwritten") == 0);

    REQUIRE(unlink(tm_path(path, sizeof path, DOMAIN, "meta")) == 0);
    CHECK(join_and_talk(&m, "removed") == 0);

    tamper();
    char out[2048];
    if (tm_rpal_gc(out, sizeof out) == 0)
        CHECK(strstr(out, "repaired meta " DOMAIN " (") != NULL);
    CHECK(meta_ok() == 0);
    tamper();
    int rebuilt = 0;
    CHECK(rpal_gc(gc_note, &rebuilt) >= 1);
    CHECK(rebuilt == 1);
    CHECK(meta_ok() == 0);
    CHECK(tm_member_stop(&m) == 0);
    return t_done();
}
