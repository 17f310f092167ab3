//! Gives libmsh.so a soname, so that programs linked against an installed
//! `libmsh.so` (a symlink) record `libmsh.so.<major>` and keep working across
//! compatible upgrades, as any C library does.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmsh.so.{major}");
}
