//! amesh's in-pod hop acceleration (ebpf capture with `AMESH_SOCKMAP=on`): a `sock_ops`
//! program that ztunnel attaches to the cgroup v2 root puts both ends of each app ⇄ ztunnel
//! loopback connection of a captured pod in a socket hash, and an `sk_msg` program on that
//! hash hands every `sendmsg` on one end to the other end's receive queue, so those bytes skip
//! the TCP stack. Which sockets join is [`ebpf_common::hops::joins`].
//!
//! Built for `bpfel-unknown-none` by ztunnel's build script, as its own object (ztunnel loads
//! it once per node, not once per pod like the `sk_lookup` program). On the host this is an
//! empty binary.

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
