// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bulkhead's datapath: one classifier for packets leaving a pod (attached
 * to tc ingress of the pod's host-side veth; the pod's egress policy) and
 * one for packets entering it (tc egress of the same veth; its ingress
 * policy).
 *
 * Per packet: parse (headers past the linear area are pulled in first;
 * what cannot be parsed is dropped), check that a packet leaving a pod
 * carries one of the pod's own addresses (every identity decision
 * downstream trusts the source address), conntrack (replies and related
 * ICMP of a connection pass while its entry still stands for the
 * endpoint's current policy), else look the peer's identity up in the
 * ipcache and the policy up in at most six LPM lookups — address,
 * identity, any peer; at each level protocol+port, then protocol-wide —
 * whose first hit is the verdict (the agent loads entries precomputed so
 * that this holds). No loop depends on the number of rules.
 *
 * A conntrack entry records the policy slot (and whether only audit mode
 * let the flow in) it was decided under. After a policy change, or when
 * audit mode ends, the next packet of an established connection, from
 * either end, asks the current policy again: what a change denies stops
 * at once instead of living on in conntrack.
 *
 * A redirect (an L7 rule of the client's egress, or of a local server's
 * ingress, covers the flow) hands the connection, on the client's side
 * where a socket can be assigned, to the L7 proxy's transparent socket in
 * the node's namespace (bpf_sk_assign plus a mark the node routes
 * locally): the proxy sees the original destination as its socket's own
 * address. With no proxy socket the packet is dropped (PROXY_UNAVAILABLE),
 * never forwarded. The proxy's connection onward keeps the client's
 * address (so the server's policy judges the client) and carries a mark
 * that stands for "requests checked" against the server's L7 rules; the
 * server's replies on it are handed back to the proxy's socket.
 *
 * Policy changes are atomic per endpoint: the agent writes a complete new
 * policy under a fresh slot, then replaces the endpoint's value (which
 * names the slot) in one map update.
 *
 * Events go to the agent through a ring buffer, aggregated per connection
 * so that a flood cannot drown it: a policy verdict for a flow's first
 * packet, a trace event when a tracked connection changes state (its first
 * reply; the first FIN or RST each way, with its packet count), and drops,
 * of which repeats of the same tuple and reason within a second are only
 * counted and the count rides on the next report. The per-CPU counters see
 * every packet regardless.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "bulkhead.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define NS_PER_SEC 1000000000ULL
#define CT_TCP_TIMEOUT (21600 * NS_PER_SEC)
#define CT_TCP_CLOSING_TIMEOUT (10 * NS_PER_SEC)
#define CT_OTHER_TIMEOUT (60 * NS_PER_SEC)
#define CT_REFRESH (1 * NS_PER_SEC)

#define IPPROTO_SCTP_ 132

/* ICMP types (linux/icmp.h drags in libc headers that do not build for bpf). */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
/* IPv6 extension headers walked (and their bytes) before the L4 header;
 * a packet with more is dropped as invalid (fail closed). */
#define MAX_IPV6_EXT 8
#define MAX_IPV6_EXT_BYTES 512
#define EEXIST 17
#define COUNTER_SLOTS (BH_REASON_MAX * 2 + 1)
#define COUNTER_LOST_EVENTS (BH_REASON_MAX * 2)

/*
 * Not preallocated: a preallocated hash map recycles a replaced element at
 * once, so a program still holding it could read another endpoint's value
 * in the middle of a policy swap. Without preallocation the old element is
 * freed after an RCU grace period, and a reader sees the old value whole.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct bh_endpoint);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_endpoints SEC(".maps");

/*
 * Local endpoints by address (the agent writes them with the endpoint):
 * the source side of a connection asks the destination's ingress policy
 * whether an L7 rule covers it, since only there can the connection be
 * handed to the proxy.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536 * BH_EP_MAX_ADDRS);
	__type(key, struct bh_addr);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_ep_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 524288);
	__type(key, struct bh_ipcache_key);
	__type(value, struct bh_ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_ipcache SEC(".maps");

struct bh_policy_slot {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BH_POLICY_SLOT_MAX_ENTRIES);
	/* Sizes, not types: clang emits the structs only as forward
	 * declarations here, which the loader cannot size. */
	__uint(key_size, sizeof(struct bh_policy_key));
	__uint(value_size, sizeof(struct bh_policy_value));
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/* slot → that slot's immutable policy trie (see bulkhead.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct bh_policy_slot);
} bh_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct bh_ct_key);
	__type(value, struct bh_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct bh_frag_key);
	__type(value, struct bh_frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bh_drop_key);
	__type(value, struct bh_drop_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_drops SEC(".maps");

/* The next policy slot number the agent hands out, kept with the pins so
 * that no number is used twice, across agents too: conntrack entries
 * remember the slot that admitted them, and a reused number would make a
 * stale entry look current. Not read by the programs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_slot_seq SEC(".maps");

/* 16 MiB: about 190,000 events, two seconds of a sustained 100,000/s. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct bh_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bh_counters SEC(".maps");

/* A parsed packet: the tuple conntrack and policy need. */
struct pkt {
	struct bh_addr saddr;
	struct bh_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 related;     /* an ICMP error: `inner` is the packet it is about */
	__u8 policy_type; /* ICMP: the type the policy sees */
	__u8 icmp_code;
	__u8 arp;         /* an ARP packet: saddr is its sender's address */
	__u8 v6;          /* an IPv6 packet */
	__u8 pad;
	__u16 policy_port;
	struct bh_ct_key inner;
};

/* Internal to the parser: a header ran past the linear part of the packet
 * (it may only be in the paged part; see parse). Never reported. */
#define PARSE_SHORT 255

/* Bytes the parser may need in the linear area: Ethernet, IPv6 with the
 * extension headers it walks, the L4 header, and an ICMP error's inner
 * IPv6 and L4 headers. */
#define PARSE_PULL_MAX (14 + 40 + MAX_IPV6_EXT_BYTES + 60 + 8 + 40 + 8)

