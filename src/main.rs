fn main() -> std::process::ExitCode {
    vsm::cli::main()
}
