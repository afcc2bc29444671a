/* Take every IPv4 frame into the oob stack; skip everything else (ARP, IPv6...) to the in-band
 * stage. */
#include "evl_filter.h"

SEC("tc")
int ipv4_only(struct __sk_buff *skb)
{
	return skb->protocol == bpf_htons(ETH_P_IP) ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
