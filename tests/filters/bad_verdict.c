/* Loads, but returns no verdict of EVL's: every frame is dropped and counted as invalid. */
#include "evl_filter.h"

SEC("tc")
int bad_verdict(struct __sk_buff *skb)
{
	return 7;
}
