/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared by the datapath programs and the agent. Every struct
 * here has a size assertion on both sides (_Static_assert below, and
 * `const _: () = assert!(size_of::<T>() == N)` in crates/datapath/src/abi.rs),
 * and BH_LAYOUT_VERSION is part of the pin path: a change to any layout
 * must bump it, so a new agent never reuses maps of an older layout.
 */
#ifndef BULKHEAD_H
#define BULKHEAD_H

#include <linux/types.h>

#define BH_LAYOUT_VERSION 4

/* Policy map levels, most specific first (see resolve.rs). */
#define BH_LEVEL_ADDRESS 0
#define BH_LEVEL_IDENTITY 1
#define BH_LEVEL_ANY 2

/* Policy verdicts. */
#define BH_VERDICT_ALLOW 1
#define BH_VERDICT_DENY 2
#define BH_VERDICT_REDIRECT 3

/* Directions, as seen from the endpoint. */
#define BH_DIR_INGRESS 0
#define BH_DIR_EGRESS 1

/* Endpoint flags. */
#define BH_EP_AUDIT (1u << 0)
#define BH_EP_DEFAULT_DENY_INGRESS (1u << 1)
#define BH_EP_DEFAULT_DENY_EGRESS (1u << 2)

/*
 * Event and counter reasons. 0 is "forwarded"; the rest are drop reasons.
 * Keep in step with `Reason` in crates/datapath/src/abi.rs.
 */
#define BH_REASON_FORWARDED 0
#define BH_REASON_POLICY_DENIED 1   /* no entry allowed it (default deny) */
#define BH_REASON_POLICY_DENY 2     /* an explicit deny entry */
#define BH_REASON_INVALID_PACKET 3  /* bad or truncated header */
#define BH_REASON_FRAG_UNKNOWN 4    /* a later fragment whose first was not seen */
#define BH_REASON_UNKNOWN_L3 5      /* not IPv4, IPv6 or ARP */
#define BH_REASON_PROXY_UNAVAILABLE 6 /* redirect to an L7 proxy that is not running */
#define BH_REASON_EP_NOT_READY 7    /* no endpoint for the interface, or no loaded policy for the direction */
#define BH_REASON_CT_FULL 8         /* conntrack entry could not be created */
#define BH_REASON_INVALID_SOURCE_IP 9 /* a pod sent with an address not its own */
#define BH_REASON_MAX 10

/* Event kinds. */
#define BH_EVENT_DROP 1
#define BH_EVENT_POLICY_VERDICT 2
#define BH_EVENT_TRACE 3 /* a tracked connection changed state (first reply, FIN, RST) */

/* What part of a policy key matched (bh_policy_value.match). */
#define BH_MATCH_ALL_PROTOCOLS 0
#define BH_MATCH_PROTOCOL 1
#define BH_MATCH_PORT 2

/* Repeats of one drop (same tuple, interface and reason) within this
 * interval are counted, not reported: the next report carries the count. */
#define BH_DROP_AGGREGATION_NS 1000000000ULL

/* Event verdicts (Hubble's). */
#define BH_EV_FORWARDED 1
#define BH_EV_DROPPED 2
#define BH_EV_AUDIT 3
#define BH_EV_REDIRECTED 4

/* An IPv4 address is stored as the IPv4-mapped IPv6 address ::ffff:a.b.c.d. */
struct bh_addr {
	__u8 b[16];
};

/* ipcache: longest prefix → identity. Miss means world. */
struct bh_ipcache_key {
	__u32 prefixlen; /* over addr */
	struct bh_addr addr;
};

struct bh_ipcache_value {
	__u32 identity;
};

/* The addresses an endpoint may send from (IPv4 as mapped IPv6). */
#define BH_EP_MAX_ADDRS 4

/* A direction's slot when its policy could not be loaded (it did not fit
 * its map): the direction drops everything, BH_REASON_EP_NOT_READY. */
#define BH_SLOT_NOT_READY 0

/* The reserved identity of the node itself. */
#define BH_IDENTITY_HOST 1

/* endpoints: host-side interface index → endpoint. */
struct bh_endpoint {
	__u32 id;
	__u32 identity;
	__u32 flags;
	/* The policy slot of each direction (BH_DIR_*). Replacing this whole
	 * value is how a policy change becomes visible atomically. */
	__u32 slot[2];
	__u32 naddrs;
	struct bh_addr addrs[BH_EP_MAX_ADDRS];
};

/*
 * policy: one LPM trie per slot (a map in the bh_policy hash of maps), over
 * (level, proto, peer, port). Every entry covers level..peer exactly
 * (BH_POLICY_FIXED_BITS) plus a prefix of the port. Protocol-wide entries
 * use proto 0 and a port prefix of 0. A slot's trie is complete before it
 * is published and never changes while live: an LPM trie may misroute a
 * lookup that runs concurrently with an update of the same trie, so a
 * live one is never updated.
 */
