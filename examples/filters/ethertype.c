/* Accept frames of one EtherType (default 0x88B5, IEEE's "local experimental"), for packet
 * sockets listening to it; leave everything else to the in-band stage. */
#include "evl_filter.h"

#ifndef ETHERTYPE
#define ETHERTYPE 0x88B5
#endif

SEC("tc")
int accept_ethertype(struct __sk_buff *skb)
{
	return skb->protocol == bpf_htons(ETHERTYPE) ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
