//! The kernel's BTF as our offset reader parses it: a malformed or hostile file must give an
//! error, never a crash or a runaway. The lookups are those the daemon makes, and some of the
//! seed's (a blob holding every kind), so mutations of it reach the member walk.
#![no_main]

use imds_probe::capture::btf_offsets::Btf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        let _ = btf.member_offset("sock_common", "skc_daddr");
        let _ = btf.member_offset("task_struct", "tgid");
        let _ = btf.enum_value("bpf_func_id", "BPF_FUNC_loop");
        let _ = btf.member_offset("outer", "y");
        let _ = btf.member_offset("outer", "flags");
        let _ = btf.member_offset("old_bits", "hi");
        let _ = btf.enum_value("e", "");
        let _ = btf.enum_value("e64", "");
    }
});
