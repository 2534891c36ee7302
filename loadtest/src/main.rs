//! `loadtest`: see `loadtest --help` and loadtest/README.md.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    loadtest::cli::main()
}