static __always_inline void count(__u32 reason, __u32 dir, __u32 len)
{
	__u32 idx = reason * 2 + dir;
	struct bh_counter *c = bpf_map_lookup_elem(&bh_counters, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void map_v4(struct bh_addr *a, __be32 v4)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->b[10] = 0xff;
	a->b[11] = 0xff;
	__builtin_memcpy(&a->b[12], &v4, 4);
}

static __always_inline int addr_eq(const struct bh_addr *a, const struct bh_addr *b)
{
	const __u32 *x = (const __u32 *)a->b, *y = (const __u32 *)b->b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* ::ffff:0:0/96, how the maps hold IPv4 addresses. */
static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline int is_icmp_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH || type == ICMP_TIME_EXCEEDED ||
		       type == ICMP_PARAMETERPROB;
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG || type == ICMPV6_TIME_EXCEED ||
	       type == ICMPV6_PARAMPROB;
}

static __always_inline int is_echo(__u8 proto, __u8 type, int *reply)
{
	if (proto == IPPROTO_ICMP) {
		*reply = type == ICMP_ECHOREPLY;
		return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
	}
	*reply = type == ICMPV6_ECHO_REPLY;
	return type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY;
}

/* Neighbour discovery (133-136) and multicast listener discovery (130-132,
 * 143): the link working, not traffic between workloads. */
static __always_inline int is_link_control(const struct pkt *p)
{
	return p->proto == IPPROTO_ICMPV6 && ((p->policy_type >= 133 && p->policy_type <= 136) ||
					      (p->policy_type >= 130 && p->policy_type <= 132) || p->policy_type == 143);
}

/*
 * Ports of an L4 header at `off`. Returns 0, PARSE_SHORT, or a drop reason.
 * ICMP echo uses the identifier as a port (request: source, reply:
 * destination) so that a reply matches its request.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *t = data + off;

		if ((void *)(t + 1) > end)
			return PARSE_SHORT;
		if (t->doff < 5)
			return BH_REASON_INVALID_PACKET;
		p->sport = t->source;
		p->dport = t->dest;
		p->tcp_flags = ((__u8 *)t)[13];
		p->policy_port = bpf_ntohs(t->dest);
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP_: {
		/* SCTP's common header starts with the same two ports. */
		struct udphdr *u = data + off;

		if ((void *)(u + 1) > end)
			return PARSE_SHORT;
		p->sport = u->source;
		p->dport = u->dest;
		p->policy_port = bpf_ntohs(u->dest);
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 *h = data + off;
		int reply = 0;

		if ((void *)(h + 8) > end)
			return PARSE_SHORT;
		p->policy_type = h[0];
		p->icmp_code = h[1];
		p->policy_port = h[0];
		if (is_echo(p->proto, h[0], &reply)) {
			__be16 id = *(__be16 *)(h + 4);

			if (reply)
				p->dport = id;
			else
				p->sport = id;
		}
		return 0;
	}
	default:
		return 0;
	}
}

/* The tuple of the packet inside an ICMP error, at `off`: 0 (p->related
 * set), PARSE_SHORT, or -1 when it is not one conntrack could know. */
static __always_inline int parse_inner(struct __sk_buff *skb, __u32 off, struct pkt *p, int v6)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *l4;

	__builtin_memset(&p->inner, 0, sizeof(p->inner));
	if (!v6) {
		struct iphdr *ip = data + off;

		if ((void *)(ip + 1) > end)
			return PARSE_SHORT;
		if (ip->ihl != 5)
			return -1;
		map_v4(&p->inner.saddr, ip->saddr);
		map_v4(&p->inner.daddr, ip->daddr);
		p->inner.proto = ip->protocol;
		l4 = (__u8 *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > end)
			return PARSE_SHORT;
		__builtin_memcpy(&p->inner.saddr, &ip6->saddr, 16);
		__builtin_memcpy(&p->inner.daddr, &ip6->daddr, 16);
		/* Mapped addresses would match an IPv4 connection: no. */
		if (is_v4_mapped(p->inner.saddr.b) || is_v4_mapped(p->inner.daddr.b))
			return -1;
		p->inner.proto = ip6->nexthdr;
		l4 = (__u8 *)(ip6 + 1);
	}
	if ((void *)(l4 + 8) > end)
		return PARSE_SHORT;
	if (p->inner.proto == IPPROTO_ICMP || p->inner.proto == IPPROTO_ICMPV6) {
		int reply = 0;

		if (!is_echo(p->inner.proto, l4[0], &reply))
			return -1;
		if (reply)
			p->inner.dport = *(__be16 *)(l4 + 4);
		else
			p->inner.sport = *(__be16 *)(l4 + 4);
	} else {
		p->inner.sport = *(__be16 *)l4;
		p->inner.dport = *(__be16 *)(l4 + 2);
	}
	p->related = 1;
	return 0;
}

/*
 * Fragments: the first records what the later ones cannot show (their L4
 * protocol, ports and policy port), keyed by the addresses, the fragment id
 * and `key_proto` (the protocol named in the IP header, or in IPv6 the
 * fragment header's next header, which every fragment carries alike).
 */
static __always_inline void frag_store(const struct pkt *p, __u32 id, __u8 key_proto)
{
	struct bh_frag_key k = {};
	struct bh_frag_value v = { .sport = p->sport, .dport = p->dport, .policy_port = p->policy_port,
				   .proto = p->proto };

	k.saddr = p->saddr;
	k.daddr = p->daddr;
	k.id = id;
	k.proto = key_proto;
	bpf_map_update_elem(&bh_frags, &k, &v, BPF_ANY);
}

/* A later fragment takes its first fragment's protocol and ports; an
 * unknown one is dropped. */
static __always_inline int frag_lookup(struct pkt *p, __u32 id, __u8 key_proto)
{
	struct bh_frag_key k = {};
	struct bh_frag_value *v;

	k.saddr = p->saddr;
	k.daddr = p->daddr;
	k.id = id;
	k.proto = key_proto;
	v = bpf_map_lookup_elem(&bh_frags, &k);
	if (!v)
		return BH_REASON_FRAG_UNKNOWN;
	p->proto = v->proto;
	p->sport = v->sport;
	p->dport = v->dport;
	p->policy_port = v->policy_port;
	return 0;
}

