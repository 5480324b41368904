//! End-to-end tests: real `moxnet` processes, real stores on disk. Modules are named after the
//! journey or failure they cover.

mod access;
mod attack;
mod compute;
mod crash;
mod credits;
mod disk_full;
mod inference;
mod journey;
mod llm;
mod matrix;
mod network;
mod ui;
mod votes;
