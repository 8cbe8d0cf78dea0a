fn main() {
    std::process::exit(ezthrottle::cli::main());
}
