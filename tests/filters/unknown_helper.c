/* Refused at load: calls a helper filters do not get (bpf_ktime_get_ns). */
#include "evl_filter.h"

static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;

SEC("tc")
int unknown_helper(struct __sk_buff *skb)
{
	return bpf_ktime_get_ns() & 1 ? EVL_RX_ACCEPT : EVL_RX_SKIP;
}
