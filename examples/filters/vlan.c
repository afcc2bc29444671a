/* Let the VLAN rule decide for tagged frames (EVL_RX_VLAN: IPv4 tagged with a VID of the
 * stack's VLAN set is accepted, the rest skipped); untagged frames go to the in-band stage. */
#include "evl_filter.h"

SEC("tc")
int vlan_rule(struct __sk_buff *skb)
{
	return skb->vlan_present ? EVL_RX_VLAN : EVL_RX_SKIP;
}
