// SPDX-License-Identifier: GPL-2.0
/*
 * vsock_ns_bench - micro-benchmarks for the AF_VSOCK netns series (make bench)
 *
 * Runs as root in the guest, on our kernel and on the unpatched baseline.
 * Every figure is guest time from clock_gettime(CLOCK_MONOTONIC); under
 * vm-run --icount that is a function of the instructions executed.
 *
 * Output: one line per measured repetition,
 *	RESULT <name> <value> <unit>
 * and "NA <name> <reason>" when a figure does not exist on this kernel (a
 * local netns on the baseline).  The host (scripts/bench) takes medians.
 *
 * Namespace kinds: "init" (init_net), "global" (a fresh netns, child of
 * init_net) and "local".  init_net's child_ns_mode is write-once for the boot
 * and never written: a local netns is made by unsharing a "parent" netns,
 * writing "local" to its child_ns_mode and unsharing again from there.
 * "nested" (mem only) is made the same way without the write: a global
 * netns that is a child of another, what the baseline, which has no local
 * mode, compares with ours' local.
 *
 *	connrate KIND ITERS REPS [DITHER]
 *		connect+accept+close loop on CID 1 inside a KIND netns; with
 *		DITHER, a pseudo-random 0 to DITHER loop iterations before
 *		each connection (xorshift32, seeded by the repetition's
 *		number): on one vCPU the bench task and the loopback worker
 *		otherwise settle into one of several scheduling patterns,
 *		which moved the rate by 1.2% between two builds of the same
 *		code; with the dither the same comparison gave 0.994-1.004
 *	scale MODE NLIST ITERS REPS [vhost]
 *		connect latency to CID 1 port P while N (from the comma list)
 *		extra sockets exist.  MODE "local": N local namespaces each
 *		with a listener on P (SPEC K4), measured from init, global and
 *		local.  MODE "ref": N sockets in init_net on ports P + k*251,
 *		all in the listener's bucket (a table keyed on the port alone).
 *		MODE "ports": N sockets bound in the local measuring point's
 *		netns on ports P + k*251 (many ports in one local netns),
 *		measured from init, global, local and local2 (another local
 *		netns, which cannot reach them either).
 *		With "vhost" each N also holds a /dev/vhost-vsock with CID 42
 *		(local) or CID 1000+k (ref) and SET_GUEST_CID is timed.
 *	churn KIND COUNT REPS
 *		netns create+destroy rate, each netns opening a vsock socket;
 *		destruction is included (waits until the netns are freed)
 *	mem KIND COUNT REPS
 *		free memory (MemFree plus the per-CPU free lists of
 *		/proc/zoneinfo), Slab and slab memory charged object by
 *		object (mem_slabobj, see slab_usage()) delta per netns with
 *		COUNT namespaces held open; the caches that moved by 8
 *		bytes per netns or more as "# mem" notes
 *	acceptloop PORT [COUNT REPS NAME]
 *		accept and close connections on port PORT, in the current
 *		netns, until killed (the peer of connto); with COUNT, REPS
 *		and NAME, time REPS runs of COUNT accepts after COUNT
 *		warm-up ones, from the first accept of a run to its last,
 *		and print RESULT NAME in connections per second: the rate
 *		of a peer whose own clock is too coarse (a guest's jiffies)
 *	connto CID PORT ITERS REPS NAME
 *		loop of connect to CID:PORT, in the current netns (a real
 *		guest across vhost-vsock, or its host), wait until the peer
 *		accepted and closed (EOF), close: connections per second as
 *		RESULT NAME.  Waiting for the peer keeps its accept queue
 *		from overflowing (a full queue answers with a reset)
 *
 * With VSOCK_BENCH_PROBES set to a file from scripts/bench-probes, "scale"
 * also counts, over ITERS more connects (and SET_GUEST_CIDs) with kprobes
 * armed, the table entries each lookup examined:
 *	RESULT lookup.<walk>.<figure> <entries> entries/lookup
 * (exact counts from the probes' hit counters: unlike time, no cache can
 * hide them).  The probes are off while latency is measured.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <linux/vhost.h>
#include <linux/vm_sockets.h>

#include "dither.h"

#define PORT		5000
#define BUCKETS		251	/* VSOCK_HASH_SIZE */
#define VHOST_CID	42
#define MAXN		100000

