//! The engine worker as its own program (the `moxnet` binary also runs it as
//! `moxnet engine-worker`): serves one model on stdin and stdout, confined. See
//! `engine::worker`.

fn main() -> std::process::ExitCode {
    engine::worker::main(std::env::args().skip(1))
}
