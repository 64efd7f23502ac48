fn main() {
    std::process::exit(cryo::cli::main());
}
