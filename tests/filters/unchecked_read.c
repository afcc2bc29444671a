/* Refused at load: reads the packet without comparing with data_end first. */
#include "evl_filter.h"

SEC("tc")
int unchecked_read(struct __sk_buff *skb)
{
	struct iphdr *ip = (void *)(long)skb->data + ETH_HLEN;

	return ip->protocol == IPPROTO_UDP ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
