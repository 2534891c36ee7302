fn main() {
    eprintln!("loadtest: not built yet (issue 5)");
    std::process::exit(2);
}
