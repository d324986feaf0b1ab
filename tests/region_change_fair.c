/* The change lock is fair and sleeps: changers waiting for it are served
 * in the order they came, and a waiter sleeps until its turn instead of
 * polling (issue 19).
 *
 * Sharer S is stopped, so that changer H holds the change lock for 3 s
 * (its protect waits for S, then detaches it). Meanwhile five more changers
 * W1..W5 (other processes) come, one after the other, each once the one
 * before is asleep waiting. They must get the lock in that order (the
 * library's test hook rpal__hook_change_locked says when each got it;
 * without the hook, the order in which the changes returned), and W1,
 * which waits the longest, must not have woken up more than a few times
 * (before the fix the lock was polled with sleeps of up to 5 ms: hundreds
 * of wake-ups, and the first to poll after the holder let go won).
 */
#include "testlib.h"

#include <sys/mman.h>

#define NAME "fair"
#define SIZE (1u << 20)
#define PAGE 4096u
#define NW   5

static rpal_region *r;

/* The library's test hook (weak: a library without it leaves it NULL). */
extern void (*rpal__hook_change_locked)(void) __attribute__((weak));
static int hook_fd = -1, my_index;

static void locked(void)
{
    char c = (char)('0' + my_index);
    if (write(hook_fd, &c, 1) != 1)
        _exit(4);
}

/* Voluntary context switches of the main thread of PID (0: ourselves). */
static long vcsw(pid_t pid)
{
    char p[64], line[256];
    snprintf(p, sizeof p, pid ? "/proc/%d/status" : "/proc/thread-self/status", (int)pid);
    FILE *f = fopen(p, "r");
    long n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static char state(pid_t pid)
{
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    char st = '?';
    if (f && fgets(buf, sizeof buf, f)) {
        const char *e = strrchr(buf, ')');
        if (e && e[1] == ' ')
            st = e[2];
    }
    if (f)
        fclose(f);
    return st;
}

/* Asleep in the kernel, and not woken for 50 ms: waiting for the lock.
 * Gives up after MS milliseconds. */
static void wait_asleep(pid_t pid, int ms)
{
    long last = -2;
    int stable = 0;
    for (int t = 0; t < ms && stable < 5; t += 10) {
        long n = vcsw(pid);
        stable = state(pid) == 'S' && n == last ? stable + 1 : 0;
        last = n;
        usleep(10000);
    }
}

/* Child I: when told, protect page I; report "I" when done, and how often
 * it woke up meanwhile. I 0 is H, which waits for S. */
static int changer(int i, int down, int done)
{
    if (t_get(down) != 'g')
        return 2;
    my_index = i;
    if (&rpal__hook_change_locked)
        rpal__hook_change_locked = locked;
    struct rpal_region_change c = {.timeout_ms = i == 0 ? 3000 : 2000};
    long v0 = vcsw(0);
    int err = rpal_region_protect(r, (uint64_t)i * PAGE, PAGE, PROT_READ, &c);
    long woke = vcsw(0) - v0;
    t_put_line(done, "%d %d %ld\n", i, err, woke);
    t_get(down);
    return 0;
}

int main(void)
{
    t_init();
    alarm(60);
    REQUIRE(rpal_region_create(NAME, SIZE, 0600, RPAL_REGION_EMPTY, &r) == 0);
    CHECK_ERR(rpal_region_map(r, 0, (NW + 1) * PAGE, PROT_READ | PROT_WRITE, -1, 0, NULL), 0);
    int done[2], order_pipe[2];
    REQUIRE(pipe(done) == 0 && pipe(order_pipe) == 0);
    hook_fd = order_pipe[1];
    pid_t kid[NW + 1];
    int down[NW + 1];
    for (int i = 0; i <= NW; i++) {
        int d[2];
        REQUIRE(pipe(d) == 0);
        pid_t parent = getpid();
        kid[i] = fork();
        REQUIRE(kid[i] >= 0);
        if (kid[i] == 0) {
            t_die_with_parent(parent);
            close(d[1]);
            close(done[0]);
            _exit(changer(i, d[0], done[1]));
        }
        close(d[0]);
        down[i] = d[1];
    }
    close(done[1]);
    pid_t s = t_fork_sharer();
    t_stop(s);

    uint32_t g = t_region_gen(NAME);
    t_put(down[0], 'g');
    for (int i = 0; i < 2000 && t_region_gen(NAME) == g; i++)
        usleep(1000);
    REQUIRE(t_region_gen(NAME) != g); /* H holds the lock, waiting for S */
    for (int i = 1; i <= NW; i++) {
        t_put(down[i], 'g');
        wait_asleep(kid[i], 400);
    }
    int order[NW + 1], n = 0;
    long woke[NW + 1] = {0};
    char line[128];
    while (n <= NW && t_get_line(done[0], line, sizeof line, 20000) == 0) {
        int i, err;
        long w;
        REQUIRE(sscanf(line, "%d %d %ld", &i, &err, &w) == 3 && i >= 0 && i <= NW);
        CHECK(err >= 0);
        order[n++] = i;
        woke[i] = w;
    }
    CHECK(n == NW + 1);
    if (&rpal__hook_change_locked) { /* the order they got the lock in */
        REQUIRE(read(order_pipe[0], line, NW + 1) == NW + 1);
        for (int k = 0; k <= NW; k++)
            order[k] = line[k] - '0';
    }
    for (int k = 0; k < n; k++)
        if (order[k] != k) {
            fprintf(stderr, "changers got the lock in the order");
            for (int j = 0; j < n; j++)
                fprintf(stderr, " %d", order[j]);
            fprintf(stderr, ", not in the order they came (0 to %d)\n", NW);
            t_failures++;
            break;
        }
    if (woke[1] > 40) {
        fprintf(stderr, "the first waiter woke up %ld times while it waited\n", woke[1]);
        t_failures++;
    }
    for (int i = 0; i <= NW; i++) {
        t_put(down[i], 'q');
        CHECK(t_wait(kid[i]) == 0);
    }
    kill(s, SIGKILL);
    t_wait(s);
    CHECK(rpal_region_detach(r) == 0);
    CHECK(rpal_region_unlink(NAME) == 0);
    return t_done();
}
