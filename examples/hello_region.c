/* examples/hello_region.c: a list built with plain pointers in a named region,
 * walked by another program. Build: cc hello_region.c $(pkg-config --cflags --libs rpal) */
#include <rpal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

struct node { struct node *next; int value; };

static int walk(void)                         /* the other program: attach by name */
{
    rpal_region *r;
    int err = rpal_region_attach("hello-list", RPAL_REGION_RDONLY, &r);
    if (err < 0) { fprintf(stderr, "attach: %s\n", rpal_strerror(err)); return 1; }
    int sum = 0;
    for (const struct node *n = rpal_region_addr(r); n; n = n->next)
        sum += n->value;                      /* the writer's pointers, as they are */
    printf("pid %d walked the list at %p: sum %d\n", (int)getpid(), rpal_region_addr(r), sum);
    rpal_region_detach(r);
    return sum == 285 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        return walk();
    rpal_region *r;          /* transient: `rpal gc` removes it if we die without unlinking */
    int err = rpal_region_create("hello-list", 1 << 20, 0600, RPAL_REGION_TRANSIENT, &r);
    if (err < 0) { fprintf(stderr, "create: %s\n", rpal_strerror(err)); return 1; }
    struct node *n = rpal_region_addr(r);     /* the same address in every process */
    for (int i = 0; i < 10; i++)
        n[i] = (struct node){ i < 9 ? &n[i + 1] : NULL, i * i };
    printf("pid %d built a list at %p\n", (int)getpid(), (void *)n);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {                         /* a new program, started with exec */
        execl("/proc/self/exe", argv[0], "walk", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(child, &st, 0);
    rpal_region_detach(r);
    rpal_region_unlink("hello-list");
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