static int init_fd = -1, parent_fd = -1;

static void die(const char *what)
{
	fprintf(stderr, "vsock_ns_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		ret = -errno;
	close(fd);
	return ret;
}

/* Move this process into a new netns of @kind ("init": into init_net). */
static int ns_enter(const char *kind)
{
	if (setns(init_fd, CLONE_NEWNET))
		die("setns init");
	if (!strcmp(kind, "init"))
		return 0;
	if (!strcmp(kind, "global"))
		return unshare(CLONE_NEWNET) ? -errno : 0;
	/* "local2": one more local netns, named apart in the results */
	if (strcmp(kind, "local") && strcmp(kind, "local2") &&
	    strcmp(kind, "nested"))
		return -EINVAL;
	if (parent_fd < 0) {
		int ret = 0;

		if (unshare(CLONE_NEWNET))
			die("unshare parent");
		if (strcmp(kind, "nested"))
			ret = write_str("/proc/sys/net/vsock/child_ns_mode",
					"local\n");
		if (ret) {
			setns(init_fd, CLONE_NEWNET);
			return ret;
		}
		parent_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
		if (parent_fd < 0)
			die("open parent ns");
	} else if (setns(parent_fd, CLONE_NEWNET)) {
		die("setns parent");
	}
	return unshare(CLONE_NEWNET) ? -errno : 0;
}

static int self_ns_fd(void)
{
	int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		die("open ns");
	return fd;
}

static int vsock_socket(void)
{
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		die("socket");
	return s;
}

static int bind_port(int s, unsigned int port)
{
	struct sockaddr_vm a = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
		.svm_port = port,
	};

	return bind(s, (struct sockaddr *)&a, sizeof(a)) ? -errno : 0;
}

static int listener(unsigned int port)
{
	int s = vsock_socket();

	if (bind_port(s, port))
		die("bind listener");
	if (listen(s, 128))
		die("listen");
	return s;
}

/*
 * The port of the next connecting socket: never in @port's bucket of a
 * table keyed on the port alone (VSOCK_HASH_SIZE = 251 buckets), where an
 * ephemeral port lands by chance, one connect in 251, and lengthens the
 * chain that the lookups being counted walk. A counter, so that no port
 * is reused while a closed socket may still hold it.
 */
static unsigned int client_port(unsigned int port)
{
	static unsigned int next = 0x40000000;

	do
		next++;
	while (next % 251 == port % 251);
	return next;
}

/*
 * One connect to CID 1:@port, accepted on @l; returns connect() time in us.
 * The connecting socket is bound first, outside @port's bucket.
 * With @settle, wait a little after the close so that the loopback work it
 * queued (shutdown, reset) is done before the next connect is timed: without
 * it the latency is bimodal (about 130 or 240 us under TCG) depending on
 * whether that work ran before or inside the next connect().
 */
static double one_connect(int l, unsigned int port, int settle)
{
	struct sockaddr_vm a = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_LOCAL,
		.svm_port = port,
	};
	struct sockaddr_vm b = {
		.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
		.svm_port = client_port(port),
	};
	int c = vsock_socket(), s;
	double t0, t1;

	if (bind(c, (struct sockaddr *)&b, sizeof(b)))
		die("bind client");
	t0 = now_us();
	if (connect(c, (struct sockaddr *)&a, sizeof(a)))
		die("connect");
	t1 = now_us();
	s = accept(l, NULL, NULL);
	if (s < 0)
		die("accept");
	close(s);
	close(c);
	if (settle)
		usleep(1000);
	return t1 - t0;
}

static void na(const char *name, int err)
{
	printf("NA %s %s\n", name, strerror(-err));
	fflush(stdout);
}

