//! moxnet's end-to-end suite lives in `tests/e2e/`: one test binary whose modules drive real
//! `moxnet` processes (through the `testnet` crate) against real stores on disk.
