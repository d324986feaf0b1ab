/* Issue 16, attack 7 (claims): a process of the same user tampers with a
 * live member's claim file slot.N. Before, a claim unlinked or replaced was
 * taken by the next joiner (two members in one slot: the same addresses),
 * and a record written over stayed so, the member unknown to its peers and
 * to `rpal ls` for good. Now, with the member M alive:
 *  - slot.N unlinked: a joiner gets another slot, never M's (M's read lock
 *    on byte N of the domain's directory holds it); rpal_gc reports M's
 *    claim ("claim"); M's next dispatch puts a claim with its record back,
 *    and the joiner's request to M's service succeeds;
 *  - slot.N replaced by a copy (rename over it): the same;
 *  - slot.N unlinked, six processes joining at once: six slots, none M's;
 *  - the record written over with garbage: reported by rpal_gc, restored
 *    by M's next dispatch;
 *  - written over with another pid: a request to M's service wakes M's
 *    dispatch, which restores the record before it answers; the request
 *    succeeds.
 * M's leave then removes the claim it made anew.
 */
#include "tamper.h"

#define DOMAIN "tclaim"
#define SIZE (1ull << 30)

struct find {
    unsigned slot;
    int pid; /* -1: no live record */
};

static int find_one(const struct rpal_member_info *i, void *arg)
{
    struct find *f = arg;
    if (!strcmp(i->domain, DOMAIN) && i->slot == f->slot)
        f->pid = (int)i->pid;
    return 0;
}

/* The pid that the live record of SLOT names, or -1. */
static int slot_pid(unsigned slot)
{
    struct find f = {slot, -1};
    REQUIRE(rpal_domain_foreach(find_one, &f) == 0);
    return f.pid;
}

static void gc_note(const char *kind, const char *name, void *arg)
{
    printf("gc: %s %s\n", kind, name);
    if (!strcmp(kind, "claim"))
        snprintf(arg, 64, "%s", name);
}

/* rpal_gc reports M's claim as tampered with. */
static int gc_reports(const struct tm_member *m)
{
    char got[64] = "", want[64];
    snprintf(want, sizeof want, "%s/slot.%u", DOMAIN, m->slot);
    REQUIRE(rpal_gc(gc_note, got) >= 0);
    return strcmp(got, want) ? -1 : 0;
}

/* After M's next dispatch, its slot's live record names it again. */
static int restored(struct tm_member *m)
{
    REQUIRE(tm_member_dispatch(m) == 0);
    int pid = slot_pid(m->slot);
    printf("  after the member's dispatch, slot %u's record names pid %d (the member: %d)\n",
           m->slot, pid, (int)m->pid);
    return pid == m->pid ? 0 : -1;
}

/* A joiner while M's claim file is not M's: never M's slot. */
static void join_beside(struct tm_member *m, const char *what)
{
    rpal_domain *d;
    unsigned slot = 0;
    int err = rpal_domain_join(DOMAIN, NULL, &d);
    if (err == 0)
        err = rpal_domain_slot(d, &slot, NULL, NULL);
    printf("claim %s: a joiner got %s, slot %u (the member's: %u)\n", what,
           rpal_strerror(err), slot, m->slot);
    CHECK(err == 0 && slot != m->slot);
    CHECK(gc_reports(m) == 0);
    CHECK(restored(m) == 0);
    if (err == 0) {
        CHECK(tm_talk(d, m) == 0);
        CHECK(rpal_domain_leave(d) == 0);
    }
}

/* NJOIN processes join at once while M's claim file is gone: each gets a
 * slot of its own, none M's. */
#define NJOIN 6
static void many_joiners(const struct tm_member *m)
{
    int go[2], rep[2];
    REQUIRE(pipe(go) == 0 && pipe(rep) == 0);
    pid_t kids[NJOIN];
    for (int i = 0; i < NJOIN; i++) {
        REQUIRE((kids[i] = fork()) >= 0);
        if (kids[i] == 0) {
            close(go[1]);
            rpal_domain *d;
            unsigned slot = 0;
            int err = rpal_domain_join(DOMAIN, NULL, &d);
            if (err == 0)
                err = rpal_domain_slot(d, &slot, NULL, NULL);
            t_put_line(rep[1], "%d %u\n", err, slot);
            t_get(go[0]); /* hold the slot until all have said theirs */
            _exit(err == 0 && rpal_domain_leave(d) == 0 ? 0 : 1);
        }
    }
    close(rep[1]);
    unsigned seen[NJOIN];
    for (int i = 0; i < NJOIN; i++) {
        char line[64];
        int err = -1;
        REQUIRE(t_get_line(rep[0], line, sizeof line, 10000) == 0 &&
                sscanf(line, "%d %u", &err, &seen[i]) == 2);
        CHECK(err == 0 && seen[i] != m->slot);
        for (int j = 0; j < i; j++)
            CHECK(seen[j] != seen[i]);
    }
    printf("%d joiners at once, the member's claim gone: slots", NJOIN);
    for (int i = 0; i < NJOIN; i++)
        printf(" %u", seen[i]);
    printf(" (the member's: %u)\n", m->slot);
    close(go[1]);
    for (int i = 0; i < NJOIN; i++)
        CHECK(t_wait(kids[i]) == 0);
    close(go[0]);
    close(rep[0]);
}

