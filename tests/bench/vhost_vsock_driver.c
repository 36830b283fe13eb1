// SPDX-License-Identifier: GPL-2.0
/*
 * vhost_vsock_driver - the guest end of /dev/vhost-vsock, as a userspace
 * virtio-vsock driver (make bench)
 *
 * It opens /dev/vhost-vsock in the current netns, gives the device a CID and
 * two split virtqueues in its own memory (the memory table maps it 1:1), and
 * answers the host's packets.  What the host sees follows the guest's
 * virtio transport (net/vmw_vsock/virtio_transport*.c) where it decides the
 * host's work: the same 3,776-byte receive buffers (SKB_WITH_OVERHEAD(4 KiB))
 * given back in batches once fewer than half are posted, with one kick; a
 * credit update when a reader that is always waiting has drained what
 * arrived (once per batch of packets) or little buffer space is left; a
 * reset for a connection shut down both ways.  It differs in what it
 * negotiates (VIRTIO_F_VERSION_1 only: no event index, no indirect
 * descriptors, no SOCK_SEQPACKET), in sending a packet as two descriptors
 * of the ring, and in answering only what the benchmarks need.  The host
 * side runs the usual tools (vsock_perf, vsock_ns_bench connto/acceptloop)
 * and times them itself.
 *
 * Why: a real guest under TCG inside the benchmark VM (the vhost section)
 * costs the VM a few million instructions of emulation per connection, and
 * that cost varies by several percent from one boot of the guest to the next:
 * more than the 1% the host's vsock code could differ by.  Here the VM runs
 * only the host's side of the transport and this small driver, on one vCPU,
 * so under vm-run --icount the figures repeat to a fraction of a percent and
 * the host's kernel is most of what is measured.
 *
 *	vhost_vsock_driver [-d N] [-s SEED] CID serve CLOSE_PORT
 *		accept every connection from the host; one to CLOSE_PORT is
 *		shut down right after it is accepted (the peer of connto),
 *		the others take data (the peer of vsock_perf --sender),
 *		until killed
 *	vhost_vsock_driver [-d N] [-s SEED] CID connect PORT BYTES COUNT
 *		COUNT connections to the host's PORT, one after the other:
 *		send BYTES (K, M, G: binary multiples; 64 KiB packets, within the host's credit), shut
 *		down, wait for the host's reset; with BYTES 0 wait for the
 *		host to shut the connection down (the peer of acceptloop)
 *
 * Prints "ready" once the device runs.
 *
 * -s SEED: the dither's seed (default 1).
 * -d N: before handling each packet, spin for a pseudo-random number of
 * loop iterations from 0 to N (the same sequence for a given SEED).  On one
 * vCPU the order in which the host's task, the vhost worker and this driver
 * run settles into a pattern that icount reproduces exactly, and a few
 * instructions more or less anywhere can switch it to another: a driver
 * that spins 25 iterations more per packet made host-to-guest connections
 * 12% slower from a global netns and 2% slower from a local one, on the
 * same kernel.  The dither mixes the
 * patterns within a run, so that a connection rate follows the work done
 * (smoothly: 0 to 50 iterations more per packet cost 0% to 2%, in order,
 * with N = 256).  make bench uses it for the connection rates.
 *
 * Exits 1 with a message on any error; 30 s without progress is one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/vhost.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_vsock.h>

#include "dither.h"

#define QSZ		256
#define RX_BUF		3776	/* SKB_WITH_OVERHEAD(4096) on x86_64 */
#define HDR		sizeof(struct virtio_vsock_hdr)
#define MAX_PKT		(64 * 1024)	/* VIRTIO_VSOCK_MAX_PKT_BUF_SIZE */
#define BUF_ALLOC	(256 * 1024)	/* the default vsock buffer size */
#define HOST_CID	2
#define NCONN		64
#define STALL_MS	30000
#define MEM_SIZE	(8 << 20)

