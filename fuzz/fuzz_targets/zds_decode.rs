//! The ZDS decoder (`ztunnel::zds::decode_request`): istio-cni's `WorkloadRequest` packets,
//! with the file descriptors that came with them.
//!
//! Input: byte 0 = how many descriptors arrive (0 to 3), byte 1 bit 0 = the kernel truncated
//! the packet, the rest = the packet. Checks the decoder's promises: only a complete `add`
//! with exactly one descriptor takes it, every other request refuses descriptors, and a
//! request never comes back without its uid.
#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use ztunnel::zds::{decode_request, Request, ZdsError};

fuzz_target!(|data: &[u8]| {
    let [fd_count, flags, packet @ ..] = data else {
        return;
    };
    let count = usize::from(fd_count % 4);
    let truncated = flags & 1 == 1;
    let fds: Vec<OwnedFd> = (0..count)
        .map(|_| File::open("/dev/null").expect("/dev/null opens").into())
        .collect();
    match decode_request(packet, truncated, fds) {
        Ok(Request::Add {
            uid,
            name,
            namespace,
            ..
        }) => {
            assert!(!truncated, "a truncated packet was accepted");
            assert_eq!(count, 1, "add accepted with {count} descriptors");
            assert!(!uid.is_empty() && !name.is_empty() && !namespace.is_empty());
        }
        Ok(Request::Keep { uid } | Request::Del { uid }) => {
            assert!(!truncated);
            assert_eq!(count, 0, "keep/del accepted with descriptors");
            assert!(!uid.is_empty());
        }
        Ok(Request::SnapshotSent) => {
            assert!(!truncated);
            assert_eq!(count, 0, "snapshot_sent accepted with descriptors");
        }
        Err(e) => {
            if truncated {
                assert!(matches!(e, ZdsError::TooLarge), "truncated but {e}");
            }
            // The message goes back to istio-cni in the Ack: it must render.
            let _ = e.to_string();
        }
    }
});
