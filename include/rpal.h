/* rpal: Run Process As Library, in user space, on a stock Linux kernel.
 *
 * The one public header. Every function returns 0 (or a non-negative value
 * where documented) on success and a negative errno on failure; none of them
 * relies on errno. Handles are opaque. See rpal(7) and docs/ for the design.
 */
#ifndef RPAL_H
#define RPAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RPAL_VERSION_MAJOR 0
#define RPAL_VERSION_MINOR 1
#define RPAL_VERSION_PATCH 0

/* The library's version as "MAJOR.MINOR.PATCH" (of the loaded library, which
 * may be newer than the header the program was built with). */
const char *rpal_version(void);

/* A human-readable message for a negative errno returned by rpal. Knows the
 * meaning rpal gives to a few codes (EBADMSG: not an rpal region, ...). */
const char *rpal_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Regions: named, same-address shared memory (the mshare model).            */
/* ------------------------------------------------------------------------ */

/* Longest region name, in bytes, without the terminating NUL. A name is one
 * or more components separated by '/'; each component is 1 to 64 characters
 * from [A-Za-z0-9_.-] and does not start with '.'. */
#define RPAL_NAME_MAX 200

/* Flags for rpal_region_create() and rpal_region_attach(). */
#define RPAL_REGION_RDONLY    0x1u /* attach: map read-only (kernel-enforced) */
#define RPAL_REGION_TRANSIENT 0x2u /* create: `rpal gc` may remove the region
                                      once its creator is dead and no live
                                      process has it attached */

typedef struct rpal_region rpal_region;

/* Create the region NAME of SIZE bytes (a multiple of the page size) with
 * file mode MODE (0 means 0600; the umask does not apply) in the namespace
 * directory, and attach it read-write. Creation is exclusive: if NAME exists,
 * -EEXIST. Missing parent directories of NAME are created with MODE plus the
 * search bit wherever MODE grants read. The memory reads as zeros. */
int rpal_region_create(const char *name, size_t size, unsigned mode,
                       unsigned flags, rpal_region **out);

/* Attach the existing region NAME at the address it has in every process.
 * FLAGS: 0 or RPAL_REGION_RDONLY. The cost does not depend on the size. */
int rpal_region_attach(const char *name, unsigned flags, rpal_region **out);

/* Unmap the region from this process and free the handle. The region itself
 * stays until it is unlinked. */
int rpal_region_detach(rpal_region *r);

/* Remove NAME from the namespace. Processes that have it attached keep their
 * mapping; the memory is freed when the last one detaches or exits. */
int rpal_region_unlink(const char *name);

/* The region's data: the same address in every process that attaches it. */
void *rpal_region_addr(const rpal_region *r);
size_t rpal_region_size(const rpal_region *r);

struct rpal_region_info {
    char name[RPAL_NAME_MAX + 1];
    uint64_t size;         /* bytes of data */
    uint64_t base;         /* address of the data in every process */
    uint32_t mode;         /* file permission bits */
    uint32_t flags;        /* RPAL_REGION_TRANSIENT, ... */
    uint32_t uid, gid;     /* owner of the region's file */
    int32_t creator_pid;
    uint32_t creator_uid;
    int creator_alive;     /* 1 if the creating process still runs */
    uint64_t created_ns;   /* CLOCK_REALTIME at creation */
    int nattached;         /* live processes that map it (that we may see) */
    pid_t attached[16];    /* the first of them */
};

/* Describe NAME without attaching it. */
int rpal_region_stat(const char *name, struct rpal_region_info *info);

/* Call FN for every region in the namespace that the caller may see, in
 * name order. A non-zero return from FN stops the walk and is returned. */
int rpal_region_foreach(int (*fn)(const struct rpal_region_info *info,
                                  void *arg),
                        void *arg);

/* ------------------------------------------------------------------------ */
/* Namespace and housekeeping.                                               */
/* ------------------------------------------------------------------------ */

/* The namespace directory: $RPAL_DIR, or /dev/shm/rpal. */
const char *rpal_ns_dir(void);

/* Remove what belongs only to dead processes: transient regions whose
 * creator died and that no live process maps, address reservations of
 * processes that died while creating a region, and reservations of regions
 * whose file was removed by other means. FN (may be NULL) is called once per
 * removed item with a short kind ("region", "reservation") and a name.
 * Returns the number of items removed, or a negative errno. */
int rpal_gc(void (*fn)(const char *kind, const char *name, void *arg),
            void *arg);

#ifdef __cplusplus
}
#endif
#endif /* RPAL_H */
