//! The `sock_ops` and `sk_msg` programs and their maps.

use aya_ebpf::bindings::{
    BPF_F_INGRESS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
};
use aya_ebpf::helpers::bpf_get_netns_cookie;
use aya_ebpf::macros::{map, sk_msg, sock_ops};
use aya_ebpf::maps::{HashMap, LruHashMap, SockHash};
use aya_ebpf::programs::{SkMsgContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use ebpf_common::hops::{
    joins, port_from_remote, Established, HopKey, HopPod, MAX_HOPS, MAX_HOP_PODS,
};
use ebpf_common::AF_INET;

const SK_PASS: u32 = 1;

/// Both ends of every hop (`ebpf_common::hops::HOPS_MAP`). A socket leaves it by itself when
/// it is closed.
#[map]
static AMESH_HOPS: SockHash<HopKey> = SockHash::with_max_entries(MAX_HOPS, 0);

/// Captured pods by netns cookie (`ebpf_common::hops::HOP_PODS_MAP`), filled by ztunnel.
#[map]
static AMESH_HOP_PODS: HashMap<u64, HopPod> = HashMap::with_max_entries(MAX_HOP_PODS, 0);

/// Active hop ends whose passive end has not joined yet (`HopKey` of the active end). The
/// sock_ops program cannot look sockets up in the hash itself (it may not release the
/// reference a lookup takes), so it notes them here; an entry goes when the passive end joins,
/// or, if that never happens (the handshake failed after the SYN-ACK), when newer entries
/// push it out.
#[map]
static AMESH_HOP_ACTIVE: LruHashMap<HopKey, u8> = LruHashMap::with_max_entries(MAX_HOPS, 0);

/// Hop ends that sent bytes through TCP (`HopKey` of the sender) and must go on doing so. A
/// sender's first `sendmsg` can come before its peer has joined (the peer's callback runs
/// when the handshake's last ACK is processed): those bytes go by TCP to the peer's receive
/// queue, and redirecting later ones would put them in the peer's redirect queue, which its
/// reader drains first, out of order. So the first `sendmsg` decides for the connection's
/// life. Entries of closed connections are pushed out by newer ones.
#[map]
static AMESH_HOP_PLAIN: LruHashMap<HopKey, u8> = LruHashMap::with_max_entries(MAX_HOPS, 0);

/// Hop ends whose first `sendmsg` was redirected (`HopKey` of the sender): see
/// [`AMESH_HOP_PLAIN`].
#[map]
static AMESH_HOP_REDIRECTED: LruHashMap<HopKey, u8> = LruHashMap::with_max_entries(MAX_HOPS, 0);

#[sock_ops]
pub fn amesh_hop_sockops(ctx: SockOpsContext) -> u32 {
    let how = match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => Established::Active,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => Established::Passive,
        _ => return 0,
    };
    if ctx.family() != AF_INET {
        return 0;
    }
    // SAFETY: the kernel hands the program a valid context for this socket.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: a plain read of a map value, copied out at once.
    let Some(pod) = (unsafe { AMESH_HOP_PODS.get(&cookie) }).copied() else {
        return 0;
    };
    // SAFETY: `sk` is the socket of this callback or null, as the verifier knows; it is
    // checked before the read.
    let mark = unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() {
            return 0;
        }
        (*sk).mark
    };
    let mut key = HopKey {
        netns_cookie: cookie,
        local_ip4: ctx.local_ip4(),
        remote_ip4: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        remote_port: port_from_remote(ctx.remote_port()),
    };
    let peer = key.peer();
    // SAFETY: the value is only tested for presence.
    let peer_known = || unsafe { AMESH_HOP_ACTIVE.get(&peer) }.is_some();
    if !joins(how, &pod, mark, key.local_ip4, key.remote_ip4, peer_known) {
        return 0;
    }
    // SAFETY: `ops` is this callback's context, which the helper takes as the socket.
    // A full hash leaves the socket on plain TCP.
    let joined = AMESH_HOPS
        .update(&mut key, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST))
        .is_ok();
    match how {
        // Its passive end, established a moment later, looks for it here.
        Established::Active if joined => {
            let _ = AMESH_HOP_ACTIVE.insert(&key, &1, 0);
        }
        Established::Active => {}
        Established::Passive => {
            let _ = AMESH_HOP_ACTIVE.remove(&peer);
        }
    }
    0
}

#[sk_msg]
pub fn amesh_hop_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel hands the program a valid `sk_msg_md` for its whole run.
    let m = unsafe { &*ctx.msg };
    if m.family != AF_INET {
        return SK_PASS;
    }
    // SAFETY: as above; the helper reads the message's socket.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let me = HopKey {
        netns_cookie: cookie,
        local_ip4: m.local_ip4,
        remote_ip4: m.remote_ip4,
        local_port: m.local_port,
        remote_port: port_from_remote(m.remote_port),
    };
    // SAFETY: the values are only tested for presence.
    if unsafe { AMESH_HOP_PLAIN.get(&me) }.is_some() {
        return SK_PASS;
    }
    let decided = unsafe { AMESH_HOP_REDIRECTED.get(&me) }.is_some();
    let mut peer = me.peer();
    // Found: the bytes go to the peer's receive queue (SK_PASS with the redirect set).
    // Not found (the peer has not joined yet, or closed): SK_PASS without it, plain TCP,
    // and for good if this was the first send.
    let redirected =
        AMESH_HOPS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS);
    if !decided {
        let _ = if redirected {
            AMESH_HOP_REDIRECTED.insert(&me, &1, 0)
        } else {
            AMESH_HOP_PLAIN.insert(&me, &1, 0)
        };
    }
    SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could get here; there is no way to report it.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
