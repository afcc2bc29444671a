//! The whole RX path: a real stack and port on a virtual link (sockets, packet sockets, in-band
//! handlers bound), frames from the input (format: `evlnet_core_fuzz::decode_rx_input`) run
//! through `rx::process`; then every queue is drained and reassembly cleared, and the RX
//! ledger must balance exactly and every pool be full again.
#![no_main]
use std::sync::OnceLock;

use evlnet_core_fuzz::{port_config, Rig};
use libfuzzer_sys::fuzz_target;

static RIG: OnceLock<Rig> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // tx_direct: replies leave on this thread, so the TX pool is full when the input is done;
    // an hour of ipfrag_time: no expiry by the RX thread while the ledger is read
    let rig = RIG.get_or_init(|| Rig::new(&port_config(64, 1024, 3_600_000_000_000, true)));
    if let Err(e) = rig.run_rx_input(data) {
        panic!("{e}");
    }
});
