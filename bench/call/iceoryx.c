/* iceoryx (bench/call): classic request/response through its C binding,
 * loaded at run time; iox-roudi started for the run. */
#include "call.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#if __has_include(<iceoryx_binding_c/runtime.h>)
#include <iceoryx_binding_c/client.h>
#include <iceoryx_binding_c/log.h>
#include <iceoryx_binding_c/runtime.h>
#include <iceoryx_binding_c/server.h>
#include <iceoryx_binding_c/wait_set.h>

#define IOX_FUNCS(X)                                                          \
    X(iox_set_loglevel) X(iox_runtime_init) X(iox_runtime_shutdown)          \
    X(iox_client_options_init) X(iox_client_init) X(iox_client_deinit)       \
    X(iox_client_loan_request) X(iox_client_send)                            \
    X(iox_client_get_connection_state) X(iox_client_take_response)           \
    X(iox_client_release_response) X(iox_server_options_init)               \
    X(iox_server_init) X(iox_server_deinit) X(iox_server_take_request)       \
    X(iox_server_release_request) X(iox_server_loan_response)               \
    X(iox_server_send) X(iox_ws_init) X(iox_ws_deinit) X(iox_ws_wait)        \
    X(iox_ws_attach_client_event) X(iox_ws_attach_server_event)
static struct {
    int loaded;
    IOX_FUNCS(FN_PTR)
} ix;

static pid_t roudi_pid; /* the iox-roudi we started, until reaped */
static char roudi_log[64];

static struct {
    char event[64];
    iox_client_storage_t client_st;
    iox_server_storage_t server_st;
    iox_ws_storage_t ws_st;
    iox_client_t client;
    iox_server_t server;
    iox_ws_t ws;
    const void *req;  /* server: the request being answered */
    const void *resp; /* client: the response being read */
    void *out;        /* the loaned outgoing chunk */
} io;

static const char *iox_load(void)
{
    static char why[300];
    const char *soname = "libiceoryx_binding_c.so.2";
    if (ix.loaded)
        return NULL;
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, sizeof why, "%s (Debian package libiceoryx-binding-c2)",
                 dlerror());
        return why;
    }
    __typeof__(&ix) lib = &ix;
    IOX_FUNCS(FN_LOAD)
    ix.loaded = 1;
    return NULL;
}

static const char *iox_skip(const struct ctx *c)
{
    (void)c;
    const char *why = iox_load();
    if (why)
        return why;
    if (!find_in_path("iox-roudi"))
        return "iox-roudi not found in PATH (Debian package iceoryx)";
    return NULL;
}

static const char *iox_waits(const struct ctx *c)
{
    return c->poll ? "both take loop (pause); request/response"
                   : "both iox_ws_wait (waitset); request/response";
}

void stop_roudi(void)
{
    if (roudi_pid > 0) {
        kill(roudi_pid, SIGTERM);
        for (int i = 0; i < 500; i++) { /* 5 s */
            pid_t p = waitpid(roudi_pid, NULL, WNOHANG);
            if (p == roudi_pid || (p < 0 && errno == ECHILD))
                break;
            usleep(10000);
            if (i == 499) {
                kill(roudi_pid, SIGKILL);
                waitpid(roudi_pid, NULL, 0);
            }
        }
        roudi_pid = 0;
    }
    if (roudi_log[0])
        unlink(roudi_log);
    roudi_log[0] = 0;
}

void roudi_reaped(pid_t pid)
{
    if (pid == roudi_pid)
        roudi_pid = 0;
}

/* The last non-empty line of roudi's log, for a skip reason. */
static void roudi_last_line(char *out, size_t len)
{
    char buf[4096];
    FILE *f = fopen(roudi_log, "r");
    out[0] = 0;
    if (!f)
        return;
    while (fgets(buf, sizeof buf, f))
        if (strspn(buf, " \t\r\n") < strlen(buf)) {
            buf[strcspn(buf, "\r\n")] = 0;
            snprintf(out, len, "%s", buf);
        }
    fclose(f);
}