static __always_inline int parse_arp(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *a = data + sizeof(struct ethhdr);

	/* Ethernet/IPv4 ARP: the sender's protocol address at offset 14. */
	if ((void *)(a + 28) > end)
		return PARSE_SHORT;
	p->arp = 1;
	if (a[4] == 6 && a[5] == 4)
		map_v4(&p->saddr, *(__be32 *)(a + 14));
	return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u32 hlen, off;
	__u16 frag;
	int r;

	if ((void *)(ip + 1) > end)
		return PARSE_SHORT;
	hlen = ip->ihl * 4;
	if (ip->version != 4 || hlen < sizeof(*ip) || bpf_ntohs(ip->tot_len) < hlen ||
	    bpf_ntohs(ip->tot_len) > skb->len - sizeof(struct ethhdr))
		return BH_REASON_INVALID_PACKET;
	map_v4(&p->saddr, ip->saddr);
	map_v4(&p->daddr, ip->daddr);
	p->proto = ip->protocol;
	frag = bpf_ntohs(ip->frag_off);
	off = sizeof(struct ethhdr) + hlen;
	if (frag & 0x1fff)
		return frag_lookup(p, ip->id, ip->protocol);
	r = parse_l4(skb, off, p);
	if (r)
		return r;
	if (frag & 0x2000)
		frag_store(p, ip->id, ip->protocol);
	if (p->proto == IPPROTO_ICMP && is_icmp_error(p->proto, p->policy_type) &&
	    parse_inner(skb, off + 8, p, 0) == PARSE_SHORT)
		return PARSE_SHORT;
	return 0;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u32 off = sizeof(struct ethhdr) + sizeof(*ip6), frag_id = 0;
	__u8 next, frag_nh = 0, fragmented = 0;
	int r, i;

	if ((void *)(ip6 + 1) > end)
		return PARSE_SHORT;
	if (ip6->version != 6 || bpf_ntohs(ip6->payload_len) + sizeof(*ip6) > skb->len - sizeof(struct ethhdr))
		return BH_REASON_INVALID_PACKET;
	__builtin_memcpy(&p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(&p->daddr, &ip6->daddr, 16);
	p->v6 = 1;
	next = ip6->nexthdr;
	for (i = 0; i < MAX_IPV6_EXT; i++) {
		__u8 *h;

		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
		    next != IPPROTO_FRAGMENT)
			break;
		if (off > 14 + 40 + MAX_IPV6_EXT_BYTES)
			return BH_REASON_INVALID_PACKET;
		h = data + off;
		if ((void *)(h + 8) > end)
			return PARSE_SHORT;
		if (next == IPPROTO_FRAGMENT) {
			__u16 fo = bpf_ntohs(*(__be16 *)(h + 2));
			__u32 id = *(__u32 *)(h + 4);

			next = h[0];
			off += 8;
			/* A later fragment: what follows is payload. */
			if (fo & 0xfff8)
				return frag_lookup(p, id, next);
			/* The first of several: the walk goes on through the
			 * headers after this one, to the real L4 header. */
			if (fo & 1) {
				fragmented = 1;
				frag_id = id;
				frag_nh = next;
			}
			continue;
		}
		next = h[0];
		off += (h[1] + 1) * 8;
	}
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	    next == IPPROTO_FRAGMENT || off > 14 + 40 + MAX_IPV6_EXT_BYTES)
		return BH_REASON_INVALID_PACKET; /* more extension headers than we walk: fail closed */
	p->proto = next;
	r = parse_l4(skb, off, p);
	if (r)
		return r;
	if (fragmented)
		frag_store(p, frag_id, frag_nh);
	if (p->proto == IPPROTO_ICMPV6 && is_icmp_error(p->proto, p->policy_type) &&
	    parse_inner(skb, off + 8, p, 1) == PARSE_SHORT)
		return PARSE_SHORT;
	return 0;
}

/* One parse of the linear area: 0, PARSE_SHORT or a drop reason. */
static __noinline int parse_once(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	__builtin_memset(p, 0, sizeof(*p));
	if ((void *)(eth + 1) > end)
		return PARSE_SHORT;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return parse_arp(skb, p);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, p);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, p);
	return BH_REASON_UNKNOWN_L3;
}

/*
 * Parses the packet: 0 or a drop reason. Headers are read from the linear
 * area; a packet whose headers run past it (a GRO-merged or paged frame
 * can carry its IP header in a page fragment) has them pulled in and is
 * parsed again. Only then is a short header malformed. The pull is paid
 * only by such packets: most have their headers linear, and pulling would
 * copy (uncloning) every TCP segment.
 */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	int r = parse_once(skb, p);

	__u32 want;

	if (r != PARSE_SHORT)
		return r;
	/* A truly truncated packet is short after the pull as well. */
	want = skb->len < PARSE_PULL_MAX ? skb->len : PARSE_PULL_MAX;
	if (bpf_skb_pull_data(skb, want) == 0)
		r = parse_once(skb, p);
	return r == PARSE_SHORT ? BH_REASON_INVALID_PACKET : r;
}

/*
 * The maps hold IPv4 addresses as ::ffff:a.b.c.d, so an IPv6 packet from
 * such an address would pass for the IPv4 host: no IPv6 packet may carry
 * one (RFC 4291 2.5.5.2 keeps them off the wire). Checked on the whole
 * parsed packet, so that its drop report has the full tuple.
 */
static __always_inline int mapped_addresses(const struct pkt *p)
{
	if (!p->v6)
		return 0;
	if (is_v4_mapped(p->saddr.b))
		return BH_REASON_INVALID_SOURCE_IP;
	return is_v4_mapped(p->daddr.b) ? BH_REASON_INVALID_PACKET : 0;
}

