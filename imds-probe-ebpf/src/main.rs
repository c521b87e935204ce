//! imds-probe's kernel programs. One object holds every backend's programs; user space picks
//! which to attach, so there is one build and no per-kernel variants.
#![no_std]
#![no_main]

mod conn;
mod diagnostics;
mod emit;
mod kernel;
mod maps;
mod process;
mod send_hook;
mod sk_msg;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL: bpf_probe_read_kernel is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
