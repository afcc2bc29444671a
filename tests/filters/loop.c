/* Refused at load: a loop bounded only by the packet's length. */
#include "evl_filter.h"

SEC("tc")
int loop(struct __sk_buff *skb)
{
	volatile __u32 n = 0;

	for (__u32 i = 0; i < skb->len; i++)
		n += 1;
	return n & 1;
}