/*
 * Whether a packet leaving the pod carries one of the endpoint's own
 * addresses (ARP: as its sender). Every identity decision downstream
 * trusts the source address. Link control (neighbour and listener
 * discovery) may come from the pod's link-local address or from ::.
 */
static __always_inline int source_is_own(const struct bh_endpoint *ep, const struct pkt *p)
{
	__u32 i;

	const struct bh_addr unspecified = {};

	if (is_link_control(p) &&
	    ((p->saddr.b[0] == 0xfe && (p->saddr.b[1] & 0xc0) == 0x80) || addr_eq(&p->saddr, &unspecified)))
		return 1;
	for (i = 0; i < BH_EP_MAX_ADDRS; i++) {
		if (i >= ep->naddrs)
			break;
		if (addr_eq(&ep->addrs[i], &p->saddr))
			return 1;
	}
	/* An ARP probe (RFC 5227) has no sender address yet. */
	return p->arp && is_v4_mapped(p->saddr.b) && !*(const __u32 *)&p->saddr.b[12];
}

static __always_inline __u32 ipcache_identity(const struct bh_addr *a)
{
	struct bh_ipcache_key k = { .prefixlen = 128, .addr = *a };
	struct bh_ipcache_value *v = bpf_map_lookup_elem(&bh_ipcache, &k);

	if (v)
		return v->identity;
	/* world-ipv4 / world-ipv6, as the engine names addresses it does not know */
	return is_v4_mapped(a->b) ? 9 : 10;
}

/*
 * Whether link control (neighbour and listener discovery) stays between
 * the pod and its node, where it is the link working: leaving the pod for
 * a link-local or link-scope multicast address or the node itself;
 * entering it from a link-local or the unspecified address or the node.
 * Anything else (the node would forward it to another pod or further) is
 * traffic like any other, under policy.
 */
static __always_inline int node_link(const struct pkt *p, __u8 dir)
{
	const struct bh_addr unspecified = {};
	const struct bh_addr *peer = dir == BH_DIR_EGRESS ? &p->daddr : &p->saddr;

	if (peer->b[0] == 0xfe && (peer->b[1] & 0xc0) == 0x80)
		return 1;
	if (dir == BH_DIR_EGRESS && peer->b[0] == 0xff && (peer->b[1] & 0x0f) == 0x02)
		return 1;
	if (dir == BH_DIR_INGRESS && addr_eq(peer, &unspecified))
		return 1;
	return ipcache_identity(peer) == BH_IDENTITY_HOST;
}

static __always_inline struct bh_policy_value *policy_level(void *trie, struct bh_policy_key *k, __u8 level,
							     __u8 proto, __u16 port, int has_ports)
{
	struct bh_policy_value *v;

	k->level = level;
	if (has_ports) {
		k->proto = proto;
		k->port = bpf_htons(port);
		k->prefixlen = BH_POLICY_FIXED_BITS + 16;
		v = bpf_map_lookup_elem(trie, k);
		if (v)
			return v;
	}
	k->proto = 0;
	k->port = 0;
	k->prefixlen = BH_POLICY_FIXED_BITS;
	return bpf_map_lookup_elem(trie, k);
}

/* The policy entry for a new flow; *level is the level that decided. */
static __always_inline struct bh_policy_value *policy_lookup(void *trie, const struct bh_addr *peer, __u32 peer_id,
							      __u8 proto, __u16 port, __u8 *level)
{
	struct bh_policy_key k = {};
	struct bh_policy_value *v;
	int has_ports = proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP_ ||
			proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;

	k.peer = *peer;
	*level = BH_LEVEL_ADDRESS;
	v = policy_level(trie, &k, BH_LEVEL_ADDRESS, proto, port, has_ports);
	if (v)
		return v;
	__builtin_memset(&k.peer, 0, sizeof(k.peer));
	*(__be32 *)k.peer.b = bpf_htonl(peer_id);
	*level = BH_LEVEL_IDENTITY;
	v = policy_level(trie, &k, BH_LEVEL_IDENTITY, proto, port, has_ports);
	if (v)
		return v;
	__builtin_memset(&k.peer, 0, sizeof(k.peer));
	*level = BH_LEVEL_ANY;
	return policy_level(trie, &k, BH_LEVEL_ANY, proto, port, has_ports);
}

/* What the policy of one direction of an endpoint says about a flow. */
struct decision {
	__u32 slot;
	__u32 peer_id;
	__u32 rule;
	__u8 level;  /* BH_LEVEL_* of the deciding entry, 255 for none */
	__u8 match;  /* BH_MATCH_* of the deciding entry */
	__u8 reason; /* 0, or why the policy would drop it */
	__u16 proxy_port; /* a redirect: the L7 proxy's listening port */
};

/* Where a decision is taken, for what a redirect can mean there. */
#define BH_VIA_NONE 0   /* the connection cannot be handed to the proxy here */
#define BH_VIA_SOURCE 1 /* on the connection's source side: it can be */
#define BH_VIA_PROXY 2  /* it comes from the proxy, which checked its requests */

/*
 * Asks endpoint `ep`'s current policy for direction `dir` about a flow to
 * or from `peer` on (proto, port). A direction whose policy is not loaded
 * (it did not fit its map) decides EP_NOT_READY: fail closed.
 */
