/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dither.h - the benchmarks' scheduling dither (make bench)
 *
 * On one vCPU under QEMU -icount, the tasks and kernel threads of a
 * connection loop settle into one of several scheduling patterns, and a few
 * instructions more or less anywhere can switch it to another: a rate moves
 * by up to 12% whatever the kernels' own costs.  Spinning a pseudo-random
 * 0 to max loop iterations before each unit of work mixes the patterns
 * within a run; the same seed gives the same sequence on both kernels.
 */
#ifndef BENCH_DITHER_H
#define BENCH_DITHER_H

#include <stdint.h>

/* A non-zero xorshift32 state from @seed. */
static inline uint32_t dither_seed(uint32_t seed)
{
	return seed * 2654435761u ?: 1;
}

/* Spin for 0 to @max loop iterations, the next number drawn from *@x. */
static inline void dither(uint32_t *x, unsigned long max)
{
	volatile unsigned long i;
	unsigned long n;

	if (!max)
		return;
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	n = *x % (max + 1);
	for (i = 0; i < n; i++)
		;
}

#endif
