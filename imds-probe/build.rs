//! Builds the kernel programs (imds-probe-ebpf) for the BPF target and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`.
//!
//! Without bpf-linker (or with AYA_BUILD_SKIP=1) an empty object is written instead, so that
//! `cargo check`, clippy and the pure unit tests work on any machine; such a binary refuses
//! to start capture and says why.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

const LINKER: &str = "/opt/imds-probe-toolchain/bin/bpf-linker";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-changed={LINKER}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("imds-probe");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let have_linker = PathBuf::from(LINKER).exists() || which("bpf-linker");
    if skip || !have_linker {
        println!(
            "cargo:warning=building without the eBPF object ({}); run `cargo xtask setup` for a working daemon",
            if skip {
                "AYA_BUILD_SKIP"
            } else {
                "bpf-linker not found"
            }
        );
        fs::write(&object, [])?;
        return Ok(());
    }
    let root_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../imds-probe-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "imds-probe-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
