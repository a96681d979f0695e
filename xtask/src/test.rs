//! `cargo xtask test`: the whole test suite, exactly what CI runs. It installs what it
//! needs, builds the image, checks that the build is reproducible, builds the GPU image's
//! bring-up variant, then runs every crate's tests including the QEMU end-to-end tests.

use std::path::Path;

use anyhow::{Context, Result};

use crate::util::{Stage, cargo, free_disk, remove_scratch, run, say};
use crate::{deps, gpu, image, pins, repro};

/// Run the suite.
pub fn run_all(root: &Path, skip_repro: bool) -> Result<()> {
    let total = Stage::start("test suite");
    deps::ensure_packages(deps::BASE_PACKAGES)?;
    deps::ensure_packages(deps::LIBVIRT_PACKAGES)?;
    let settings = pins::image(root)?;
    deps::ensure_rust_target(root, &settings.target)?;
    let python = deps::ensure_venv(root)?;
    let models = deps::ensure_models(root, &python)?;

    if skip_repro {
        image::build(root, &image::Options::defaults(root))?;
    } else {
        // Builds out/ from this tree, a second time from a copy elsewhere (sharing the compiled
        // registry dependencies; `cargo xtask repro` shares nothing), and compares.
        repro::run(root, None, repro::Isolation::SharedDependencies)?;
        remove_scratch(&root.join(repro::SCRATCH), "the reproducibility check's copy")?;
    }
    // The build must also equal the values published for this source (image/expected.json),
    // which independent rebuilds on other machines are compared with.
    crate::expected::check(root, &root.join("out"))?;
    // The GPU image with the bring-up runtime (NVIDIA's modules built here, the runtime for
    // glibc without candle's CUDA kernels): tests/tests/gpu_image.rs boots it without a GPU.
    let gpu_image = gpu::image::build(root, &gpu::image::Options::defaults(root, gpu::image::Runtime::BringUp))?;

    say(format!("disk before the test build: {}", free_disk(root)));
    let stage = Stage::start("cargo test --workspace");
    run(cargo()
        .current_dir(root)
        .args(["test", "--workspace", "--locked", "--no-fail-fast", "--features", "chrysalis-runtime/dev-server"])
        .env("CHRYSALIS_OUT", root.join("out"))
        .env("CHRYSALIS_GPU_OUT", &gpu_image.out_dir)
        .env("CHRYSALIS_PYTHON", &python)
        .env("CHRYSALIS_MODELS", &models))
    .context("the test suite failed (see the failing tests above)")?;
    stage.done();
    let secs = total.done();
    say(format!("all tests passed in {:.1} min", secs / 60.0));
    Ok(())
}