static __always_inline void decide(const struct bh_endpoint *ep, __u8 dir, const struct bh_addr *peer, __u8 proto,
				   __u16 port, __u8 via, struct decision *d)
{
	struct bh_policy_value *pv;
	void *trie;

	d->slot = ep->slot[dir & 1];
	d->peer_id = ipcache_identity(peer);
	d->rule = 0;
	d->level = 255;
	d->match = 0;
	d->reason = 0;
	d->proxy_port = 0;
	trie = d->slot == BH_SLOT_NOT_READY ? NULL : bpf_map_lookup_elem(&bh_policy, &d->slot);
	if (!trie) { /* the agent always loads a slot before naming it */
		d->reason = BH_REASON_EP_NOT_READY;
		return;
	}
	pv = policy_lookup(trie, peer, d->peer_id, proto, port, &d->level);
	if (!pv) {
		__u32 deny = dir == BH_DIR_EGRESS ? BH_EP_DEFAULT_DENY_EGRESS : BH_EP_DEFAULT_DENY_INGRESS;

		d->level = 255;
		if (ep->flags & deny)
			d->reason = BH_REASON_POLICY_DENIED;
		return;
	}
	d->rule = pv->rule;
	d->match = pv->match;
	if (pv->verdict == BH_VERDICT_ALLOW)
		return;
	if (pv->verdict != BH_VERDICT_REDIRECT) {
		d->reason = BH_REASON_POLICY_DENY;
		return;
	}
	/*
	 * A redirect is carried out where a packet first reaches the node, on
	 * the way out of the client (tc ingress of its veth, where a socket can
	 * be assigned), whichever end's rule asks for it, and only to a proxy
	 * the agent named a port for. What the proxy then sends on its behalf
	 * has been checked. Anything else fails closed.
	 */
	if (via == BH_VIA_PROXY)
		return;
	d->proxy_port = pv->proxy_port;
	if (via != BH_VIA_SOURCE || !pv->proxy_port)
		d->reason = BH_REASON_PROXY_UNAVAILABLE;
}

/*
 * The proxy port that the ingress policy of the local endpoint the packet
 * goes to redirects it to, or 0 (no such endpoint, no redirect, or one
 * that cannot be carried out; the destination's own program then drops it).
 */
static __always_inline __u16 dst_redirect(const struct pkt *p)
{
	struct bh_endpoint *dst;
	struct decision dd;
	__u32 *ifindex = bpf_map_lookup_elem(&bh_ep_addrs, &p->daddr);

	dst = ifindex ? bpf_map_lookup_elem(&bh_endpoints, ifindex) : NULL;
	if (!dst)
		return 0;
	decide(dst, BH_DIR_INGRESS, &p->saddr, p->proto, p->policy_port, BH_VIA_SOURCE, &dd);
	return dd.reason ? 0 : dd.proxy_port;
}

/*
 * Hands a packet of a redirected flow to the proxy. TCP: to the local
 * socket that already holds the connection (established, or half-open as a
 * request sock, hence the skc_ lookup), else, when `port` is given, to the
 * proxy's listener on it (bound to the wildcard address, transparent). UDP
 * (DNS) has no connection in a socket: with `port` every datagram goes to
 * the proxy's socket on it; without, to the connected socket that holds the
 * exact tuple (the proxy's upstream query, for a reply to it). The mark
 * routes the packet to the local stack. Returns 0, or the drop reason when
 * there is no such socket: nothing redirected is ever forwarded past the
 * proxy.
 */
static __always_inline int to_proxy(struct __sk_buff *skb, const struct pkt *p, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk = NULL;
	int udp = p->proto == IPPROTO_UDP;
	__u32 len;
	long err;

	if (p->proto != IPPROTO_TCP && !udp)
		return BH_REASON_PROXY_UNAVAILABLE;
	if (p->v6) {
		__builtin_memcpy(t.ipv6.saddr, p->saddr.b, 16);
		__builtin_memcpy(t.ipv6.daddr, p->daddr.b, 16);
		t.ipv6.sport = p->sport;
		t.ipv6.dport = p->dport;
		len = sizeof(t.ipv6);
	} else {
		__builtin_memcpy(&t.ipv4.saddr, &p->saddr.b[12], 4);
		__builtin_memcpy(&t.ipv4.daddr, &p->daddr.b[12], 4);
		t.ipv4.sport = p->sport;
		t.ipv4.dport = p->dport;
		len = sizeof(t.ipv4);
	}
	if (udp && !port) {
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		/* Only a socket connected to the sender: a wildcard one bound to
		 * the port would be anyone's. */
		if (sk && !sk->dst_port) {
			bpf_sk_release(sk);
			sk = NULL;
		}
	} else if (!udp) {
		sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (sk && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
			bpf_sk_release(sk);
			sk = NULL;
		}
	}
	if (!sk && port) {
		if (p->v6) {
			__builtin_memset(t.ipv6.daddr, 0, 16);
			t.ipv6.dport = bpf_htons(port);
		} else {
			t.ipv4.daddr = 0;
			t.ipv4.dport = bpf_htons(port);
		}
		/* Only a socket bound to the wildcard address matches (UDP's
		 * lookup needs the local address equal, TCP's listener has none). */
		if (udp) {
			sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		} else {
			sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
			if (sk && sk->state != BPF_TCP_LISTEN) {
				bpf_sk_release(sk);
				sk = NULL;
			}
		}
	}
	if (!sk)
		return BH_REASON_PROXY_UNAVAILABLE;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return BH_REASON_PROXY_UNAVAILABLE;
	skb->mark = BH_PROXY_MARK;
	return 0;
}

/* What one report says, beyond the packet itself. */
struct report {
	__u32 peer_id;
	__u32 rule;
	__u32 count;
	__u8 dir;
	__u8 kind;
	__u8 verdict;
	__u8 reason;
	__u8 level;
	__u8 match;
	__u8 is_reply;
};

static __always_inline void emit(struct __sk_buff *skb, const struct pkt *p, const struct bh_endpoint *ep,
				 const struct report *r)
{
	struct bh_event *e = bpf_ringbuf_reserve(&bh_events, sizeof(*e), 0);

	if (!e) {
		count(BH_REASON_MAX, 0, 0); /* COUNTER_LOST_EVENTS */
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->time = bpf_ktime_get_ns();
	e->kind = r->kind;
	e->verdict = r->verdict;
	e->reason = r->reason;
	e->dir = r->dir;
	e->proto = p->proto;
	e->level = r->level;
	e->match = r->match;
	e->is_reply = r->is_reply;
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->count = r->count;
	/* A reply travels against the connection's direction at this point:
	 * its source is the endpoint on ingress, the peer on egress. */
	if (ep) {
		int ep_is_src = (r->dir == BH_DIR_EGRESS) != (r->is_reply == 1);

		e->endpoint = ep->id;
		e->src_identity = ep_is_src ? ep->identity : r->peer_id;
		e->dst_identity = ep_is_src ? r->peer_id : ep->identity;
	}
	e->rule = r->rule;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->tcp_flags = p->tcp_flags;
	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		e->icmp_type = p->policy_type;
		e->icmp_code = p->icmp_code;
	}
	bpf_ringbuf_submit(e, 0);
}

