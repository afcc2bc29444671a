/* udp_port_range.c with direct packet access (skb->data, skb->data_end). The kernel allows this
 * in tc programs but not in socket filters: on a Linux port evlnet then runs the program in
 * its VM for the ring and in the kernel for tc. */
#include "evl_filter.h"

#ifndef FIRST_PORT
#define FIRST_PORT 59000
#endif
#ifndef LAST_PORT
#define LAST_PORT 59999
#endif

SEC("tc")
int udp_port_range_direct(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct udphdr *udp;
	__u16 dport;

	if ((void *)(ip + 1) > data_end)
		return EVL_RX_SKIP;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return EVL_RX_SKIP;
	if (ip->frag_off & bpf_htons(0x1fff))
		return EVL_RX_SKIP;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return EVL_RX_SKIP;
	dport = bpf_htons(udp->dest);
	return dport >= FIRST_PORT && dport <= LAST_PORT ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
