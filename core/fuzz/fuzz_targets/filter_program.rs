//! The filter verifier and the VM on arbitrary programs and frames: the verifier never panics;
//! a program it accepts never faults at run time in the interpreter (rbpf's bounds checks never
//! fire), whatever the frame; and the JIT-compiled program, which has no run-time checks,
//! returns what the interpreter returns. Input: one byte `n`, then `n` instructions (8 bytes
//! each), then the frame.
#![no_main]
use _core::filter::verifier::{decode, verify};
use _core::filter::vm::VmFilter;
use _core::filter::Program;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let len = (n as usize).max(1) * 8;
    if rest.len() < len {
        return;
    }
    let (code, frame) = rest.split_at(len);
    let Ok(insns) = decode(code) else {
        return;
    };
    let Ok(facts) = verify(&insns) else {
        return;
    };
    let program = Program {
        section: "fuzz".into(),
        license: "GPL".into(),
        insns,
        facts,
    };
    if let Ok(vm) = VmFilter::new(program) {
        let r0 = vm.run_r0_interpreted(frame, 1, 0);
        assert!(r0.is_some(), "a verified program faulted");
        assert_eq!(vm.run_r0(frame, 1, 0), r0, "the JIT and the interpreter differ");
    }
});