static void result(const char *name, double v, const char *unit)
{
	printf("RESULT %s %.3f %s\n", name, v, unit);
	fflush(stdout);
}

/* --- entries examined per lookup (kprobe hit counts) ------------------- */

#define TRACEFS		"/sys/kernel/tracing"
#define MAXPROBES	64

struct probe {
	char name[64], loc[128], loop[64];
	int body;
};

static struct probe probes[MAXPROBES];
static int nprobes;

/* Name of probe @p as kprobe_profile shows it: without its group. */
static const char *probe_event(const struct probe *p)
{
	const char *slash = strchr(p->name, '/');

	return slash ? slash + 1 : p->name;
}

/* Drop our probes (a run before this one may have left them). */
static void probes_remove(void)
{
	char def[96];
	int fd, i;

	write_str(TRACEFS "/events/vskb/enable", "0");
	fd = open(TRACEFS "/kprobe_events", O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0)
		return;
	for (i = 0; i < nprobes; i++) {
		snprintf(def, sizeof(def), "-:%.63s\n", probes[i].name);
		if (write(fd, def, strlen(def)) < 0 && errno != ENOENT)
			fprintf(stderr, "vsock_ns_bench: removing %s: %s\n",
				probes[i].name, strerror(errno));
	}
	close(fd);
}

/* Register the probes of $VSOCK_BENCH_PROBES, disarmed. */
static void probes_setup(void)
{
	const char *path = getenv("VSOCK_BENCH_PROBES");
	char line[512], what[16], def[256];
	FILE *f;
	int fd, i;

	if (!path || !*path)
		return;
	f = fopen(path, "r");
	if (!f)
		die(path);
	/* hits are counted without tracing anything */
	if (write_str(TRACEFS "/tracing_on", "0"))
		die(TRACEFS "/tracing_on (mounted? CONFIG_KPROBE_EVENTS?)");
	fd = open(TRACEFS "/kprobe_events", O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0)
		die(TRACEFS "/kprobe_events");
	while (fgets(line, sizeof(line), f)) {
		struct probe *p = &probes[nprobes];

		if (nprobes == MAXPROBES) {
			errno = E2BIG;
			die(path);
		}
		/* GROUP/NAME LOCATION WALK CALLER entry|body */
		if (sscanf(line, "%63s %127s %63s %*s %15s", p->name, p->loc,
			   p->loop, what) != 4 ||
		    (strcmp(what, "body") && strcmp(what, "entry"))) {
			errno = EINVAL;
			die(line);
		}
		p->body = !strcmp(what, "body");
		nprobes++;
	}
	fclose(f);
	probes_remove();	/* left by an earlier run of this boot */
	for (i = 0; i < nprobes; i++) {
		/* the kernel checks each location */
		snprintf(def, sizeof(def), "p:%.63s %.127s\n", probes[i].name,
			 probes[i].loc);
		if (write(fd, def, strlen(def)) != (ssize_t)strlen(def))
			die(def);
	}
	close(fd);
	atexit(probes_remove);
}

/* Read every probe's hit count (kprobe_profile names them without group). */
static void probes_read(unsigned long *hits)
{
	char line[256], name[96];
	unsigned long nhit;
	FILE *f = fopen(TRACEFS "/kprobe_profile", "r");
	int i;

	if (!f)
		die(TRACEFS "/kprobe_profile");
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%95s %lu", name, &nhit) != 2)
			continue;
		for (i = 0; i < nprobes; i++)
			if (!strcmp(probe_event(&probes[i]), name))
				hits[i] = nhit;
	}
	fclose(f);
}

static void probes_arm(int on)
{
	if (write_str(TRACEFS "/events/vskb/enable", on ? "1" : "0"))
		die("arming the kprobes");
}

/*
 * Entries examined per lookup, for each walk, over @iters calls of @op with
 * the probes armed: body hits / entry hits, all callers together (whether a
 * copy is inlined into one caller depends on the compiler).  Reported as
 * lookup.<walk>.<name>.
 */
