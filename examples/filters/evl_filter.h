/* What an evlnet (and EVL) RX filter needs: the verdicts, the context, one helper.
 *
 * Build:  clang -O2 -g -target bpf -I/usr/include/$(gcc -dumpmachine) -c f.c -o f.o
 * Install: evlnet.set_filter(port, "f.o")   (EVL: evl_net_set_filter(devfd, "f.o"))
 *
 * Filters must be loop-free single functions (helpers static __always_inline), read the packet
 * with bpf_skb_load_bytes() so that the kernel also runs them as socket filters on Linux ports
 * (direct access through skb->data works too, in tc and in evlnet's VM, see
 * udp_port_range_direct.c), and return one of EVL's verdicts.
 */
#ifndef EVL_FILTER_H
#define EVL_FILTER_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>

/* EVL's verdicts (uapi/evl/net/bpf-abi.h) */
#define EVL_RX_DROP   0
#define EVL_RX_ACCEPT 1
#define EVL_RX_SKIP   2
#define EVL_RX_VLAN   3

#define SEC(name) __attribute__((section(name), used))
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

/* long bpf_skb_load_bytes(const void *skb, __u32 offset, void *to, __u32 len) */
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) = (void *)26;

#define bpf_htons(x) __builtin_bswap16(x)
#define bpf_htonl(x) __builtin_bswap32(x)

/* The IPv4 header of an untagged frame (a tagged one's tag is in skb->vlan_tci: the kernel and
 * evlnet's VM both show the frame untagged), or -1 when it is not IPv4 or too short. */
static __always_inline int load_ipv4(struct __sk_buff *skb, struct iphdr *ip)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(*ip)) < 0)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	return 0;
}

char _license[] SEC("license") = "GPL";

#endif
