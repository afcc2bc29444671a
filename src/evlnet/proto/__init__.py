"""Protocol layers of the oob stack (RX input and TX output), and the protocol registry."""