static int iox_setup(struct ctx *c)
{
    snprintf(io.event, sizeof io.event, "call-%d", (int)getpid());
    snprintf(roudi_log, sizeof roudi_log, "/tmp/rpal-bench-roudi-XXXXXX");
    int fd = mkstemp(roudi_log);
    if (fd < 0) {
        roudi_log[0] = 0;
        snprintf(c->msg, sizeof c->msg, "mkstemp: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(c->msg, sizeof c->msg, "fork: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fd, 1);
        dup2(fd, 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execlp("iox-roudi", "iox-roudi", (char *)NULL);
        _exit(127);
    }
    close(fd);
    roudi_pid = pid;
    /* Ready when it says so (10 s at most). */
    for (int i = 0; i < 1000; i++) {
        char buf[8192];
        FILE *f = fopen(roudi_log, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (strstr(buf, "RouDi is ready for clients"))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char line[200];
            roudi_pid = 0;
            roudi_last_line(line, sizeof line);
            snprintf(c->msg, sizeof c->msg,
                     "iox-roudi exited (%s) before it was ready: %s",
                     WIFEXITED(st) ? "status" : "signal",
                     line[0] ? line : "no output (another RouDi running?)");
            stop_roudi();
            return 1;
        }
        usleep(10000);
    }
    snprintf(c->msg, sizeof c->msg, "iox-roudi was not ready after 10 s");
    stop_roudi();
    return 1;
}

static void iox_init(struct ctx *c, int side)
{
    char name[64];
    snprintf(name, sizeof name, "rpal-bench-%s-%d",
             side == SERVER ? "server" : "client", (int)getpid());
    ix.iox_set_loglevel(Iceoryx_LogLevel_Warn);
    ix.iox_runtime_init(name);
    if (!c->poll)
        io.ws = ix.iox_ws_init(&io.ws_st);
    if (side == SERVER) {
        iox_server_options_t o;
        ix.iox_server_options_init(&o);
        o.offerOnCreate = true;
        io.server = ix.iox_server_init(&io.server_st, "rpal-bench", "call",
                                       io.event, &o);
        if (!io.server)
            die_msg("iox_server_init failed");
        if (io.ws && ix.iox_ws_attach_server_event(io.ws, io.server,
                                                   ServerEvent_REQUEST_RECEIVED,
                                                   0, NULL) != WaitSetResult_SUCCESS)
            die_msg("iox_ws_attach_server_event failed");
    } else {
        iox_client_options_t o;
        ix.iox_client_options_init(&o);
        o.connectOnCreate = true;
        io.client = ix.iox_client_init(&io.client_st, "rpal-bench", "call",
                                       io.event, &o);
        if (!io.client)
            die_msg("iox_client_init failed");
        if (io.ws && ix.iox_ws_attach_client_event(io.ws, io.client,
                                                   ClientEvent_RESPONSE_RECEIVED,
                                                   0, NULL) != WaitSetResult_SUCCESS)
            die_msg("iox_ws_attach_client_event failed");
    }
}

static void iox_connect(struct ctx *c, int side)
{
    (void)c;
    if (side == SERVER)
        return;
    for (int i = 0; i < 10000; i++) { /* 10 s */
        if (ix.iox_client_get_connection_state(io.client) == ConnectionState_CONNECTED)
            return;
        usleep(1000);
    }
    die_msg("the client did not connect to the server in 10 s");
}

static void *iox_buf(struct ctx *c, int side)
{
    enum iox_AllocationResult r =
        side == SERVER
            ? ix.iox_server_loan_response(io.server, io.req, &io.out, (uint32_t)c->size)
            : ix.iox_client_loan_request(io.client, &io.out, (uint32_t)c->size);
    if (r != AllocationResult_SUCCESS)
        die_msg("loaning a %zu-byte chunk failed (%d)", c->size, (int)r);
    return io.out;
}

static void iox_send(struct ctx *c, int side)
{
    (void)c;
    if (side == SERVER) {
        enum iox_ServerSendResult r = ix.iox_server_send(io.server, io.out);
        if (r != ServerSendResult_SUCCESS)
            die_msg("iox_server_send: %d", (int)r);
    } else {
        enum iox_ClientSendResult r = ix.iox_client_send(io.client, io.out);
        if (r != ClientSendResult_SUCCESS)
            die_msg("iox_client_send: %d", (int)r);
    }
}

static void iox_wait(void)
{
    iox_notification_info_t ni[2];
    uint64_t missed = 0;
    ix.iox_ws_wait(io.ws, ni, 2, &missed);
}

static const void *iox_recv(struct ctx *c, int side)
{
    for (;;) {
        if (side == SERVER) {
            enum iox_ServerRequestResult r = ix.iox_server_take_request(io.server, &io.req);
            if (r == ServerRequestResult_SUCCESS)
                return io.req;
            if (r != ServerRequestResult_NO_PENDING_REQUESTS)
                die_msg("iox_server_take_request: %d", (int)r);
        } else {
            enum iox_ChunkReceiveResult r = ix.iox_client_take_response(io.client, &io.resp);
            if (r == ChunkReceiveResult_SUCCESS)
                return io.resp;
            if (r != ChunkReceiveResult_NO_CHUNK_AVAILABLE)
                die_msg("iox_client_take_response: %d", (int)r);
        }
        if (c->poll)
            cpu_relax();
        else
            iox_wait();
    }
}

static void iox_done(struct ctx *c, int side)
{
    (void)c;
    if (side == SERVER)
        ix.iox_server_release_request(io.server, io.req);
    else
        ix.iox_client_release_response(io.client, io.resp);
}

static void iox_fini(struct ctx *c, int side)
{
    (void)c;
    if (io.ws)
        ix.iox_ws_deinit(io.ws);
    if (side == SERVER)
        ix.iox_server_deinit(io.server);
    else
        ix.iox_client_deinit(io.client);
    ix.iox_runtime_shutdown();
}

static void iox_teardown(struct ctx *c)
{
    (void)c;
    stop_roudi();
}

const struct transport tr_iox = {
    .name = "iceoryx", .skip = iox_skip, .waits = iox_waits,
    .setup = iox_setup, .init = iox_init, .connect = iox_connect,
    .buf = iox_buf, .send = iox_send, .recv = iox_recv, .done = iox_done,
    .fini = iox_fini, .teardown = iox_teardown,
};
#else
void stop_roudi(void) {}
void roudi_reaped(pid_t pid) { (void)pid; }
static const char *iox_missing(const struct ctx *c)
{
    (void)c;
    return "built without the iceoryx C binding headers (Debian package "
           "libiceoryx-binding-c-dev; -I/usr/include/iceoryx/v2.0.3)";
}
const struct transport tr_iox = {.name = "iceoryx", .skip = iox_missing};
#endif