enum { VQ_RX, VQ_TX };	/* vhost-vsock's order: host to guest first */

struct vq {
	struct vring r;
	uint16_t last_used;	/* used entries seen */
	uint16_t avail_idx;	/* avail entries made */
	uint16_t free_head;	/* tx: free descriptor list */
	unsigned int nfree;
	int kick, call;
};

enum { FREE, CONNECTING, OPEN, CLOSING };

struct conn {
	int state;
	uint32_t lport, pport;
	uint32_t peer_buf_alloc, peer_fwd_cnt;
	uint32_t tx_cnt;	/* payload bytes sent */
	uint32_t fwd_cnt;	/* payload bytes received (and consumed) */
	uint32_t fwd_sent;	/* fwd_cnt the host was last told */
	bool consumed;		/* data arrived in this receive batch */
	bool opened;		/* the host accepted the connection */
	bool refused;		/* the host reset it before */
};

static uint64_t cid;
static int dev;
static struct vq vqs[2];
static uint8_t *rx_bufs;		/* QSZ x RX_BUF */
static struct virtio_vsock_hdr *tx_hdrs;	/* one per tx descriptor */
static uint8_t *payload;		/* MAX_PKT bytes every data packet sends */
static struct conn conns[NCONN];
static uint32_t close_port = ~0u;
static bool serving;
static bool trace;
static unsigned long dither_max;
static uint32_t dither_x;
static unsigned int rx_posted;		/* receive buffers the device holds */
static uint16_t rx_done[QSZ];		/* used ones, not yet given back */
static unsigned int rx_ndone;

static void die(const char *what)
{
	fprintf(stderr, "vhost_vsock_driver: %s: %s\n", what,
		errno ? strerror(errno) : "failed");
	exit(1);
}

static void dief(const char *what)
{
	fprintf(stderr, "vhost_vsock_driver: %s\n", what);
	exit(1);
}

static uint8_t *mem_alloc(uint8_t **next, uint8_t *end, size_t size,
			  size_t align)
{
	uint8_t *p = (uint8_t *)(((uintptr_t)*next + align - 1) &
				 ~(uintptr_t)(align - 1));

	if (p + size > end)
		dief("memory region too small");
	*next = p + size;
	return p;
}

static void kick(struct vq *q)
{
	uint64_t one = 1;

	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!(q->r.used->flags & VRING_USED_F_NO_NOTIFY) &&
	    write(q->kick, &one, sizeof(one)) != sizeof(one))
		die("kick");
}

static void publish(struct vq *q, uint16_t head)
{
	q->r.avail->ring[q->avail_idx % QSZ] = head;
	q->avail_idx++;
	__atomic_store_n(&q->r.avail->idx, q->avail_idx, __ATOMIC_RELEASE);
}