static void probes_count(const char *name, void (*op)(void *), void *arg,
			 int iters)
{
	unsigned long before[MAXPROBES] = { 0 }, after[MAXPROBES] = { 0 };
	char done[MAXPROBES] = { 0 }, rname[160];
	int i, j;

	if (!nprobes)
		return;
	probes_arm(1);
	probes_read(before);
	for (i = 0; i < iters; i++)
		op(arg);
	usleep(10000);	/* work the last operation queued (loopback) */
	probes_read(after);
	probes_arm(0);
	for (i = 0; i < nprobes; i++) {
		unsigned long entries = 0, lookups = 0;

		if (done[i])
			continue;
		for (j = i; j < nprobes; j++) {
			if (strcmp(probes[j].loop, probes[i].loop))
				continue;
			done[j] = 1;
			if (probes[j].body)
				entries += after[j] - before[j];
			else
				lookups += after[j] - before[j];
		}
		if (!lookups)
			continue;
		snprintf(rname, sizeof(rname), "lookup.%s.%s",
			 probes[i].loop, name);
		result(rname, (double)entries / lookups, "entries/lookup");
	}
}

static int cmd_connrate(const char *kind, int iters, int reps,
			unsigned long max)
{
	char name[64];
	int l, r, i, ret;
	uint32_t x;

	snprintf(name, sizeof(name), "connrate.%s", kind);
	ret = ns_enter(kind);
	if (ret) {
		na(name, ret);
		return 0;
	}
	l = listener(PORT);
	for (i = 0; i < iters / 10 + 1; i++)	/* warm-up */
		one_connect(l, PORT, 0);
	for (r = 0; r < reps; r++) {
		double t0 = now_us();

		x = dither_seed(r + 1);
		for (i = 0; i < iters; i++) {
			dither(&x, max);
			one_connect(l, PORT, 0);
		}
		result(name, iters / ((now_us() - t0) / 1e6), "conn/s");
	}
	close(l);
	return 0;
}

/* Measuring points for "scale": the netns, its listener, its vhost device. */
struct point {
	const char *kind;
	unsigned int port;
	uint64_t cid;
	int ns, l, vhost;
};

static int vhost_open_cid(unsigned long long cid)
{
	int fd = open("/dev/vhost-vsock", O_RDWR | O_CLOEXEC);
	uint64_t c = cid;

	if (fd < 0)
		die("open /dev/vhost-vsock");
	if (ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, &c))
		die("VHOST_VSOCK_SET_GUEST_CID");
	return fd;
}

/* The operations counted by probes_count(). */
static void count_connect(void *arg)
{
	struct point *p = arg;

	one_connect(p->l, p->port, 1);
}

static void count_setcid(void *arg)
{
	struct point *p = arg;

	if (ioctl(p->vhost, VHOST_VSOCK_SET_GUEST_CID, &p->cid))
		die("SET_GUEST_CID (count)");
}

static void measure_point(struct point *p, const char *mode, int n,
			  int iters, int reps, int vhost)
{
	double *v = calloc(iters, sizeof(*v));
	char name[96];
	int r, i;

	if (setns(p->ns, CLONE_NEWNET))
		die("setns point");
	for (i = 0; i < 20; i++)	/* warm-up */
		one_connect(p->l, p->port, 1);
	snprintf(name, sizeof(name), "scale.%s.%s.N=%d", mode, p->kind, n);
	for (r = 0; r < reps; r++) {
		for (i = 0; i < iters; i++)
			v[i] = one_connect(p->l, p->port, 1);
		result(name, median(v, iters), "us");
	}
	probes_count(name, count_connect, p, iters);
	if (vhost) {
		snprintf(name, sizeof(name), "vhost_setcid.%s.%s.N=%d",
			 mode, p->kind, n);
		for (r = 0; r < reps; r++) {
			for (i = 0; i < iters; i++) {
				double t0 = now_us();

				if (ioctl(p->vhost, VHOST_VSOCK_SET_GUEST_CID,
					  &p->cid))
					die("SET_GUEST_CID (measure)");
				v[i] = now_us() - t0;
			}
			result(name, median(v, iters), "us");
		}
		probes_count(name, count_setcid, p, iters);
	}
	free(v);
}

