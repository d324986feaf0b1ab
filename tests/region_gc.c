/* `rpal gc` after processes were killed with SIGKILL.
 *
 * 1. A killed creator's transient region is removed (and reported); its
 *    persistent one stays; a second run has nothing to remove. While the
 *    creator lives, nothing of it is removed.
 * 2. A transient region of a dead creator that a live process still maps is
 *    kept until that process is gone.
 * 3. A creator killed between reserving an address and linking the region
 *    leaves no file, does not block the name, and its reservation is freed;
 *    a lock file it may have made is removed once it is dead.
 * 4. A region file removed with unlink(2) behind rpal's back: gc frees its
 *    reservation.
 * 5. `rpal gc --json` output.
 * The command runs as a real process (fork + exec), its stdout read through
 * a pipe.
 */
#include "testlib.h"

#include <fcntl.h>

extern void (*rpal__hook_create_reserved)(void);

static char rpal_cmd[4096];



/* Run `rpal ARG1 [ARG2]`; its stdout goes to OUT. Returns the exit code. */
static int run_rpal(char *out, size_t cap, const char *a1, const char *a2)
{
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(rpal_cmd, "rpal", a1, a2, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    for (;;) {
        ssize_t k = read(p[0], out + n, cap - 1 - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
        if (n == cap - 1)
            break;
    }
    out[n] = 0;
    close(p[0]);
    int rc = t_wait(pid);
    printf("$ rpal %s%s%s -> %d\n%s", a1, a2 ? " " : "", a2 ? a2 : "", rc, out);
    return rc;
}

static int gc(char *out, size_t cap)
{
    int rc = run_rpal(out, cap, "gc", NULL);
    if (rc != 0) {
        fprintf(stderr, "rpal gc exited %d\n", rc);
        t_failures++;
    }
    return rc;
}

/* Does OUT hold the line LINE exactly? */
static int has_line(const char *out, const char *line)
{
    size_t l = strlen(line);
    for (const char *p = out; (p = strstr(p, line)); p++)
        if ((p == out || p[-1] == '\n') && (p[l] == '\n' || p[l] == 0))
            return 1;
    return 0;
}

/* Does OUT hold a line "removed reservation NAME (0x<hex>)"? */
static int has_reservation_line(const char *out, const char *name)
{
    char want[256];
    snprintf(want, sizeof want, "removed reservation %s (0x", name);
    size_t l = strlen(want);
    for (const char *p = out; (p = strstr(p, want)); p++) {
        if (p != out && p[-1] != '\n')
            continue;
        const char *q = p + l;
        size_t digits = strspn(q, "0123456789abcdef");
        if (digits > 0 && q[digits] == ')' && (q[digits + 1] == '\n' || !q[digits + 1]))
            return 1;
    }
    return 0;
}

static int exists(const char *name)
{
    struct rpal_region_info info;
    return rpal_region_stat(name, &info) == 0;
}

static int file_exists(const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", rpal_ns_dir(), name);
    return lstat(path, &st) == 0;
}

/* An empty file NAME in the namespace, made by hand. */
static void plant(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", rpal_ns_dir(), name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd >= 0);
    close(fd);
}

static void kill_and_reap(pid_t pid)
{
    REQUIRE(kill(pid, SIGKILL) == 0);
    CHECK(t_wait(pid) == 128 + SIGKILL);
}

/* A child that creates the regions N1 and N2 (transient when the flag says
 * so), detaches the first if DETACH, reports 'c' (or 'f' on failure), and
 * sleeps until killed. */
static pid_t creator2(const char *n1, unsigned f1, const char *n2, unsigned f2,
                      int detach)
{
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        rpal_region *r;
        int ok = rpal_region_create(n1, 65536, 0600, f1, &r) == 0;
        if (ok)
            memset(rpal_region_addr(r), 1, 4096);
        if (ok && detach)
            ok = rpal_region_detach(r) == 0;
        if (ok && n2)
            ok = rpal_region_create(n2, 65536, 0600, f2, &r) == 0;
        t_put(p[1], ok ? 'c' : 'f');
        for (;;)
            pause();
    }
    close(p[1]);
    char c = t_get(p[0]);
    close(p[0]);
    if (c != 'c') {
        fprintf(stderr, "creator of %s could not create\n", n1);
        t_failures++;
    }
    return pid;
}

static pid_t creator(const char *n1, unsigned f1, const char *n2, unsigned f2)
{
    return creator2(n1, f1, n2, f2, 0);
}

static char out[8192];

static void killed_creator(void)
{
    pid_t pid = creator("gc/tmp", RPAL_REGION_TRANSIENT, "gc/keep", 0);
    /* A creator that lives on but no longer maps its transient region. */
    pid_t idle = creator2("gc/idle", RPAL_REGION_TRANSIENT, NULL, 0, 1);
    struct rpal_region_info info;
    CHECK_ERR(rpal_region_stat("gc/tmp", &info), 0);
    CHECK(info.flags & RPAL_REGION_TRANSIENT);
    CHECK(info.creator_pid == pid);
    CHECK(info.creator_alive);
    CHECK_ERR(rpal_region_stat("gc/idle", &info), 0);
    CHECK(info.creator_pid == idle);
    CHECK(info.creator_alive);
    CHECK(info.nattached == 0);

    /* A live creator keeps everything, mapped or not. */
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));
    CHECK(exists("gc/tmp") && exists("gc/keep"));
    CHECK(exists("gc/idle"));

    kill_and_reap(pid);
    kill_and_reap(idle);
    CHECK_ERR(rpal_region_stat("gc/tmp", &info), 0);
    CHECK(!info.creator_alive && info.nattached == 0);

    gc(out, sizeof out);
    CHECK(has_line(out, "removed region gc/tmp"));
    CHECK(has_line(out, "removed region gc/idle"));
    CHECK(!strstr(out, "gc/keep"));
    CHECK(!strstr(out, "nothing to remove"));
    CHECK(!exists("gc/tmp") && !file_exists("gc/tmp"));
    CHECK(exists("gc/keep"));

    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));
    CHECK(!strstr(out, "removed"));
    CHECK(exists("gc/keep"));
}