/*
 * Whether a drop is reported: the first of a tuple and reason is, repeats
 * within BH_DROP_AGGREGATION_NS are counted into the entry, and the next
 * report after that carries them (*count). A full table only means more
 * reports, never fewer drops.
 */
static __always_inline int drop_report(struct __sk_buff *skb, const struct pkt *p, __u8 dir, __u8 reason, __u32 *count)
{
	struct bh_drop_key k = {};
	struct bh_drop_value *v, nv = {};
	__u64 now = bpf_ktime_get_ns();

	k.tuple.saddr = p->saddr;
	k.tuple.daddr = p->daddr;
	k.tuple.sport = p->sport;
	k.tuple.dport = p->dport;
	k.tuple.proto = p->proto;
	k.tuple.dir = dir;
	k.tuple.ifindex = skb->ifindex;
	k.reason = reason;
	v = bpf_map_lookup_elem(&bh_drops, &k);
	if (v && now - v->reported < BH_DROP_AGGREGATION_NS) {
		__sync_fetch_and_add(&v->repeats, 1);
		return 0;
	}
	*count = 1;
	if (v) {
		*count += v->repeats;
		v->reported = now;
		v->repeats = 0;
		return 1;
	}
	nv.reported = now;
	bpf_map_update_elem(&bh_drops, &k, &nv, BPF_ANY);
	return 1;
}

/* Drops the packet, counted and (aggregated) reported. `dir` is the
 * direction of the connection it belongs to; `is_reply` as in events. */
static __always_inline int drop(struct __sk_buff *skb, const struct pkt *p, const struct bh_endpoint *ep,
				__u8 dir, __u8 reason, __u8 is_reply, const struct decision *d)
{
	struct report r = { .dir = dir, .kind = BH_EVENT_DROP, .verdict = BH_EV_DROPPED, .reason = reason,
			    .level = 255, .is_reply = is_reply };

	if (d) {
		r.peer_id = d->peer_id;
		r.rule = d->rule;
		r.level = d->level;
		r.match = d->match;
	} else if (ep) {
		/* No policy was asked (a spoofed or malformed packet): name the peer anyway. */
		r.peer_id = ipcache_identity(dir == BH_DIR_EGRESS ? &p->daddr : &p->saddr);
	}
	count(reason, dir, skb->len);
	if (drop_report(skb, p, dir, reason, &r.count))
		emit(skb, p, ep, &r);
	return TC_ACT_SHOT;
}

/* Whether audit mode lets a drop for `reason` pass: the policy's verdicts
 * do; the packet's own faults (malformed, spoofed), a policy that is not
 * loaded and a full conntrack table never. */
static __always_inline int audited(const struct bh_endpoint *ep, __u8 reason)
{
	return (ep->flags & BH_EP_AUDIT) && (reason == BH_REASON_POLICY_DENIED || reason == BH_REASON_POLICY_DENY ||
					     reason == BH_REASON_PROXY_UNAVAILABLE);
}

/*
 * A tracked connection's state changes are reported once each: its first
 * reply, and the first FIN or RST in each direction (with the packets the
 * connection carried so far). `dir` is the classifier's direction (the
 * packet's), `reply` whether the packet goes against the connection's; the
 * report carries the connection's direction, as Hubble's do.
 */
static __always_inline void ct_report(struct __sk_buff *skb, const struct pkt *p, const struct bh_endpoint *ep,
				      struct bh_ct_value *cv, __u8 dir, int reply)
{
	__u8 close_bit = reply ? BH_CT_CLOSE_SEEN_REV : BH_CT_CLOSE_SEEN_FWD;
	__u8 first_reply = reply && !(cv->flags & BH_CT_SEEN_REPLY);
	__u8 closing = (p->tcp_flags & (0x01 | 0x04)) && p->proto == IPPROTO_TCP && !(cv->flags & close_bit);
	struct report r = { .rule = cv->rule, .dir = reply ? !dir : dir, .kind = BH_EVENT_TRACE,
			    .verdict = BH_EV_FORWARDED, .level = 255, .is_reply = reply ? 1 : 0 };

	__sync_fetch_and_add(&cv->packets, 1);
	if (!first_reply && !closing)
		return;
	if (closing)
		cv->flags |= close_bit;
	r.count = cv->packets;
	r.peer_id = ipcache_identity(dir == BH_DIR_EGRESS ? &p->daddr : &p->saddr);
	emit(skb, p, ep, &r);
}

static __always_inline __u64 ct_timeout(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_OTHER_TIMEOUT;
	return (flags & BH_CT_CLOSING) ? CT_TCP_CLOSING_TIMEOUT : CT_TCP_TIMEOUT;
}

/* A live conntrack entry for `k`, or NULL (an expired one is removed). */
static __always_inline struct bh_ct_value *ct_get(struct bh_ct_key *k, __u64 now)
{
	struct bh_ct_value *v = bpf_map_lookup_elem(&bh_ct, k);

	if (v && now - v->last_seen > ct_timeout(k->proto, v->flags)) {
		bpf_map_delete_elem(&bh_ct, k);
		return NULL;
	}
	return v;
}

static __always_inline void ct_touch(struct bh_ct_value *v, __u64 now, __u8 tcp_flags, __u8 extra)
{
	if (tcp_flags & (0x01 | 0x04)) /* FIN or RST */
		v->flags |= BH_CT_CLOSING;
	v->flags |= extra;
	if (now - v->last_seen > CT_REFRESH)
		v->last_seen = now;
}

