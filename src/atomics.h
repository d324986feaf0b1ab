/* C11 atomics with the memory order in the name, so that every shared access
 * says how it is ordered. Each acquire/release use states in a comment what it
 * pairs with. Internal header. */
#ifndef RPAL_ATOMICS_H
#define RPAL_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>

#define rpal_load_relaxed(p)     atomic_load_explicit((p), memory_order_relaxed)
#define rpal_load_acquire(p)     atomic_load_explicit((p), memory_order_acquire)
#define rpal_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define rpal_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define rpal_load_seq_cst(p)     atomic_load_explicit((p), memory_order_seq_cst)
#define rpal_store_seq_cst(p, v) atomic_store_explicit((p), (v), memory_order_seq_cst)
#define rpal_fetch_add_seq_cst(p, v) \
    atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define rpal_fetch_add_relaxed(p, v) \
    atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define rpal_fetch_add_acq_rel(p, v) \
    atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define rpal_fetch_or_relaxed(p, v) \
    atomic_fetch_or_explicit((p), (v), memory_order_relaxed)
#define rpal_cas_acq_rel(p, expp, v)                                          \
    atomic_compare_exchange_strong_explicit((p), (expp), (v),                 \
                                            memory_order_acq_rel,             \
                                            memory_order_acquire)
/* The same orderings on a plain (not _Atomic) object: for the fields of a
 * ring entry (struct ch_entry), which is also copied whole into a local and
 * read there without atomics, and for the entries of compat's descriptor
 * tables. */
#define rpal_plain_load_relaxed(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define rpal_plain_load_acquire(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define rpal_plain_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#if defined(__SANITIZE_THREAD__)
/* ThreadSanitizer does not model fences (gcc refuses them: -Wtsan). A
 * seq_cst read-modify-write is the same hardware barrier; on a thread-local
 * word it adds no ordering TSan could mistake for synchronisation between
 * threads (what the fences order is another process's memory, which TSan
 * cannot see anyway). */
static _Thread_local _Atomic int rpal_fence_word __attribute__((unused));
#define rpal_fence_seq_cst() \
    ((void)atomic_fetch_add_explicit(&rpal_fence_word, 0, memory_order_seq_cst))
#define rpal_fence_acquire() rpal_fence_seq_cst()
#elif defined(__x86_64__)
/* A locked add of 0 to the top of our own stack is a full barrier on x86
 * for ordinary (write-back) memory, as MFENCE is, and cheaper on current
 * CPUs (Linux's smp_mb() has used it since 4.15). It touches the red zone
 * but changes nothing there, and no other thread writes our stack. */
#define rpal_fence_seq_cst() __asm__ volatile("lock addl $0, -8(%%rsp)" ::: "memory", "cc")
#define rpal_fence_acquire() atomic_thread_fence(memory_order_acquire)
#else
#define rpal_fence_seq_cst() atomic_thread_fence(memory_order_seq_cst)
#define rpal_fence_acquire() atomic_thread_fence(memory_order_acquire)
#endif

/* Ask for the cache line at P for writing ahead of time (PREFETCHW on x86,
 * PRFM PSTL1KEEP on arm64): a line the other side read last is then ours by
 * the time we write it, so that the barrier after the write does not wait
 * for that transfer. A hint: nothing breaks where it does nothing. */
#if defined(__x86_64__) || defined(__i386__)
#define rpal_prefetch_write(p) __asm__ volatile("prefetchw %0" ::"m"(*(const char *)(p)))
#else
#define rpal_prefetch_write(p) __builtin_prefetch((p), 1, 3)
#endif

#endif
