//! Compiles the AMX tile kernels (csrc/amx_gemm.c) for x86-64 Linux with a
//! C compiler that knows AMX. Anywhere else the crate builds without them
//! and the encoder multiplies with candle's matmul only.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(llmlab_amx)");
    println!("cargo::rerun-if-changed=csrc/amx_gemm.c");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return;
    }
    let mut build = cc::Build::new();
    build.file("csrc/amx_gemm.c").opt_level(3).warnings(true);
    match build.try_compile("llmlab_amx") {
        Ok(()) => println!("cargo::rustc-cfg=llmlab_amx"),
        Err(e) => println!("cargo::warning=AMX kernels not built (the encoder will use candle's matmul): {e}"),
    }
}