static void write_rec(const char *claim, const void *p, size_t n)
{
    int fd = open(claim, O_WRONLY);
    REQUIRE(fd >= 0 && pwrite(fd, p, n, 0) == (ssize_t)n);
    close(fd);
}

int main(void)
{
    t_init();
    struct tm_member m;
    REQUIRE(tm_member_start(DOMAIN, SIZE, &m) == 0);
    char claim[512], file[32], copy[512];
    struct member_rec rec;
    int fd;
    snprintf(file, sizeof file, "slot.%u", m.slot);
    tm_path(claim, sizeof claim, DOMAIN, file);
    REQUIRE(slot_pid(m.slot) == m.pid);

    REQUIRE(unlink(claim) == 0);
    join_beside(&m, "unlinked");

    /* A copy of it, renamed over it: the same bytes, another file. (M has
     * handled the last joiner's leaving first.) */
    REQUIRE(tm_member_dispatch(&m) == 0);
    fd = open(claim, O_RDONLY);
    REQUIRE(fd >= 0 && pread(fd, &rec, sizeof rec, 0) == (ssize_t)sizeof rec);
    close(fd);
    tm_path(copy, sizeof copy, DOMAIN, "copy");
    fd = open(copy, O_WRONLY | O_CREAT | O_EXCL, 0644);
    REQUIRE(fd >= 0 && pwrite(fd, &rec, sizeof rec, 0) == (ssize_t)sizeof rec);
    close(fd);
    REQUIRE(rename(copy, claim) == 0);
    join_beside(&m, "replaced");

    /* M has handled the joiner's leaving (its dispatch would restore the
     * record at once: that is not what is being looked at here). */
    REQUIRE(tm_member_dispatch(&m) == 0);
    write_rec(claim, "garbage!garbage!", 16);
    printf("record written over with garbage: slot %u names pid %d\n", m.slot,
           slot_pid(m.slot));
    CHECK(slot_pid(m.slot) == -1);
    char out[2048], line[128];
    snprintf(line, sizeof line, "tampered claim %s/slot.%u (", DOMAIN, m.slot);
    if (tm_rpal_gc(out, sizeof out) == 0)
        CHECK(strstr(out, line) != NULL);
    CHECK(restored(&m) == 0);

    /* This time M is not told: a request wakes its dispatch, which puts
     * the record right before it answers, so the request succeeds. */
    rpal_domain *d;
    REQUIRE(rpal_domain_join(DOMAIN, NULL, &d) == 0);
    REQUIRE(tm_member_dispatch(&m) == 0);
    fd = open(claim, O_RDONLY);
    REQUIRE(fd >= 0 && pread(fd, &rec, sizeof rec, 0) == (ssize_t)sizeof rec);
    close(fd);
    rec.pid = getpid();
    rec.pidino = 0; /* then the pid decides */
    write_rec(claim, &rec, sizeof rec);
    printf("record written over with another pid: slot %u names pid %d\n", m.slot,
           slot_pid(m.slot));
    CHECK(slot_pid(m.slot) == getpid());
    usleep(150 * 1000); /* M checks its claim at most every 100 ms */
    int err = tm_talk(d, &m);
    printf("a request to the member: %s; slot %u names pid %d\n", rpal_strerror(err), m.slot,
           slot_pid(m.slot));
    CHECK(err == 0 && slot_pid(m.slot) == m.pid);
    CHECK(rpal_domain_leave(d) == 0);

    REQUIRE(tm_member_dispatch(&m) == 0);
    REQUIRE(unlink(claim) == 0);
    many_joiners(&m);
    REQUIRE(tm_member_dispatch(&m) == 0);
    CHECK(slot_pid(m.slot) == m.pid);

    /* M leaves: its claim (the one it made anew) goes with it, and gc
     * finds nothing of it. */
    CHECK(tm_member_stop(&m) == 0);
    char got[64] = "";
    REQUIRE(rpal_gc(gc_note, got) >= 0);
    CHECK(got[0] == 0 && access(claim, F_OK) != 0);
    return t_done();
}
