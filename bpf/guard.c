// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bulkhead's guard: BPF LSM programs the agent attaches (while it runs) so
 * that no other process can change what enforces policy:
 *
 *  - bpf_map: a map file descriptor opened for writing (BPF_OBJ_GET of a
 *    pin, BPF_MAP_GET_FD_BY_ID) on one of the agent's maps;
 *  - bpf_prog: any descriptor of one of its programs (to replace or
 *    detach it with);
 *  - bpf: a descriptor of one of its links (BPF_LINK_GET_FD_BY_ID by id,
 *    BPF_OBJ_GET of a pin under its pin directory) — a TCX link is
 *    detached or has its program replaced only through one.
 *
 * The objects are the agent's by id (bh_guard_ids, which the agent fills
 * with its maps', programs' and links' ids); its own process (and the
 * proxy's, if it must) is named by thread-group id in bh_guard_allowed.
 * Reading a map stays open to every root tool. Each refusal is an event
 * on bh_guard_events with the process, and the caller gets EPERM.
 *
 * Only the uapi layout of union bpf_attr is relied on (it is ABI); the
 * kernel's struct bpf_map and struct bpf_prog are read with CO-RE.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define EPERM 1
#define FMODE_WRITE 0x2

/* What a refusal was about (bh_guard_event.object). */
#define GUARD_MAP 1
#define GUARD_PROG 2
#define GUARD_LINK 3

/* Key kinds of bh_guard_ids. */
#define ID_MAP 1
#define ID_PROG 2
#define ID_LINK 3

#define PIN_PREFIX_MAX 128

struct bpf_map {
	__u32 id;
} __attribute__((preserve_access_index));

struct bpf_prog_aux {
	__u32 id;
} __attribute__((preserve_access_index));

struct bpf_prog {
	struct bpf_prog_aux *aux;
} __attribute__((preserve_access_index));

struct guard_id {
	__u32 kind;
	__u32 id;
};

struct bh_guard_event {
	__u64 time_ns;
	__u32 pid;
	__u32 uid;
	__u32 object; /* GUARD_* */
	__u32 id;     /* the object's id (0: a pin, by path) */
	__u32 cmd;    /* the bpf() command, when known (else ~0) */
	__u32 pad;
	char comm[16];
};

/* The pin directory's prefix (NUL-terminated), at key 0. */
struct pin_prefix {
	char path[PIN_PREFIX_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct guard_id);
	__type(value, __u8);
} bh_guard_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32); /* tgid */
	__type(value, __u8);
} bh_guard_allowed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pin_prefix);
} bh_guard_pins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} bh_guard_events SEC(".maps");

static __always_inline int allowed(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return bpf_map_lookup_elem(&bh_guard_allowed, &tgid) != 0;
}

static __always_inline int ours(__u32 kind, __u32 id)
{
	struct guard_id k = { .kind = kind, .id = id };

	return bpf_map_lookup_elem(&bh_guard_ids, &k) != 0;
}

static __always_inline int refuse(__u32 object, __u32 id, __u32 cmd)
{
	struct bh_guard_event *e = bpf_ringbuf_reserve(&bh_guard_events, sizeof(*e), 0);

	if (e) {
		e->time_ns = bpf_ktime_get_ns();
		e->pid = bpf_get_current_pid_tgid() >> 32;
		e->uid = (__u32)bpf_get_current_uid_gid();
		e->object = object;
		e->id = id;
		e->cmd = cmd;
		e->pad = 0;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

SEC("lsm/bpf_map")
int BPF_PROG(bh_guard_map, struct bpf_map *map, unsigned int fmode, int ret)
{
	__u32 id;

	if (ret)
		return ret;
	if (!(fmode & FMODE_WRITE))
		return 0;
	id = BPF_CORE_READ(map, id);
	if (!ours(ID_MAP, id) || allowed())
		return 0;
	return refuse(GUARD_MAP, id, ~0u);
}

SEC("lsm/bpf_prog")
int BPF_PROG(bh_guard_prog, struct bpf_prog *prog, int ret)
{
	__u32 id;

	if (ret)
		return ret;
	id = BPF_CORE_READ(prog, aux, id);
	if (!ours(ID_PROG, id) || allowed())
		return 0;
	return refuse(GUARD_PROG, id, ~0u);
}

/* Whether the user string at `upath` starts with the pin prefix. */
static __always_inline int under_pins(__u64 upath)
{
	__u32 zero = 0;
	struct pin_prefix *prefix = bpf_map_lookup_elem(&bh_guard_pins, &zero);
	char path[PIN_PREFIX_MAX];
	int n;

	if (!prefix || !prefix->path[0])
		return 0;
	n = bpf_probe_read_user_str(path, sizeof(path), (const void *)upath);
	if (n <= 0)
		return 0;
	for (int i = 0; i < PIN_PREFIX_MAX; i++) {
		char want = prefix->path[i];

		if (!want)
			return 1;
		if (path[i] != want)
			return 0;
	}
	return 0;
}

SEC("lsm/bpf")
int BPF_PROG(bh_guard_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	__u32 link_id = 0;
	__u64 pathname = 0;

	if (cmd != BPF_LINK_GET_FD_BY_ID && cmd != BPF_OBJ_GET)
		return 0;
	if (allowed())
		return 0;
	if (cmd == BPF_LINK_GET_FD_BY_ID) {
		bpf_probe_read_kernel(&link_id, sizeof(link_id), &attr->link_id);
		if (ours(ID_LINK, link_id))
			return refuse(GUARD_LINK, link_id, cmd);
		return 0;
	}
	/* BPF_OBJ_GET: maps and programs are judged by the hooks above (a
	 * read-only map stays readable); a link pin of ours is refused here. */
	bpf_probe_read_kernel(&pathname, sizeof(pathname), &attr->pathname);
	if (under_pins(pathname))
		return refuse(GUARD_LINK, 0, cmd);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