struct bh_policy_key {
	__u32 prefixlen;
	__u8 level;
	__u8 proto;
	__u8 pad[2];
	struct bh_addr peer; /* address, or identity in the first 4 bytes (BE) */
	__be16 port;
	__u8 pad2[2];
};
#define BH_POLICY_FIXED_BITS ((4 + 16) * 8)
#define BH_POLICY_SLOT_MAX_ENTRIES (1 << 20)

struct bh_policy_value {
	__u8 verdict;
	__u8 match;      /* BH_MATCH_*: what the entry's key covers */
	__u16 proxy_port;
	__u32 rule; /* the agent's reference for the deciding rules */
};

/* conntrack: the tuple as first seen at one enforcement point. */
struct bh_ct_key {
	struct bh_addr saddr;
	struct bh_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
	__u32 ifindex;
};

struct bh_ct_value {
	__u64 last_seen; /* bpf_ktime_get_ns */
	__u32 slot;      /* the policy slot that allowed the flow */
	__u32 rule;
	__u8 flags;      /* BH_CT_* */
	__u8 pad;
	__u16 policy_port; /* the port (ICMP: type) the policy was asked about */
	__u32 packets;   /* both directions, for the closing report */
};
#define BH_CT_SEEN_REPLY (1u << 0)
#define BH_CT_CLOSING (1u << 1)
#define BH_CT_CLOSE_SEEN_FWD (1u << 2) /* FIN or RST reported, original direction */
#define BH_CT_CLOSE_SEEN_REV (1u << 3) /* FIN or RST reported, reply direction */
#define BH_CT_AUDITED (1u << 4)        /* admitted only because the endpoint was in audit mode */
#define BH_CT_PROXY (1u << 5)          /* handed to the L7 proxy (packets of the connection go to its socket) */
#define BH_CT_FROM_PROXY (1u << 6)     /* opened by the L7 proxy for a client: replies go back to the proxy */

/* skb->mark of a packet handed to a local proxy socket: the node routes it
 * by a policy-routing rule on this mark to a local route (DESIGN.md §4). */
#define BH_PROXY_MARK 0x200
/* The mark (SO_MARK) of the proxy's upstream sockets, which keep the
 * client's address: their connections' replies go back to the proxy. A pod
 * cannot set it (a packet's mark is cleared as it leaves the pod). */
#define BH_FROM_PROXY_MARK 0xa00
#define BH_MARK_MASK 0xf00

/* Drop aggregation: one entry per (tuple, interface, direction, reason). */
struct bh_drop_key {
	struct bh_ct_key tuple;
	__u8 reason;
	__u8 pad[3];
};

struct bh_drop_value {
	__u64 reported; /* bpf_ktime_get_ns of the last report */
	__u32 repeats;  /* drops since then */
	__u32 pad;
};

/* Fragments: a first fragment records its ports for the later ones. */
struct bh_frag_key {
	struct bh_addr saddr;
	struct bh_addr daddr;
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

struct bh_frag_value {
	__be16 sport;
	__be16 dport;
	__u16 policy_port; /* the port (ICMP: type) the policy sees */
	__u8 proto;        /* the L4 protocol (IPv6: after any extension headers) */
	__u8 pad;
};

/* Counters, per CPU, indexed by reason * 2 + direction. */
struct bh_counter {
	__u64 packets;
	__u64 bytes;
};

/* What the ring buffer carries. */
struct bh_event {
	__u64 time;      /* bpf_ktime_get_ns */
	__u8 kind;       /* BH_EVENT_* */
	__u8 verdict;    /* BH_EV_* */
	__u8 reason;     /* BH_REASON_* */
	__u8 dir;        /* BH_DIR_* */
	__u8 proto;
	__u8 level;      /* policy level that matched, 255 for none */
	__u8 is_reply;   /* 0 no, 1 yes, 2 unknown */
	__u8 match;      /* BH_MATCH_* of the entry that decided */
	__u32 ifindex;
	__u32 endpoint;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule;
	__u32 len;
	struct bh_addr saddr;
	struct bh_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 pad2;
	__u32 count;     /* packets it stands for: aggregated drops, a closing connection's packets */
	__u32 pad3;
};

_Static_assert(sizeof(struct bh_ipcache_key) == 20, "bh_ipcache_key");
_Static_assert(sizeof(struct bh_endpoint) == 88, "bh_endpoint");
_Static_assert(sizeof(struct bh_policy_key) == 28, "bh_policy_key");
_Static_assert(sizeof(struct bh_policy_value) == 8, "bh_policy_value");
_Static_assert(sizeof(struct bh_ct_key) == 44, "bh_ct_key");
_Static_assert(sizeof(struct bh_ct_value) == 24, "bh_ct_value");
_Static_assert(sizeof(struct bh_frag_key) == 40, "bh_frag_key");
_Static_assert(sizeof(struct bh_frag_value) == 8, "bh_frag_value");
_Static_assert(sizeof(struct bh_event) == 88, "bh_event");
_Static_assert(sizeof(struct bh_drop_key) == 48, "bh_drop_key");
_Static_assert(sizeof(struct bh_drop_value) == 16, "bh_drop_value");

#endif