/*
 * Whether a conntrack entry still stands for the endpoint's current policy
 * of the entry's direction: it was decided under the slot the endpoint
 * names now, and not only thanks to an audit mode that has since ended.
 */
static __always_inline int ct_current(const struct bh_endpoint *ep, const struct bh_ct_key *k,
				      const struct bh_ct_value *cv)
{
	return cv->slot == ep->slot[k->dir & 1] && (!(cv->flags & BH_CT_AUDITED) || (ep->flags & BH_EP_AUDIT));
}

/*
 * Asks the current policy again about an established connection whose
 * entry no longer stands (see ct_current), from either end: a policy
 * change that removed its allow, or the end of the audit mode that let it
 * in, stops it at its next packet. The entry `k` holds the connection's
 * original tuple. Returns 0 (the entry now stands for the current policy)
 * or the drop reason. A denied connection keeps its (stale) entry, so
 * that its packets either way keep being asked, and dropped, until the
 * entry ages out: without it the other end's packets would pass for new
 * flows of its own.
 */
static __always_inline int ct_recheck(const struct bh_endpoint *ep, struct bh_ct_key *k, struct bh_ct_value *cv,
				      struct decision *d)
{
	__u8 via = k->dir == BH_DIR_EGRESS		  ? BH_VIA_SOURCE
		   : (cv->flags & BH_CT_FROM_PROXY) ? BH_VIA_PROXY
						    : BH_VIA_NONE;

	decide(ep, k->dir, k->dir == BH_DIR_EGRESS ? &k->daddr : &k->saddr, k->proto, cv->policy_port, via, d);
	if (d->reason && !audited(ep, d->reason))
		return d->reason;
	cv->slot = d->slot;
	cv->rule = d->rule;
	if (d->reason)
		cv->flags |= BH_CT_AUDITED;
	else
		cv->flags &= ~BH_CT_AUDITED;
	return 0;
}

/*
 * A packet of a connection handed to the proxy goes to the proxy's socket
 * for it; a SYN sent again before the proxy holds one goes to the listener
 * the policy names now. `d` is the decision just taken for the packet, or
 * NULL when its entry stands. Returns 0 or the drop reason.
 */
static __always_inline int proxied(struct __sk_buff *skb, const struct pkt *p, const struct bh_endpoint *ep, __u8 dir,
				   const struct decision *d)
{
	struct decision now;

	if (d)
		return to_proxy(skb, p, d->proxy_port);
	/* A TCP connection's later packets go to the socket that holds it; a
	 * UDP flow's datagrams each go to the proxy's socket, as its first. */
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & 0x12) != 0x02) /* not a SYN without ACK */
		return to_proxy(skb, p, 0);
	decide(ep, dir, &p->daddr, p->proto, p->policy_port, BH_VIA_SOURCE, &now);
	if (now.reason)
		return now.reason;
	return to_proxy(skb, p, now.proxy_port ? now.proxy_port : dst_redirect(p));
}

/*
 * Passes a packet the policy decided on (a new flow's first, or the first
 * of a connection asked again after a policy change): counted as forwarded
 * or, when only audit mode let it through, under the reason it would have
 * been dropped for, and reported as a policy verdict. `dir` is the
 * connection's direction.
 */
