//! Empty library target: lets imds-probe list this crate as a build-dependency, so cargo
//! rebuilds the kernel object whenever the programs change.
#![no_std]