static int cmd_scale(const char *mode, char *nlist, int iters, int reps,
		     int vhost)
{
	static int fds[2 * MAXN];
	static const char * const kinds_local[] = { "init", "global", "local",
						    "local2" };
	static const char * const kinds_ref[] = { "init" };
	const char * const *kinds;
	struct point pts[4];
	int npts, have = 0, nfds = 0, i, ret;
	struct rlimit rl = { 4 * MAXN + 1024, 4 * MAXN + 1024 };
	char *tok;

	if (setrlimit(RLIMIT_NOFILE, &rl))
		die("setrlimit");
	if (!strcmp(mode, "local") || !strcmp(mode, "ports")) {
		kinds = kinds_local;
		npts = strcmp(mode, "ports") ? 3 : 4;
	} else {
		kinds = kinds_ref;
		npts = 1;
	}
	for (i = 0; i < npts; i++) {
		char name[64];

		ret = ns_enter(kinds[i]);
		if (ret) {
			snprintf(name, sizeof(name), "scale.%s", mode);
			na(name, ret);
			return 0;
		}
		pts[i].kind = kinds[i];
		pts[i].ns = self_ns_fd();
		/* init_net and a global netns share one port space (K1) */
		pts[i].port = strcmp(kinds[i], "global") ? PORT : PORT + 1;
		pts[i].l = listener(pts[i].port);
		/*
		 * The measuring device: CID 42 in a local netns (reused by all
		 * others), else a CID nobody else has (distinct CIDs).
		 */
		pts[i].cid = strncmp(kinds[i], "local", 5) ? VHOST_CID + i :
							      VHOST_CID;
		pts[i].vhost = vhost ? vhost_open_cid(pts[i].cid) : -1;
	}
	for (tok = strtok(nlist, ","); tok; tok = strtok(NULL, ",")) {
		int n = atoi(tok);

		if (n > MAXN)
			n = MAXN;
		for (; have < n; have++) {
			int s;

			if (!strcmp(mode, "local")) {
				ret = ns_enter("local");
				if (ret) {
					errno = -ret;
					die("local netns");
				}
				s = listener(PORT);
			} else if (!strcmp(mode, "ports")) {
				if (setns(pts[2].ns, CLONE_NEWNET))
					die("setns ports");
				s = vsock_socket();
				if (bind_port(s, PORT + (have + 1) * BUCKETS))
					die("bind ports");
			} else {
				s = vsock_socket();
				if (bind_port(s, PORT + (have + 1) * BUCKETS))
					die("bind ref");
			}
			fds[nfds++] = s;
			if (vhost)
				fds[nfds++] = vhost_open_cid(strcmp(mode, "local") ?
						1000 + have : VHOST_CID);
		}
		for (i = 0; i < npts; i++)
			measure_point(&pts[i], mode, n, iters, reps, vhost);
	}
	for (i = 0; i < nfds; i++)
		close(fds[i]);
	return 0;
}

/*
 * Wait until every netns we created is freed: with max_net_namespaces at
 * @held + 1 an unshare succeeds only once the others are gone (the ucount is
 * dropped at the end of cleanup_net()).
 */
static void drain(int held)
{
	char old[32] = "", buf[32];
	int fd;

	fd = open("/proc/sys/user/max_net_namespaces", O_RDONLY);
	if (fd < 0 || read(fd, old, sizeof(old) - 1) <= 0)
		die("read max_net_namespaces");
	close(fd);
	snprintf(buf, sizeof(buf), "%d", held + 1);
	if (write_str("/proc/sys/user/max_net_namespaces", buf))
		die("write max_net_namespaces");
	for (;;) {
		if (setns(init_fd, CLONE_NEWNET))
			die("setns");
		if (!unshare(CLONE_NEWNET))
			break;
		if (errno != ENOSPC)
			die("unshare (drain)");
		usleep(1000);
	}
	if (setns(init_fd, CLONE_NEWNET))
		die("setns");
	if (write_str("/proc/sys/user/max_net_namespaces", old))
		die("restore max_net_namespaces");
}