static void setup(void)
{
	struct vhost_memory *mt;
	uint8_t *mem, *next, *end;
	uint64_t features;
	int i, running = 1;

	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	next = mem;
	end = mem + MEM_SIZE;

	dev = open("/dev/vhost-vsock", O_RDWR);
	if (dev < 0)
		die("/dev/vhost-vsock");
	if (ioctl(dev, VHOST_SET_OWNER))
		die("VHOST_SET_OWNER");
	if (ioctl(dev, VHOST_GET_FEATURES, &features))
		die("VHOST_GET_FEATURES");
	if (!(features & (1ULL << VIRTIO_F_VERSION_1)))
		dief("the device does not offer VIRTIO_F_VERSION_1");
	features = 1ULL << VIRTIO_F_VERSION_1;
	if (ioctl(dev, VHOST_SET_FEATURES, &features))
		die("VHOST_SET_FEATURES");

	/* guest physical addresses are this process's addresses */
	mt = calloc(1, sizeof(*mt) + sizeof(mt->regions[0]));
	if (!mt)
		die("calloc");
	mt->nregions = 1;
	mt->regions[0].guest_phys_addr = (uintptr_t)mem;
	mt->regions[0].memory_size = MEM_SIZE;
	mt->regions[0].userspace_addr = (uintptr_t)mem;
	if (ioctl(dev, VHOST_SET_MEM_TABLE, mt))
		die("VHOST_SET_MEM_TABLE");
	free(mt);

	for (i = 0; i < 2; i++) {
		struct vq *q = &vqs[i];
		struct vhost_vring_state st = { .index = i, .num = QSZ };
		struct vhost_vring_addr a = { .index = i };
		struct vhost_vring_file f = { .index = i };
		uint8_t *ring = mem_alloc(&next, end, vring_size(QSZ, 4096),
					  4096);

		vring_init(&q->r, QSZ, ring, 4096);
		q->kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		q->call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (q->kick < 0 || q->call < 0)
			die("eventfd");
		if (ioctl(dev, VHOST_SET_VRING_NUM, &st))
			die("VHOST_SET_VRING_NUM");
		st.num = 0;
		if (ioctl(dev, VHOST_SET_VRING_BASE, &st))
			die("VHOST_SET_VRING_BASE");
		a.desc_user_addr = (uintptr_t)q->r.desc;
		a.avail_user_addr = (uintptr_t)q->r.avail;
		a.used_user_addr = (uintptr_t)q->r.used;
		if (ioctl(dev, VHOST_SET_VRING_ADDR, &a))
			die("VHOST_SET_VRING_ADDR");
		f.fd = q->kick;
		if (ioctl(dev, VHOST_SET_VRING_KICK, &f))
			die("VHOST_SET_VRING_KICK");
		f.fd = q->call;
		if (ioctl(dev, VHOST_SET_VRING_CALL, &f))
			die("VHOST_SET_VRING_CALL");
	}

	/* receive: every descriptor one device-writable buffer, all posted */
	rx_bufs = mem_alloc(&next, end, (size_t)QSZ * RX_BUF, 64);
	for (i = 0; i < QSZ; i++) {
		vqs[VQ_RX].r.desc[i].addr = (uintptr_t)(rx_bufs + i * RX_BUF);
		vqs[VQ_RX].r.desc[i].len = RX_BUF;
		vqs[VQ_RX].r.desc[i].flags = VRING_DESC_F_WRITE;
		publish(&vqs[VQ_RX], i);
	}
	rx_posted = QSZ;
	/* transmit: a free list; a packet is its header, then the payload */
	tx_hdrs = (void *)mem_alloc(&next, end, QSZ * HDR, 64);
	payload = mem_alloc(&next, end, MAX_PKT, 64);
	memset(payload, 0xa5, MAX_PKT);
	for (i = 0; i < QSZ; i++)
		vqs[VQ_TX].r.desc[i].next = i + 1;
	vqs[VQ_TX].free_head = 0;
	vqs[VQ_TX].nfree = QSZ;

	if (ioctl(dev, VHOST_VSOCK_SET_GUEST_CID, &cid))
		die("VHOST_VSOCK_SET_GUEST_CID");
	if (ioctl(dev, VHOST_VSOCK_SET_RUNNING, &running))
		die("VHOST_VSOCK_SET_RUNNING");
	kick(&vqs[VQ_RX]);
	printf("ready\n");
}

/* Take back the transmit descriptors the device has used. */
static void tx_reclaim(void)
{
	struct vq *q = &vqs[VQ_TX];

	while (q->last_used != __atomic_load_n(&q->r.used->idx,
					       __ATOMIC_ACQUIRE)) {
		uint16_t id = q->r.used->ring[q->last_used % QSZ].id;

		for (;;) {
			uint16_t flags, nx;

			/* a device that used what it did not get */
			if (id >= QSZ || q->nfree >= QSZ)
				dief("bad used entry on the transmit queue");
			flags = q->r.desc[id].flags;
			nx = q->r.desc[id].next;

			q->r.desc[id].next = q->free_head;
			q->free_head = id;
			q->nfree++;
			if (!(flags & VRING_DESC_F_NEXT))
				break;
			id = nx;
		}
		q->last_used++;
	}
}

