//! Frames from the host side of a tap port: arbitrary messages (virtio-net header + frame,
//! as a tap hands them over) read, classified and switched to a second tap port, with and
//! without offloads on the receiver. Never a panic, never a hang, never a message without
//! its header written to the receiver, never more frames counted than were handed over.
//!
//! Input: one byte (bit 0: the receiver takes offloads), then messages, each a 2-byte
//! little-endian length and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvnet_backend::fuzzing::run_tap;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut msgs = Vec::new();
    while rest.len() >= 2 && msgs.len() < 64 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        msgs.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    let Some(r) = run_tap(&msgs, flags & 1 != 0) else {
        return;
    };
    // Runts and oversized messages are counted drops, not frames.
    assert!(r.tx_frames <= r.offered as u64, "{r:?}");
});