/*
 * Enter a netns of @kind once (for "local" this makes the global parent),
 * go back to init_net and let the kernel free what that left behind.
 * Returns whether a parent netns is held, or -1 after reporting @name as
 * not available on this kernel.
 */
static int prepare_kind(const char *name, const char *kind)
{
	int ret = ns_enter(kind);

	if (ret) {
		na(name, ret);
		return -1;
	}
	setns(init_fd, CLONE_NEWNET);
	drain(parent_fd >= 0);
	return parent_fd >= 0;
}

static int cmd_churn(const char *kind, int count, int reps)
{
	int held, r, i;
	char name[64];

	snprintf(name, sizeof(name), "churn.%s", kind);
	held = prepare_kind(name, kind);
	if (held < 0)
		return 0;
	for (r = 0; r < reps; r++) {
		double t0 = now_us();

		for (i = 0; i < count; i++) {
			if (ns_enter(kind))
				die("unshare (churn)");
			close(vsock_socket());
		}
		setns(init_fd, CLONE_NEWNET);
		drain(held);
		result(name, (count + 1) / ((now_us() - t0) / 1e6), "netns/s");
	}
	return 0;
}

static long meminfo(const char *key)
{
	char line[128];
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		die("/proc/meminfo");
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) &&
		    line[strlen(key)] == ':')
			v = atol(line + strlen(key) + 1);
	fclose(f);
	return v;
}

/* Free memory in KiB, counting the pages that wait on the per-CPU free
 * lists: MemFree leaves those out, and they come and go by hundreds of
 * pages at a time, which over 1,000 namespaces moved MemFree by 8 KiB per
 * netns between two repetitions of the same work.
 */
static long free_kib(void)
{
	long pcp = 0, v, page_kib = sysconf(_SC_PAGESIZE) / 1024;
	char line[256];
	FILE *f = fopen("/proc/zoneinfo", "r");

	if (!f)
		die("/proc/zoneinfo");
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %ld", &v) == 1)
			pcp += v;
	fclose(f);
	return meminfo("MemFree") + pcp * page_kib;
}

/* Slab memory charged object by object: for each cache of /proc/slabinfo,
 * its objects in use times the memory of one of its slots (the bytes of a
 * slab of the cache's preferred order over the objects it holds, so the
 * unused tail of each slab is charged too: an object that grows past a
 * fraction of a slab costs what it makes its cache lose), plus the
 * kmalloc()s too large for any cache, which Slab (SReclaimable plus
 * SUnreclaim) counts but no cache does: Slab minus the pages of every
 * cache's slabs.  It leaves out what is not slab memory (vmalloc, percpu,
 * page tables).  SLUB counts the objects of a CPU slab as in use whether
 * they are or not: cmd_mem() shrinks every cache (slab_shrink()) before
 * each snapshot, which makes the count of objects in use exact: a slab
 * started or freed does not move the figure.  A slab that fell back to a smaller order than the
 * cache's preferred one is charged as if it had not, and shows only when
 * the large kmalloc()s come out negative (the note says so).
 */
#define MAXCACHES	512

struct slab_usage {
	int n;
	long total;			/* bytes */
	long large;			/* bytes of large kmalloc()s */
	char name[MAXCACHES][64];
	long bytes[MAXCACHES];		/* bytes charged to the cache */
};

/* Shrink every slab cache (aliases are links: each cache once), when the
 * kernel has /sys/kernel/slab: CPU slabs flushed, empty slabs freed.
 */