/* Wait for the device to use a buffer: @ms at most (-1: no limit). */
static void wait_event(int ms)
{
	struct pollfd p[2] = {
		{ .fd = vqs[VQ_RX].call, .events = POLLIN },
		{ .fd = vqs[VQ_TX].call, .events = POLLIN },
	};
	uint64_t v;
	int n, i;

	n = poll(p, 2, ms);
	if (n < 0 && errno != EINTR)
		die("poll");
	if (!n)
		dief("no packet from the host for 30 s");
	for (i = 0; i < 2; i++)
		if (read(p[i].fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			die("read eventfd");
}

static void handle_rx(void);

/* Queue one packet of @c to the host, with @len bytes of payload. */
static void send_pkt(struct conn *c, uint16_t op, uint32_t flags,
		     uint32_t len)
{
	struct vq *q = &vqs[VQ_TX];
	uint32_t lport = c->lport, pport = c->pport;
	struct virtio_vsock_hdr *h;
	uint16_t head, d;

	while (q->nfree < 2) {
		tx_reclaim();
		if (q->nfree >= 2)
			break;
		wait_event(STALL_MS);
		handle_rx();
	}
	/* the packets handled meanwhile may have closed the connection, or
	 * given its slot to another: then only a reset still goes out
	 */
	if (op != VIRTIO_VSOCK_OP_RST &&
	    (c->state == FREE || c->lport != lport || c->pport != pport))
		return;
	head = q->free_head;
	h = &tx_hdrs[head];
	memset(h, 0, sizeof(*h));
	h->src_cid = cid;
	h->dst_cid = HOST_CID;
	h->src_port = c->lport;
	h->dst_port = c->pport;
	h->len = len;
	h->type = VIRTIO_VSOCK_TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = BUF_ALLOC;
	h->fwd_cnt = c->fwd_cnt;
	c->fwd_sent = c->fwd_cnt;

	q->r.desc[head].addr = (uintptr_t)h;
	q->r.desc[head].len = HDR;
	q->free_head = q->r.desc[head].next;
	q->nfree--;
	if (len) {
		d = q->free_head;
		q->r.desc[head].flags = VRING_DESC_F_NEXT;
		q->r.desc[head].next = d;
		q->r.desc[d].addr = (uintptr_t)payload;
		q->r.desc[d].len = len;
		q->r.desc[d].flags = 0;
		q->free_head = q->r.desc[d].next;
		q->nfree--;
		c->tx_cnt += len;
	} else {
		q->r.desc[head].flags = 0;
	}
	publish(q, head);
	kick(q);
}

static void send_rst(uint32_t lport, uint32_t pport)
{
	struct conn c = { .state = CLOSING, .lport = lport, .pport = pport };

	send_pkt(&c, VIRTIO_VSOCK_OP_RST, 0, 0);
}

static struct conn *find(uint32_t lport, uint32_t pport)
{
	int i;

	for (i = 0; i < NCONN; i++)
		if (conns[i].state != FREE && conns[i].lport == lport &&
		    conns[i].pport == pport)
			return &conns[i];
	return NULL;
}

static struct conn *conn_new(uint32_t lport, uint32_t pport, int state)
{
	int i;

	for (i = 0; i < NCONN; i++) {
		if (conns[i].state == FREE) {
			memset(&conns[i], 0, sizeof(conns[i]));
			conns[i].state = state;
			conns[i].lport = lport;
			conns[i].pport = pport;
			return &conns[i];
		}
	}
	return NULL;
}

static void handle_pkt(const struct virtio_vsock_hdr *h)
{
	struct conn *c;

	dither(&dither_x, dither_max);

	if (trace)
		fprintf(stderr, "rx op %u %u -> %u len %u flags %u\n",
			h->op, h->src_port, h->dst_port, h->len, h->flags);
	if (h->type != VIRTIO_VSOCK_TYPE_STREAM || h->dst_cid != cid ||
	    h->src_cid != HOST_CID)
		return;
	c = find(h->dst_port, h->src_port);
	if (!c) {
		if (h->op == VIRTIO_VSOCK_OP_REQUEST && serving) {
			c = conn_new(h->dst_port, h->src_port, OPEN);
			if (!c) {
				send_rst(h->dst_port, h->src_port);
				return;
			}
			c->peer_buf_alloc = h->buf_alloc;
			c->peer_fwd_cnt = h->fwd_cnt;
			send_pkt(c, VIRTIO_VSOCK_OP_RESPONSE, 0, 0);
			/* (sending may have handled packets: check again) */
			if (h->dst_port == close_port && c->state == OPEN &&
			    c->lport == h->dst_port && c->pport == h->src_port) {
				c->state = CLOSING;
				send_pkt(c, VIRTIO_VSOCK_OP_SHUTDOWN,
					 VIRTIO_VSOCK_SHUTDOWN_RCV |
					 VIRTIO_VSOCK_SHUTDOWN_SEND, 0);
			}
		} else if (h->op != VIRTIO_VSOCK_OP_RST) {
			send_rst(h->dst_port, h->src_port);
		}
		return;
	}
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case VIRTIO_VSOCK_OP_RESPONSE:
		if (c->state == CONNECTING) {
			c->state = OPEN;
			c->opened = true;
		}
		break;
	case VIRTIO_VSOCK_OP_RW:
		/* consumed at once, as by a reader that is always waiting;
		 * the credit update when space runs low, as the guest's,
		 * or at the end of the batch (handle_rx())
		 */
		c->fwd_cnt += h->len;
		c->consumed = true;
		if (BUF_ALLOC - (c->fwd_cnt - c->fwd_sent) < MAX_PKT)
			send_pkt(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0);
		break;
	case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
		send_pkt(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0);
		break;
	case VIRTIO_VSOCK_OP_SHUTDOWN:
		/* both directions shut, nothing left to read: reset */
		c->state = FREE;
		send_rst(c->lport, c->pport);
		break;
	case VIRTIO_VSOCK_OP_RST:
		if (c->state == CONNECTING)
			c->refused = true;
		c->state = FREE;
		break;
	default:
		break;
	}
}

/* Handle every packet the device has written; give the buffers back, with
 * one kick, once fewer than half are posted (as virtio_transport_rx_work);
 * then send the credit updates a reader draining the batch would.
 */
static void handle_rx(void)
{
	struct vq *q = &vqs[VQ_RX];
	unsigned int i;

	while (q->last_used != __atomic_load_n(&q->r.used->idx,
					       __ATOMIC_ACQUIRE)) {
		struct vring_used_elem *e = &q->r.used->ring[q->last_used % QSZ];
		uint16_t id = e->id;

		if (id >= QSZ || e->len < HDR || !rx_posted)
			dief("bad used entry on the receive queue");
		q->last_used++;
		rx_posted--;
		handle_pkt((struct virtio_vsock_hdr *)(rx_bufs + id * RX_BUF));
		rx_done[rx_ndone++] = id;
	}
	if (rx_ndone && rx_posted < QSZ / 2) {
		for (i = 0; i < rx_ndone; i++)
			publish(q, rx_done[i]);
		rx_posted += rx_ndone;
		rx_ndone = 0;
		kick(q);
	}
	for (i = 0; i < NCONN; i++) {
		struct conn *c = &conns[i];

		if (c->state == FREE || !c->consumed)
			continue;
		c->consumed = false;
		if (c->fwd_cnt != c->fwd_sent)
			send_pkt(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0);
	}
}

static void step(void)
{
	wait_event(STALL_MS);
	handle_rx();
	tx_reclaim();
}

static int cmd_serve(void)
{
	serving = true;
	for (;;) {
		handle_rx();
		tx_reclaim();
		wait_event(-1);
	}
	return 0;
}

static int cmd_connect(uint32_t port, uint64_t bytes, unsigned long count)
{
	unsigned long i;
	int tries;

	for (i = 0; i < count; i++) {
		uint32_t lport = 49152 + i % 16384;
		uint64_t left = bytes;
		struct conn *c;

		for (tries = 0;; tries++) {
			c = conn_new(lport, port, CONNECTING);
			if (!c)
				dief("no free connection slot");
			send_pkt(c, VIRTIO_VSOCK_OP_REQUEST, 0, 0);
			while (c->state == CONNECTING)
				step();
			/* the host may have shut it down already */
			if (c->opened)
				break;
			/* reset: nobody listens yet; try again shortly */
			if (tries == 100)
				dief("connection refused 100 times");
			usleep(100 * 1000);
		}
		while (left && c->state == OPEN) {
			uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
			uint32_t n = left < MAX_PKT ? left : MAX_PKT;
			uint32_t credit;

			/* as much as the credit allows, as the virtio
			 * transport sends a socket's writes
			 */
			if (in_flight >= c->peer_buf_alloc) {
				step();
				continue;
			}
			credit = c->peer_buf_alloc - in_flight;
			if (n > credit)
				n = credit;
			send_pkt(c, VIRTIO_VSOCK_OP_RW, 0, n);
			left -= n;
			handle_rx();
			tx_reclaim();
		}
		if (left)
			dief("the host closed the connection while sending");
		if (bytes && c->state == OPEN) {
			c->state = CLOSING;
			send_pkt(c, VIRTIO_VSOCK_OP_SHUTDOWN,
				 VIRTIO_VSOCK_SHUTDOWN_RCV |
				 VIRTIO_VSOCK_SHUTDOWN_SEND, 0);
		}
		while (c->state != FREE)
			step();
	}
	/* the last reset reaches the host before the device goes */
	tx_reclaim();
	while (vqs[VQ_TX].nfree != QSZ)
		step();
	return 0;
}

/* A number with an optional K, M or G (binary) suffix, as vsock_perf's. */
static uint64_t parse_size(const char *arg)
{
	unsigned int shift = 0;
	char *end;
	uint64_t n;

	errno = 0;
	n = strtoull(arg, &end, 0);
	if (errno || end == arg)
		dief("not a number");
	switch (*end) {
	case 'K':
		shift = 10;
		break;
	case 'M':
		shift = 20;
		break;
	case 'G':
		shift = 30;
		break;
	}
	if (shift) {
		if (n > UINT64_MAX >> shift)
			dief("size too large");
		n <<= shift;
		end++;
	}
	if (*end)
		dief("not a size (a number, K, M or G)");
	return n;
}

int main(int argc, char **argv)
{
	int opt;

	setvbuf(stdout, NULL, _IOLBF, 0);
	trace = getenv("VHOST_VSOCK_DRIVER_TRACE");
	dither_x = dither_seed(1);
	while ((opt = getopt(argc, argv, "d:s:")) != -1) {
		if (opt == 'd')
			dither_max = parse_size(optarg);
		else if (opt == 's' && parse_size(optarg) <= UINT32_MAX)
			dither_x = dither_seed(parse_size(optarg));
		else
			goto usage;
	}
	argc -= optind - 1;
	argv += optind - 1;
	if (argc < 3)
		goto usage;
	cid = parse_size(argv[1]);
	if (argc == 4 && !strcmp(argv[2], "serve")) {
		close_port = parse_size(argv[3]);
		setup();
		return cmd_serve();
	}
	if (argc == 6 && !strcmp(argv[2], "connect")) {
		uint64_t port = parse_size(argv[3]), bytes = parse_size(argv[4]);
		uint64_t count = parse_size(argv[5]);

		setup();
		return cmd_connect(port, bytes, count);
	}
usage:
	fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
	return 2;
}