static void still_attached(void)
{
    pid_t pid = creator("gc/shared", RPAL_REGION_TRANSIENT, NULL, 0);

    /* Another process, not a child of the creator, attaches it. */
    int up[2], down[2];
    REQUIRE(pipe(up) == 0 && pipe(down) == 0);
    pid_t user = fork();
    REQUIRE(user >= 0);
    if (user == 0) {
        close(up[0]);
        close(down[1]);
        rpal_region *r;
        int ok = rpal_region_attach("gc/shared", 0, &r) == 0;
        t_put(up[1], ok ? 'a' : 'f');
        t_get(down[0]); /* until the parent closes the pipe */
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    CHECK(t_get(up[0]) == 'a');
    kill_and_reap(pid);

    gc(out, sizeof out);
    CHECK(!strstr(out, "gc/shared"));
    CHECK(has_line(out, "nothing to remove"));
    CHECK(exists("gc/shared"));

    close(down[1]);
    CHECK(t_wait(user) == 0);
    close(up[0]);
    gc(out, sizeof out);
    CHECK(has_line(out, "removed region gc/shared"));
    CHECK(!exists("gc/shared"));
}

static int hook_fd = -1;

static void hook(void)
{
    t_put(hook_fd, 'h');
    for (;;)
        pause();
}

static void killed_midway(void)
{
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        hook_fd = p[1];
        rpal__hook_create_reserved = hook;
        rpal_region *r;
        int err = rpal_region_create("gc/half", 1 << 20, 0600, 0, &r);
        fprintf(stderr, "creator got past the hook: %d\n", err);
        t_put(p[1], 'x');
        _exit(1);
    }
    close(p[1]);
    char c = t_get(p[0]);
    close(p[0]);
    if (c != 'h') {
        fprintf(stderr, "the creation hook did not run (got %c)\n", c ? c : '0');
        t_failures++;
    }
    /* While the creator lives, its reservation is not garbage, nor a lock
     * file of the name it reserved (a creator makes it before linking). */
    plant("gc/.half.77.lock");
    gc(out, sizeof out);
    CHECK(file_exists("gc/.half.77.lock"));
    CHECK(!strstr(out, "gc/half"));
    CHECK(has_line(out, "nothing to remove"));
    kill_and_reap(pid);

    CHECK(!file_exists("gc/half"));
    struct rpal_region_info info;
    CHECK_ERR(rpal_region_stat("gc/half", &info), -ENOENT);
    /* The dead creator's reservation does not block the name. */
    rpal_region *r;
    int err = rpal_region_create("gc/half", 1 << 20, 0600, 0, &r);
    CHECK_ERR(err, 0);
    if (err == 0) {
        memset(rpal_region_addr(r), 2, 1 << 20);
        CHECK(rpal_region_detach(r) == 0);
    }

    gc(out, sizeof out);
    CHECK(has_reservation_line(out, "gc/half"));
    CHECK(!strstr(out, "removed region"));
    CHECK(exists("gc/half")); /* the new, complete one stays */
    /* A creator killed after making its lock file left it behind (rpal
     * chaos found it): gc removes a lock file whose region has another
     * inode, and keeps the new region's own (attach needs it). */
    CHECK(has_line(out, "removed lock gc/.half.77.lock"));
    CHECK(!file_exists("gc/.half.77.lock"));
    if (err == 0) {
        CHECK_ERR(rpal_region_attach("gc/half", 0, &r), 0);
        CHECK(rpal_region_detach(r) == 0);
    }
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));
    CHECK(rpal_region_unlink("gc/half") == 0);
}