static void slab_shrink(void)
{
	DIR *d = opendir("/sys/kernel/slab");
	struct dirent *e;
	char path[512];

	if (!d)
		return;
	while ((e = readdir(d)))
		if (e->d_type == DT_DIR && e->d_name[0] != '.') {
			snprintf(path, sizeof(path), "/sys/kernel/slab/%s/shrink",
				 e->d_name);
			if (write_str(path, "1"))
				die("shrink a slab cache");
		}
	closedir(d);
}

/* 0, or -errno when the kernel has no /proc/slabinfo (CONFIG_SLUB_DEBUG=n) */
static int slab_usage(struct slab_usage *u)
{
	long active, num, size, perslab, pages, slabs, slab_pages = 0;
	long page = sysconf(_SC_PAGESIZE);
	char line[512], name[64];
	int lines = 0;
	FILE *f;

	f = fopen("/proc/slabinfo", "r");
	if (!f)
		return -errno;
	u->n = 0;
	u->total = 0;
	while (fgets(line, sizeof(line), f)) {
		if (++lines <= 2)
			continue;	/* version and column names */
		if (sscanf(line, "%63s %ld %ld %ld %ld %ld : tunables %*d %*d %*d"
			   " : slabdata %*d %ld", name, &active, &num, &size,
			   &perslab, &pages, &slabs) != 7 || perslab <= 0)
			die("/proc/slabinfo: a line not understood");
		if (u->n == MAXCACHES)
			die("/proc/slabinfo: more than MAXCACHES caches");
		strcpy(u->name[u->n], name);
		u->bytes[u->n] = active * pages * page / perslab;
		u->total += u->bytes[u->n];
		slab_pages += slabs * pages;
		u->n++;
	}
	fclose(f);
	u->large = meminfo("Slab") * 1024 - slab_pages * page;
	u->total += u->large;
	return 0;
}

/* the index of cache @name in @u, -1 when @u has no such cache */
static int slab_usage_find(const struct slab_usage *u, const char *name)
{
	int i;

	for (i = 0; i < u->n; i++)
		if (!strcmp(u->name[i], name))
			return i;
	return -1;
}

/* "# mem KIND: ... CACHE +B ..." for the caches that moved by 8 B/netns or
 * more, in either direction, from snapshot @a to snapshot @b (a cache of
 * one snapshot only counts as 0 bytes in the other)
 */
static void slab_usage_note(const char *kind, const struct slab_usage *a,
			    const struct slab_usage *b, int count)
{
	long d;
	int i, j;

	printf("# mem %s: slab memory charged by cache, B/netns:", kind);
	for (i = 0; i < b->n; i++) {
		j = slab_usage_find(a, b->name[i]);
		d = b->bytes[i] - (j < 0 ? 0 : a->bytes[j]);
		if (d >= 8L * count || d <= -8L * count)
			printf(" %s %+ld", b->name[i], d / count);
	}
	for (i = 0; i < a->n; i++) {	/* caches gone since @a */
		d = -a->bytes[i];
		if (slab_usage_find(b, a->name[i]) < 0 && d <= -8L * count)
			printf(" %s %+ld", a->name[i], d / count);
	}
	printf("; large kmalloc()s %+ld%s\n", (b->large - a->large) / count,
	       b->large < 0 || a->large < 0 ?
	       " (Slab below the caches' slab pages: some slab has a smaller"
	       " order than its cache's preferred one, and the figure charges"
	       " its objects as if it had not)" : "");
	fflush(stdout);
}

