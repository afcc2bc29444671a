/* Accept UDP datagrams to ports FIRST_PORT..LAST_PORT (default: EVL's latmus port 59059 and
 * its neighbours); leave everything else to the in-band stage. */
#include "evl_filter.h"

#ifndef FIRST_PORT
#define FIRST_PORT 59000
#endif
#ifndef LAST_PORT
#define LAST_PORT 59999
#endif

SEC("tc")
int udp_port_range(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct udphdr udp;
	__u16 dport;

	if (load_ipv4(skb, &ip) < 0 || ip.protocol != IPPROTO_UDP)
		return EVL_RX_SKIP;
	if (ip.frag_off & bpf_htons(0x1fff))	/* later fragments carry no UDP header */
		return EVL_RX_SKIP;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4, &udp, sizeof(udp)) < 0)
		return EVL_RX_SKIP;
	dport = bpf_htons(udp.dest);
	return dport >= FIRST_PORT && dport <= LAST_PORT ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
