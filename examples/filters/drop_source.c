/* Drop (and count) IPv4 from one source address (default 192.0.2.66); take the other IPv4
 * UDP traffic into the oob stack; leave the rest to the in-band stage. */
#include "evl_filter.h"

#ifndef SOURCE
#define SOURCE 0xC0000242	/* 192.0.2.66 */
#endif

SEC("tc")
int drop_source(struct __sk_buff *skb)
{
	struct iphdr ip;

	if (load_ipv4(skb, &ip) < 0)
		return EVL_RX_SKIP;
	if (ip.saddr == bpf_htonl(SOURCE))
		return EVL_RX_DROP;
	return ip.protocol == IPPROTO_UDP ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
