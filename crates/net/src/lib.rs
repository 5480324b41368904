//! moxnet networking.
//!
//! This crate will own the libp2p `Swarm` behind a `Client` (see `docs/ARCHITECTURE.md`). Its
//! first part is the decision logic of a multi-peer fetch, kept free of I/O so that it can be
//! tested deterministically over thousands of simulated steps:
//!
//! ```
//! use net::fetch::{Action, Event, Fetch, FetchConfig};
//!
//! // A blob of 100 chunk groups, none present yet, two providers.
//! let mut fetch: Fetch<&str> = Fetch::new(100, [0..100], FetchConfig::default(), 7);
//! let mut actions = fetch.handle(0, Event::PeerAdded("a"));
//! actions.extend(fetch.handle(0, Event::PeerAdded("b")));
//! // The scheduler asks both peers for ranges; the caller sends the requests and reports back.
//! let requests: Vec<_> = actions
//!     .iter()
//!     .filter_map(|a| match a {
//!         Action::Request { id, .. } => Some(*id),
//!         _ => None,
//!     })
//!     .collect();
//! assert!(!requests.is_empty());
//! for id in requests {
//!     let _ = fetch.handle(10, Event::Completed { id });
//! }
//! // …and so on, until the scheduler returns `Action::Complete`.
//! ```
//!
//! **Boundary:** `net` never touches the disk; `node` connects it to `store` through events.

pub mod fetch;
