//! Reading kernel structs at offsets user space found in BTF (no CO-RE in this toolchain).

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

/// Declares `u32` globals that the loader fills in before the programs load.
#[macro_export]
macro_rules! offset_globals {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            static $name: u32 = 0;
        )*
    };
}

#[inline(always)]
pub fn global(value: &'static u32) -> u32 {
    // SAFETY: a plain read of a global; volatile so the loader's value is used, not the
    // compile-time zero.
    unsafe { core::ptr::read_volatile(value) }
}

/// Reads a `T` at `base + offset` in kernel memory; zero on failure.
#[inline(always)]
pub fn read<T: Default>(base: *const u8, offset: u32) -> T {
    let mut value = T::default();
    // SAFETY: bpf_probe_read_kernel checks the source address itself and fails cleanly.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut value).cast(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(offset as usize).cast(),
        )
    };
    value
}

#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> *const u8 {
    read::<u64>(base, offset) as *const u8
}
