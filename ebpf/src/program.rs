//! The `sk_lookup` program and its map. ztunnel loads one instance per pod, with the pod's
//! address in the read-only globals and the pod's listeners in the map.

use aya_ebpf::macros::{map, sk_lookup};
use aya_ebpf::maps::{HashMap, SockMap};
use aya_ebpf::programs::SkLookupContext;
use ebpf_common::{
    classify, BypassKey, Flow, PodEntry, AF_INET, BPF_F_NO_PREALLOC, MAX_BYPASS, SLOTS,
};

const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

/// The pod's address, network byte order (`ebpf_common::POD_IP4_GLOBAL`), set at load.
#[unsafe(no_mangle)]
static AMESH_POD_IP4: u32 = 0;
/// Source of kubelet probes, network byte order (`ebpf_common::PROBE_IP4_GLOBAL`).
#[unsafe(no_mangle)]
static AMESH_PROBE_IP4: u32 = 0;
/// Whether the DNS proxy takes the pod's DNS (`ebpf_common::DNS_GLOBAL`), set at load.
#[unsafe(no_mangle)]
static AMESH_DNS: u32 = 0;

/// The pod's listeners by slot (`ebpf_common::LISTENERS_MAP`). A socket leaves the map by
/// itself when it is closed, so a dead listener is never assigned.
#[map]
static AMESH_LISTENERS: SockMap = SockMap::with_max_entries(SLOTS, 0);

/// ztunnel's own open connections to the app from clients' addresses
/// (`ebpf_common::BYPASS_MAP`).
#[map]
static AMESH_BYPASS: HashMap<BypassKey, u8> =
    HashMap::with_max_entries(MAX_BYPASS, BPF_F_NO_PREALLOC);

#[sk_lookup]
pub fn amesh_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands the program a valid `bpf_sk_lookup` for its whole run.
    let l = unsafe { &*ctx.lookup };
    if l.family != AF_INET {
        return SK_PASS;
    }
    // SAFETY: plain reads of the globals; volatile so the compiler does not fold the zeros the
    // object was built with (the loader rewrites them).
    let pod = unsafe {
        PodEntry {
            ip4: core::ptr::read_volatile(&AMESH_POD_IP4),
            probe_ip4: core::ptr::read_volatile(&AMESH_PROBE_IP4),
            dns: core::ptr::read_volatile(&AMESH_DNS),
        }
    };
    let flow = Flow {
        protocol: l.protocol,
        local_ip4: l.local_ip4,
        local_port: l.local_port,
        remote_ip4: l.remote_ip4,
        remote_port: l.remote_port,
        ingress_ifindex: l.ingress_ifindex,
    };
    // SAFETY: the value is only tested for presence.
    let bypassed = |key: &BypassKey| unsafe { AMESH_BYPASS.get(key) }.is_some();
    let Some(slot) = classify(&flow, &pod, bypassed) else {
        return SK_PASS;
    };
    match AMESH_LISTENERS.redirect_sk_lookup(&ctx, slot, 0) {
        Ok(()) => SK_PASS,
        // A captured flow whose listener is gone (the pod is being released): refuse it
        // rather than let it reach the app or the network unproxied.
        Err(_) => SK_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could get here; there is no way to report it.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
