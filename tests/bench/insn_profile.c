// SPDX-License-Identifier: GPL-2.0-only
/*
 * insn_profile: a QEMU TCG plugin that counts, exactly, how many times each
 * instruction of the guest kernel executes between two passes through a
 * marker address: an instruction profile that no cache, timer or sampling
 * rate blurs, for scripts/bench-callcost METHOD=insn.
 *
 *   qemu-system-x86_64 ... -plugin PATH/insn_profile.so,mark=0xADDR,out=FILE
 *
 * Every odd pass through the instruction at ADDR (the first instruction of
 * a kernel function, the guest booted with nokaslr) zeroes the counters;
 * every even pass writes "ADDR COUNT" for each kernel instruction executed
 * since, and "user COUNT" for the instructions below the kernel half of
 * the address space, to FILE.K (K = 1, 2, ...).
 *
 * The VM must run single-threaded TCG (vm-run --icount): nothing here is
 * locked.  What it counts is what QEMU executes as guest instructions: a
 * REP-prefixed string instruction counts once per iteration (as -icount
 * does), an instruction that faults and is restarted counts twice, and the
 * user count adds whole translation blocks, so it is approximate.
 *
 * Debian's QEMU (7.2) exports the plugin API but ships no plugin and no
 * header, so the few declarations used are written out below, as the API
 * of QEMU_PLUGIN_VERSION 1 defines them.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu, void *udata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id,
					       struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *udata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
					   qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
				    qemu_plugin_udata_cb_t cb, void *udata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
						 size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
					    qemu_plugin_vcpu_udata_cb_t cb,
					    enum qemu_plugin_cb_flags flags,
					    void *udata);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
						enum qemu_plugin_op op,
						void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
					      enum qemu_plugin_op op,
					      void *ptr, uint64_t imm);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define KERNEL_HALF	0xffff800000000000ULL
#define SLOTS_BITS	22	/* 4M kernel instructions, 64 MiB */

struct slot {
	uint64_t addr;	/* 0: free */
	uint64_t count;
};

static struct slot *slots;
static uint64_t user_count;
static uint64_t mark;
static const char *out;
static unsigned int passes;
static uint64_t used;

/* The counter of @addr, which never moves once made: TCG code points at it. */
static uint64_t *counter(uint64_t addr)
{
	uint64_t i = (addr * 0x9e3779b97f4a7c15ULL) >> (64 - SLOTS_BITS);

	for (;;) {
		if (slots[i].addr == addr)
			return &slots[i].count;
		if (!slots[i].addr) {
			slots[i].addr = addr;
			used++;
			return &slots[i].count;
		}
		i = (i + 1) & ((1ULL << SLOTS_BITS) - 1);
	}
}

static void dump(void)
{
	char path[4096];
	uint64_t i;
	FILE *f;

	snprintf(path, sizeof(path), "%s.%u", out, passes / 2);
	f = fopen(path, "w");
	if (!f) {
		perror(path);
		return;
	}
	fprintf(f, "user %" PRIu64 "\n", user_count);
	for (i = 0; i < (1ULL << SLOTS_BITS); i++)
		if (slots[i].count)
			fprintf(f, "%" PRIx64 " %" PRIu64 "\n", slots[i].addr,
				slots[i].count);
	fclose(f);
}

static void on_mark(unsigned int vcpu, void *udata)
{
	uint64_t i;

	(void)vcpu;
	(void)udata;
	passes++;
	if (passes % 2 == 0) {
		dump();
		return;
	}
	user_count = 0;
	for (i = 0; i < (1ULL << SLOTS_BITS); i++)
		slots[i].count = 0;
}

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	size_t n = qemu_plugin_tb_n_insns(tb), i;

	(void)id;
	if (!n)
		return;
	if (qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0)) <
	    KERNEL_HALF) {
		qemu_plugin_register_vcpu_tb_exec_inline(tb,
			QEMU_PLUGIN_INLINE_ADD_U64, &user_count, n);
		return;
	}
	for (i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uint64_t addr = qemu_plugin_insn_vaddr(insn);

		if (addr == mark)
			qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark,
				QEMU_PLUGIN_CB_NO_REGS, NULL);
		/* kept at most half full, so that probes stay short */
		if (used >= (1ULL << SLOTS_BITS) / 2) {
			fprintf(stderr, "insn_profile: table full\n");
			exit(1);
		}
		qemu_plugin_register_vcpu_insn_exec_inline(insn,
			QEMU_PLUGIN_INLINE_ADD_U64, counter(addr), 1);
	}
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
			int argc, char **argv)
{
	int i;

	(void)info;
	for (i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "mark=", 5))
			mark = strtoull(argv[i] + 5, NULL, 0);
		else if (!strncmp(argv[i], "out=", 4))
			out = argv[i] + 4;
	}
	if (!mark || !out) {
		fprintf(stderr, "insn_profile: needs mark=ADDR,out=FILE\n");
		return -1;
	}
	slots = calloc(1ULL << SLOTS_BITS, sizeof(*slots));
	if (!slots)
		return -1;
	qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
	return 0;
}
