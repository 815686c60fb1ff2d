//! amesh's kernel-side capture: an `sk_lookup` program that ztunnel loads and attaches for
//! each captured pod's network namespace. For every new flow the kernel is about to deliver in
//! the pod, it picks ztunnel's listener for it (see [`ebpf_common::classify`]) from a socket
//! map that ztunnel fills, so the accepted socket's local address is the flow's original
//! destination.
//!
//! Built for `bpfel-unknown-none` by ztunnel's build script. On the host (`cargo test
//! --workspace`, clippy) this is an empty binary.

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