static void unlinked_behind(void)
{
    rpal_region *r;
    REQUIRE(rpal_region_create("gc/vanish", 65536, 0600, 0, &r) == 0);
    CHECK(rpal_region_detach(r) == 0);

    gc(out, sizeof out);
    CHECK(!strstr(out, "gc/vanish"));

    char path[512];
    snprintf(path, sizeof path, "%s/gc/vanish", rpal_ns_dir());
    CHECK(unlink(path) == 0);
    gc(out, sizeof out);
    CHECK(has_reservation_line(out, "gc/vanish"));
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));

    /* Renamed behind rpal's back: the file still holds its address, so gc
     * keeps the reservation, and a new region does not get that address. */
    REQUIRE(rpal_region_create("gc/moved", 65536, 0600, 0, &r) == 0);
    uintptr_t moved_at = (uintptr_t)rpal_region_addr(r);
    CHECK(rpal_region_detach(r) == 0);
    char to[512];
    snprintf(path, sizeof path, "%s/gc/moved", rpal_ns_dir());
    snprintf(to, sizeof to, "%s/gc/moved-by-hand", rpal_ns_dir());
    CHECK(rename(path, to) == 0);
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));
    struct rpal_region_info info;
    CHECK(rpal_region_stat("gc/moved-by-hand", &info) == 0 && info.base == moved_at);
    CHECK(rpal_region_unlink("gc/moved-by-hand") == 0);
    gc(out, sizeof out);
    /* unlink found its reservation by inode; its lock file still has the
     * old name, which unlink cannot know: gc removes it. */
    CHECK(!strstr(out, "reservation"));
    CHECK(strstr(out, "removed lock gc/.moved.") != NULL);
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));

    /* Removed through rpal, nothing is left for gc. */
    REQUIRE(rpal_region_create("gc/gone", 65536, 0600, 0, &r) == 0);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink("gc/gone") == 0);
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));
}

static void json(void)
{
    CHECK(run_rpal(out, sizeof out, "gc", "--json") == 0);
    CHECK(!strcmp(out, "{\"removed\":[],\"count\":0}\n"));

    pid_t pid = creator("gc/j", RPAL_REGION_TRANSIENT, NULL, 0);
    kill_and_reap(pid);
    CHECK(run_rpal(out, sizeof out, "gc", "--json") == 0);
    CHECK(!strcmp(out, "{\"removed\":[{\"kind\":\"region\",\"name\":\"gc/j\"}],\"count\":1}\n"));

    pid = creator("gc/j1", RPAL_REGION_TRANSIENT, "gc/j2", RPAL_REGION_TRANSIENT);
    kill_and_reap(pid);
    CHECK(run_rpal(out, sizeof out, "gc", "--json") == 0);
    CHECK(!strcmp(out, "{\"removed\":[{\"kind\":\"region\",\"name\":\"gc/j1\"},"
                       "{\"kind\":\"region\",\"name\":\"gc/j2\"}],\"count\":2}\n"));
    CHECK(!exists("gc/j") && !exists("gc/j1") && !exists("gc/j2"));
}

int main(void)
{
    t_init();
    const char *bin = getenv("RPAL_BIN");
    snprintf(rpal_cmd, sizeof rpal_cmd, "%s/rpal", bin && *bin ? bin : "build");
    if (access(rpal_cmd, X_OK) != 0)
        t_skip("no rpal command at %s (set RPAL_BIN to the build directory)",
               rpal_cmd);
    /* No namespace yet: nothing to do, and no error. */
    gc(out, sizeof out);
    CHECK(has_line(out, "nothing to remove"));

    killed_creator();
    still_attached();
    killed_midway();
    unlinked_behind();
    json();
    CHECK(exists("gc/keep"));
    return t_done();
}