static int cmd_mem(const char *kind, int count, int reps)
{
	int *fds = calloc(count, sizeof(*fds));
	int held, r, i;
	char name[64];

	snprintf(name, sizeof(name), "mem.%s", kind);
	held = prepare_kind(name, kind);
	if (held < 0)
		return 0;
	for (r = 0; r < reps; r++) {
		static struct slab_usage u0, u1;
		long free0, slab0, free1, slab1;
		int no_slabinfo;

		/* every figure is read with the caches just shrunk */
		usleep(100000);
		slab_shrink();
		no_slabinfo = slab_usage(&u0);
		free0 = free_kib();
		slab0 = meminfo("Slab");
		for (i = 0; i < count; i++) {
			if (ns_enter(kind))
				die("unshare (mem)");
			fds[i] = vsock_socket();
		}
		setns(init_fd, CLONE_NEWNET);
		usleep(100000);
		slab_shrink();
		if (!no_slabinfo && slab_usage(&u1))
			die("/proc/slabinfo went away");
		free1 = free_kib();
		slab1 = meminfo("Slab");
		result(strcat(strcpy(name, "mem_free."), kind),
		       (free0 - free1) * 1024.0 / count, "B/netns");
		result(strcat(strcpy(name, "mem_slab."), kind),
		       (slab1 - slab0) * 1024.0 / count, "B/netns");
		strcat(strcpy(name, "mem_slabobj."), kind);
		if (!no_slabinfo) {
			result(name, (double)(u1.total - u0.total) / count,
			       "B/netns");
			slab_usage_note(kind, &u0, &u1, count);
		} else {
			na(name, no_slabinfo);	/* no /proc/slabinfo */
		}
		for (i = 0; i < count; i++)
			close(fds[i]);
		drain(held);
	}
	free(fds);
	return 0;
}

static int cmd_acceptloop(unsigned int port, int count, int reps,
			  const char *name)
{
	int l = listener(port), s, r, i;

	for (r = -1; count > 1 && r < reps; r++) {	/* r = -1: warm-up */
		double t0 = 0;

		for (i = 0; i < count; i++) {
			s = accept(l, NULL, NULL);
			if (s < 0)
				die("accept");
			if (!i)
				t0 = now_us();
			close(s);
		}
		if (r >= 0)
			result(name, (count - 1) / ((now_us() - t0) / 1e6),
			       "conn/s");
	}
	if (count > 1)
		return 0;
	while ((s = accept(l, NULL, NULL)) >= 0)
		close(s);
	die("accept");
	return 1;
}

static int cmd_connto(unsigned int cid, unsigned int port, int iters,
		      int reps, const char *name)
{
	struct sockaddr_vm a = {
		.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port,
	};
	int r, i;

	for (r = -1; r < reps; r++) {	/* r = -1: warm-up */
		double t0 = now_us();

		for (i = 0; i < iters; i++) {
			int c = vsock_socket();

			char b;

			if (connect(c, (struct sockaddr *)&a, sizeof(a)))
				die("connect");
			if (recv(c, &b, 1, 0))
				die("recv: no EOF from the peer");
			close(c);
		}
		if (r >= 0)
			result(name, iters / ((now_us() - t0) / 1e6),
			       "conn/s");
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_fd = self_ns_fd();
	if (argc >= 5 && !strcmp(argv[1], "connrate"))
		return cmd_connrate(argv[2], atoi(argv[3]), atoi(argv[4]),
				    argc >= 6 ? strtoul(argv[5], NULL, 0) : 0);
	if (argc >= 6 && !strcmp(argv[1], "scale")) {
		probes_setup();
		return cmd_scale(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]),
				 argc >= 7 && !strcmp(argv[6], "vhost"));
	}
	if (argc >= 5 && !strcmp(argv[1], "churn"))
		return cmd_churn(argv[2], atoi(argv[3]), atoi(argv[4]));
	if (argc >= 5 && !strcmp(argv[1], "mem"))
		return cmd_mem(argv[2], atoi(argv[3]), atoi(argv[4]));
	if (argc >= 6 && !strcmp(argv[1], "acceptloop"))
		return cmd_acceptloop(atoi(argv[2]), atoi(argv[3]),
				      atoi(argv[4]), argv[5]);
	if (argc >= 3 && !strcmp(argv[1], "acceptloop"))
		return cmd_acceptloop(atoi(argv[2]), 0, 0, NULL);
	if (argc >= 7 && !strcmp(argv[1], "connto"))
		return cmd_connto(strtoul(argv[2], NULL, 0), atoi(argv[3]),
				  atoi(argv[4]), atoi(argv[5]), argv[6]);
	fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
	return 2;
}