static __always_inline int pass_decided(struct __sk_buff *skb, const struct pkt *p, const struct bh_endpoint *ep,
					__u8 dir, const struct decision *d, __u8 is_reply)
{
	struct report rep = { .peer_id = d->peer_id, .rule = d->rule, .count = 1, .dir = dir,
			      .kind = BH_EVENT_POLICY_VERDICT, .verdict = d->reason ? BH_EV_AUDIT : BH_EV_FORWARDED,
			      .reason = d->reason, .level = d->level, .match = d->match, .is_reply = is_reply };

	/* As everywhere: forwarded packets count under their own direction,
	 * what a policy decided against under that policy's. */
	if (d->reason)
		count(d->reason, dir, skb->len);
	else
		count(BH_REASON_FORWARDED, is_reply ? !dir : dir, skb->len);
	emit(skb, p, ep, &rep);
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct pkt p;
	struct bh_endpoint *ep;
	struct bh_ct_key ck = {};
	struct bh_ct_value *cv;
	struct decision d;
	__u32 ifindex = skb->ifindex;
	__u64 now;
	int r;

	r = parse(skb, &p);
	if (!r)
		r = mapped_addresses(&p);
	ep = bpf_map_lookup_elem(&bh_endpoints, &ifindex);
	if (r)
		return drop(skb, &p, ep, dir, r, 2, NULL);
	if (!ep)
		return drop(skb, &p, NULL, dir, BH_REASON_EP_NOT_READY, 2, NULL);
	if (dir == BH_DIR_EGRESS && !source_is_own(ep, &p))
		return drop(skb, &p, ep, dir, BH_REASON_INVALID_SOURCE_IP, 2, NULL);
	/* ARP, and neighbour and listener discovery between the pod and its
	 * node, pass unreported, whatever the policy: they are the link working,
	 * not traffic between workloads. */
	if (p.arp || (is_link_control(&p) && node_link(&p, dir))) {
		count(BH_REASON_FORWARDED, dir, skb->len);
		return TC_ACT_OK;
	}

	now = bpf_ktime_get_ns();
	ck.ifindex = ifindex;
	/*
	 * An ICMP error about a connection this point admitted, while its entry
	 * stands: about a packet of either way (a Packet Too Big for a server's
	 * reply matters as much as one for the client's request), and only on
	 * its way back to that packet's source, as a real error goes. Anything
	 * else is judged as a packet of its own.
	 */
	if (p.related && addr_eq(&p.daddr, &p.inner.saddr)) {
		ck.saddr = p.inner.saddr;
		ck.daddr = p.inner.daddr;
		ck.sport = p.inner.sport;
		ck.dport = p.inner.dport;
		ck.proto = p.inner.proto;
		ck.dir = !dir;
		cv = ct_get(&ck, now);
		if (cv && ct_current(ep, &ck, cv)) {
			/* About a packet the proxy sent as the client: the node's
			 * stack takes it, and hands it to the proxy's socket (the
			 * kernel finds that by the packet inside), not the client. */
			if (cv->flags & BH_CT_FROM_PROXY)
				skb->mark = BH_PROXY_MARK;
			count(BH_REASON_FORWARDED, dir, skb->len);
			return TC_ACT_OK;
		}
		ck.saddr = p.inner.daddr;
		ck.daddr = p.inner.saddr;
		ck.sport = p.inner.dport;
		ck.dport = p.inner.sport;
		ck.dir = dir;
		cv = ct_get(&ck, now);
		if (cv && ct_current(ep, &ck, cv)) {
			count(BH_REASON_FORWARDED, dir, skb->len);
			return TC_ACT_OK;
		}
	}
	/* A reply: a packet against a connection this point admitted. */
	ck.saddr = p.daddr;
	ck.daddr = p.saddr;
	ck.sport = p.dport;
	ck.dport = p.sport;
	ck.proto = p.proto;
	ck.dir = !dir;
	cv = ct_get(&ck, now);
	if (cv) {
		/* The server's side of a connection the proxy opened for a client
		 * (with the client's address): the reply goes back to the proxy's
		 * socket, not on to the client; none, and it goes nowhere. */
		if (cv->flags & BH_CT_FROM_PROXY) {
			r = to_proxy(skb, &p, 0);
			if (r)
				return drop(skb, &p, ep, ck.dir, r, 1, NULL);
		}
		if (!ct_current(ep, &ck, cv)) {
			r = ct_recheck(ep, &ck, cv, &d);
			if (r)
				return drop(skb, &p, ep, ck.dir, r, 1, &d);
			ct_touch(cv, now, p.tcp_flags, BH_CT_SEEN_REPLY);
			return pass_decided(skb, &p, ep, ck.dir, &d, 1);
		}
		ct_report(skb, &p, ep, cv, dir, 1);
		ct_touch(cv, now, p.tcp_flags, BH_CT_SEEN_REPLY);
		count(BH_REASON_FORWARDED, dir, skb->len);
		return TC_ACT_OK;
	}

	/* The connection's own direction. */
	ck.saddr = p.saddr;
	ck.daddr = p.daddr;
	ck.sport = p.sport;
	ck.dport = p.dport;
	ck.dir = dir;
	cv = ct_get(&ck, now);
	if (cv && ct_current(ep, &ck, cv)) {
		if (cv->flags & BH_CT_PROXY) {
			r = proxied(skb, &p, ep, dir, NULL);
			if (r)
				return drop(skb, &p, ep, dir, r, 0, NULL);
		}
		ct_report(skb, &p, ep, cv, dir, 0);
		ct_touch(cv, now, p.tcp_flags, 0);
		count(BH_REASON_FORWARDED, dir, skb->len);
		return TC_ACT_OK;
	}

	/* A known connection under a changed policy: ask again (see ct_recheck).
	 * One that moves to or from the proxy breaks (neither end holds its
	 * other half), and nothing passes unchecked meanwhile. */
	if (cv) {
		r = ct_recheck(ep, &ck, cv, &d);
		if (!r && !d.reason && dir == BH_DIR_EGRESS && !d.proxy_port)
			d.proxy_port = dst_redirect(&p);
		if (!r && d.proxy_port && !d.reason)
			r = proxied(skb, &p, ep, dir, &d);
		if (r)
			return drop(skb, &p, ep, dir, r, 0, &d);
		if (d.proxy_port && !d.reason)
			cv->flags |= BH_CT_PROXY;
		else
			cv->flags &= ~BH_CT_PROXY;
		ct_touch(cv, now, p.tcp_flags, 0);
		return pass_decided(skb, &p, ep, dir, &d, 0);
	}

	/* A new flow: ask the policy. */
	decide(ep, dir, dir == BH_DIR_EGRESS ? &p.daddr : &p.saddr, p.proto, p.policy_port,
	       dir == BH_DIR_EGRESS ? BH_VIA_SOURCE
	       : (skb->mark & BH_MARK_MASK) == BH_FROM_PROXY_MARK ? BH_VIA_PROXY
								   : BH_VIA_NONE,
	       &d);
	if (d.reason && !audited(ep, d.reason))
		return drop(skb, &p, ep, dir, d.reason, 0, &d);
	/* The destination's L7 rules: the connection goes to the proxy here. */
	if (!d.reason && dir == BH_DIR_EGRESS && !d.proxy_port)
		d.proxy_port = dst_redirect(&p);
	if (d.proxy_port && !d.reason) {
		r = proxied(skb, &p, ep, dir, &d);
		if (r)
			return drop(skb, &p, ep, dir, r, 0, &d);
	}
	{
		struct bh_ct_value nv = { .last_seen = now, .slot = d.slot, .rule = d.rule,
					  .flags = d.reason ? BH_CT_AUDITED : 0, .policy_port = p.policy_port,
					  .packets = 1 };

		if (d.proxy_port && !d.reason)
			nv.flags |= BH_CT_PROXY;
		if (dir == BH_DIR_INGRESS && (skb->mark & BH_MARK_MASK) == BH_FROM_PROXY_MARK)
			nv.flags |= BH_CT_FROM_PROXY;
		long err = bpf_map_update_elem(&bh_ct, &ck, &nv, BPF_NOEXIST);

		/* -EEXIST: the same flow's first packet on another CPU got there
		 * first, under the same policy; its entry serves this one too.
		 * Anything else fails closed, audit mode or not: a flow that is not
		 * tracked could not be stopped by a later change. */
		if (err && err != -EEXIST)
			return drop(skb, &p, ep, dir, BH_REASON_CT_FULL, 0, &d);
	}
	return pass_decided(skb, &p, ep, dir, &d, 0);
}

SEC("classifier")
int bh_from_pod(struct __sk_buff *skb)
{
	return handle(skb, BH_DIR_EGRESS);
}

SEC("classifier")
int bh_to_pod(struct __sk_buff *skb)
{
	return handle(skb, BH_DIR_INGRESS);
}
