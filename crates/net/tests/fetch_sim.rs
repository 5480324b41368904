//! The fetch scheduler in a deterministic simulation: peers of different speeds, peers that send
//! bad bytes, stall, refuse, are busy, hold part of the blob, or leave; thousands of steps per
//! seed. Invariants are checked at every step, and the same seed must give the same trace.

// A one-element list of missing ranges is exactly what these tests mean.
#![allow(clippy::single_range_in_vec_init)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Range;

use net::fetch::{Action, Event, Failure, Fetch, FetchConfig, RequestId};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
enum Behaviour {
    /// Serves every request.
    Honest,
    /// Sends bad bytes for any range containing a group `g` with `g % modulus == residue`.
    Byzantine { modulus: u64, residue: u64 },
    /// Accepts requests and never answers.
    Silent,
    /// Refuses every `n`th request.
    Flaky { every: u64 },
    /// Honest until it disconnects at this time.
    Leaves { at: u64 },
    /// Receiving the blob too: holds `holds` until `full_at`, then all of it. Asked for groups
    /// it lacks, it says so and states what it holds.
    Partial { holds: Range<u64>, full_at: u64 },
    /// Answers busy to every `n`th request.
    Busy { every: u64 },
}

#[derive(Debug, Clone)]
struct SimPeer {
    /// Milliseconds per 16 KiB group.
    ms_per_group: u64,
    latency: u64,
    behaviour: Behaviour,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    Answer(RequestId),
    Leave(usize),
    Tick,
}

/// A request the simulated peer will answer: who, which groups, how it ends (a failure after
/// this many good groups), and what the answer states the peer holds (`Some(None)`: all).
type Answer = (
    usize,
    Range<u64>,
    Result<(), (Failure, u64)>,
    Option<Option<Vec<Range<u64>>>>,
);

#[derive(Debug)]
struct Report {
    completed: bool,
    finished_at: u64,
    trace: Vec<String>,
    banned: BTreeSet<usize>,
    delivered_bad: BTreeSet<usize>,
    /// Groups each peer delivered.
    groups_from: Vec<u64>,
    /// The most requests in flight at each peer at once.
    max_in_flight: Vec<usize>,
}

/// xorshift for the simulation's own choices.
struct SimRng(u64);
impl SimRng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn simulate(total: u64, missing: Vec<Range<u64>>, peers: &[SimPeer], seed: u64) -> Report {
    let config = FetchConfig {
        chunk_groups: 16,
        max_in_flight_per_peer: 3,
        min_timeout_ms: 2_000,
        timeout_factor: 4,
        max_failures: 3,
        ..FetchConfig::default()
    };
    let mut fetch: Fetch<usize> = Fetch::new(total, missing.clone(), config, seed);
    let mut present = vec![true; total as usize];
    for r in &missing {
        for g in r.clone() {
            present[g as usize] = false;
        }
    }
    let mut rng = SimRng(seed | 1);
    let mut queue: BinaryHeap<Reverse<(u64, u64, SimEvent)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<_>, at: u64, e: SimEvent| {
        seq += 1;
        q.push(Reverse((at, seq, e)));
    };
    // In flight: id -> (peer, groups, outcome decided when sent).
    let mut in_flight: BTreeMap<RequestId, Answer> = BTreeMap::new();
    let mut served: Vec<u64> = vec![0; peers.len()];
    let mut gone: BTreeSet<usize> = BTreeSet::new();
    let mut report = Report {
        completed: false,
        finished_at: 0,
        trace: Vec::new(),
        banned: BTreeSet::new(),
        delivered_bad: BTreeSet::new(),
        groups_from: vec![0; peers.len()],
        max_in_flight: vec![0; peers.len()],
    };
    // What each peer last stated it holds, and when.
    let mut stated: BTreeMap<usize, (Vec<Range<u64>>, u64)> = BTreeMap::new();
    let probe_after = FetchConfig::default().probe_after_ms;
    let mut answered: BTreeSet<usize> = BTreeSet::new();
    let mut actions = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        actions.extend(fetch.handle(0, Event::PeerAdded(i)));
        if let Behaviour::Leaves { at } = p.behaviour {
            push(&mut queue, at, SimEvent::Leave(i));
        }
    }
    push(&mut queue, 100, SimEvent::Tick);
    let mut now = 0;
    let mut steps = 0;
    loop {
        // Carry out actions.
        for action in actions.drain(..) {
            report.trace.push(format!("{now} {action:?}"));
            match action {
                Action::Request { id, peer, groups } => {
                    assert!(
                        !report.banned.contains(&peer),
                        "request to banned peer {peer}"
                    );
                    assert!(!gone.contains(&peer), "request to departed peer {peer}");
                    assert!(
                        groups.start < groups.end && groups.end <= total,
                        "bad range {groups:?}"
                    );
                    for g in groups.clone() {
                        assert!(!present[g as usize], "asked for present group {g}");
                    }
                    // A partial holder is asked outside what it stated only once that is old.
                    if let Some((have, at)) = stated.get(&peer) {
                        let inside = have
                            .iter()
                            .any(|h| h.start <= groups.start && groups.end <= h.end);
                        assert!(
                            inside || now - at >= probe_after,
                            "peer {peer} asked for {groups:?} outside {have:?} stated at {at} (now {now})"
                        );
                    }
                    let p = &peers[peer];
                    served[peer] += 1;
                    let len = groups.end - groups.start;
                    let mut states = Some(None);
                    let outcome = match p.behaviour.clone() {
                        Behaviour::Honest | Behaviour::Leaves { .. } => Some(Ok(())),
                        Behaviour::Busy { every } if served[peer].is_multiple_of(every) => {
                            states = None;
                            Some(Err((Failure::Busy, 0)))
                        }
                        Behaviour::Busy { .. } => Some(Ok(())),
                        Behaviour::Partial { holds, full_at } if now < full_at => {
                            states = Some(Some(vec![holds.clone()]));
                            if holds.start <= groups.start && groups.end <= holds.end {
                                Some(Ok(()))
                            } else {
                                Some(Err((Failure::Lacks, 0)))
                            }
                        }
                        Behaviour::Partial { .. } => Some(Ok(())),
                        Behaviour::Silent => None,
                        Behaviour::Flaky { every } if served[peer].is_multiple_of(every) => {
                            Some(Err((Failure::Unavailable, 0)))
                        }
                        Behaviour::Flaky { .. } => Some(Ok(())),
                        Behaviour::Byzantine { modulus, residue } => {
                            match groups.clone().find(|g| g % modulus == residue) {
                                Some(bad) => Some(Err((Failure::Misbehaved, bad - groups.start))),
                                None => Some(Ok(())),
                            }
                        }
                    };
                    if let Some(outcome) = outcome {
                        let sent = match outcome {
                            Ok(()) => len,
                            Err((_, good)) => good,
                        };
                        let jitter = rng.below(p.latency + 1);
                        push(
                            &mut queue,
                            now + p.latency + jitter + sent.max(1) * p.ms_per_group,
                            SimEvent::Answer(id),
                        );
                        in_flight.insert(id, (peer, groups, outcome, states));
                        // Once the fetch knows what the peer holds.
                        if answered.contains(&peer) {
                            let at_peer = in_flight.values().filter(|a| a.0 == peer).count();
                            report.max_in_flight[peer] = report.max_in_flight[peer].max(at_peer);
                        }
                    }
                }
                Action::Cancel { id, .. } => {
                    in_flight.remove(&id);
                }
                Action::Ban { peer } => {
                    assert!(
                        matches!(peers[peer].behaviour, Behaviour::Byzantine { .. }),
                        "honest peer {peer} banned"
                    );
                    report.banned.insert(peer);
                }
                Action::Complete => {
                    assert!(present.iter().all(|p| *p), "complete with groups missing");
                    report.completed = true;
                    report.finished_at = now;
                }
                Action::NeedProviders => {}
            }
        }
        if report.completed {
            // Nothing may still be in flight once complete.
            assert_eq!(
                fetch.in_flight().count(),
                0,
                "requests left after completion"
            );
            return report;
        }
        let Some(Reverse((at, _, event))) = queue.pop() else {
            return report; // nothing more can happen: stuck
        };
        now = at;
        steps += 1;
        assert!(
            steps < 200_000,
            "simulation does not terminate (seed {seed})"
        );
        let event = match event {
            SimEvent::Tick => {
                if now < 600_000 {
                    push(&mut queue, now + 100, SimEvent::Tick);
                }
                Event::Tick
            }
            SimEvent::Leave(peer) => {
                gone.insert(peer);
                in_flight.retain(|_, (p, _, _, _)| *p != peer);
                Event::PeerRemoved(peer)
            }
            SimEvent::Answer(id) => {
                let Some((peer, groups, outcome, states)) = in_flight.remove(&id) else {
                    continue; // cancelled
                };
                answered.insert(peer);
                if let Some(have) = states {
                    match &have {
                        Some(h) => stated.insert(peer, (h.clone(), now)),
                        None => stated.remove(&peer),
                    };
                    actions.extend(fetch.handle(now, Event::Has { peer, have }));
                }
                match outcome {
                    Ok(()) => {
                        for g in groups.clone() {
                            present[g as usize] = true;
                        }
                        report.groups_from[peer] += groups.end - groups.start;
                        Event::Completed { id }
                    }
                    Err((failure, good)) => {
                        if failure == Failure::Misbehaved {
                            report.delivered_bad.insert(peer);
                        }
                        let verified = groups.start..groups.start + good;
                        for g in verified.clone() {
                            present[g as usize] = true;
                        }
                        Event::Failed {
                            id,
                            failure,
                            verified: vec![verified],
                        }
                    }
                }
            }
        };
        actions.extend(fetch.handle(now, event));
    }
}

fn honest(ms_per_group: u64) -> SimPeer {
    SimPeer {
        ms_per_group,
        latency: 5,
        behaviour: Behaviour::Honest,
    }
}

/// A fast peer that accepts requests and never answers.
fn silent() -> SimPeer {
    SimPeer {
        ms_per_group: 1,
        latency: 1,
        behaviour: Behaviour::Silent,
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Honest),
        1 => (2u64..40, 0u64..40).prop_map(|(m, r)| Behaviour::Byzantine { modulus: m, residue: r % m }),
        1 => Just(Behaviour::Silent),
        1 => (2u64..6).prop_map(|every| Behaviour::Flaky { every }),
        1 => (0u64..5_000).prop_map(|at| Behaviour::Leaves { at }),
        2 => (0u64..400, 1u64..200, 0u64..20_000).prop_map(|(start, len, full_at)| {
            Behaviour::Partial { holds: start..start + len, full_at }
        }),
        1 => (2u64..5).prop_map(|every| Behaviour::Busy { every }),
    ]
}

fn peer() -> impl Strategy<Value = SimPeer> {
    (1u64..20, 0u64..50, behaviour()).prop_map(|(ms_per_group, latency, behaviour)| SimPeer {
        ms_per_group,
        latency,
        behaviour,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// With at least one honest peer that stays, every fetch completes; every peer that sent bad
    /// bytes is banned; honest peers never are; nothing present is requested again.
    #[test]
    fn completes_whenever_one_honest_peer_stays(
        mut peers in proptest::collection::vec(peer(), 0..6),
        total in 1u64..400,
        holes in proptest::collection::vec((0u64..400, 1u64..80), 0..4),
        seed in any::<u64>(),
    ) {
        peers.push(honest(1 + seed % 15));
        let missing: Vec<Range<u64>> = if holes.is_empty() {
            vec![0..total]
        } else {
            holes.iter().map(|(s, l)| (s % total)..((s % total) + l).min(total)).collect()
        };
        let report = simulate(total, missing, &peers, seed);
        prop_assert!(report.completed, "did not complete: {:?}", report.trace.last());
        for peer in &report.delivered_bad {
            prop_assert!(report.banned.contains(peer), "byzantine peer {} not banned", peer);
        }
    }

    /// Without any usable peer the fetch reports it needs providers instead of hanging.
    #[test]
    fn reports_need_providers_when_every_peer_is_bad(
        modulus in 1u64..4,
        seed in any::<u64>(),
    ) {
        let peers = vec![
            SimPeer { ms_per_group: 1, latency: 1, behaviour: Behaviour::Byzantine { modulus, residue: 0 } },
            SimPeer { ms_per_group: 1, latency: 1, behaviour: Behaviour::Silent },
        ];
        let report = simulate(100, vec![0..100], &peers, seed);
        prop_assert!(!report.completed);
        prop_assert!(report.trace.iter().any(|t| t.contains("NeedProviders")), "{:?}", report.trace);
    }

    /// The same seed gives the same trace.
    #[test]
    fn deterministic_for_a_seed(peers in proptest::collection::vec(peer(), 1..5), seed in any::<u64>()) {
        let mut peers = peers;
        peers.push(honest(3));
        let a = simulate(200, vec![0..200], &peers, seed);
        let b = simulate(200, vec![0..200], &peers, seed);
        prop_assert_eq!(a.trace, b.trace);
    }
}

#[test]
fn three_providers_are_faster_than_one() {
    let one = simulate(640, vec![0..640], &[honest(4)], 1);
    let three = simulate(640, vec![0..640], &[honest(4), honest(4), honest(4)], 1);
    assert!(one.completed && three.completed);
    assert!(
        three.finished_at * 2 < one.finished_at,
        "3 providers took {} ms, 1 took {} ms",
        three.finished_at,
        one.finished_at
    );
}

#[test]
fn a_slow_peer_does_not_hold_up_the_end() {
    let fast_alone = simulate(320, vec![0..320], &[honest(2)], 2);
    let with_slow = simulate(320, vec![0..320], &[honest(2), honest(200)], 2);
    assert!(fast_alone.completed && with_slow.completed);
    assert!(
        with_slow.finished_at <= fast_alone.finished_at * 13 / 10,
        "with a slow peer: {} ms, fast peer alone: {} ms",
        with_slow.finished_at,
        fast_alone.finished_at
    );
}

#[test]
fn byzantine_peer_is_banned_and_honest_peers_finish() {
    let peers = [
        SimPeer {
            ms_per_group: 1,
            latency: 1,
            behaviour: Behaviour::Byzantine {
                modulus: 7,
                residue: 3,
            },
        },
        honest(3),
        honest(5),
    ];
    let report = simulate(300, vec![0..300], &peers, 3);
    assert!(report.completed);
    assert_eq!(report.banned, BTreeSet::from([0]));
}

#[test]
fn a_silent_peer_times_out_and_its_work_moves() {
    let peers = [
        SimPeer {
            ms_per_group: 1,
            latency: 1,
            behaviour: Behaviour::Silent,
        },
        honest(3),
    ];
    let report = simulate(100, vec![0..100], &peers, 4);
    assert!(report.completed, "{:?}", report.trace);
    assert!(report.trace.iter().any(|t| t.contains("Cancel")));
}

#[test]
fn resumes_only_the_missing_groups() {
    // Groups 0..50 and 80..100 are already present.
    let report = simulate(100, vec![50..80], &[honest(1)], 5);
    assert!(report.completed);
    let requested: Vec<&String> = report
        .trace
        .iter()
        .filter(|t| t.contains("Request"))
        .collect();
    assert!(
        requested.iter().all(|t| !t.contains("groups: 0..")),
        "{requested:?}"
    );
}

/// Two peers still receiving the blob hold one half each; a seed has all of it. The seed gets
/// one request at a time and is asked for little: the partial holders serve what they have.
#[test]
fn partial_holders_serve_what_they_hold_and_spare_the_seed() {
    let partial = |holds: Range<u64>| SimPeer {
        ms_per_group: 4,
        latency: 5,
        behaviour: Behaviour::Partial {
            holds,
            full_at: u64::MAX,
        },
    };
    let peers = [honest(4), partial(0..320), partial(320..640)];
    for seed in 0..20 {
        let report = simulate(640, vec![0..640], &peers, seed);
        assert!(report.completed, "seed {seed}");
        assert!(
            report.max_in_flight[0] <= 1,
            "seed {seed}: the seed had {} in flight",
            report.max_in_flight[0]
        );
        assert!(
            report.groups_from[0] * 5 <= 640,
            "seed {seed}: the seed sent {} of 640 groups ({:?})",
            report.groups_from[0],
            report.groups_from
        );
    }
    // Alone, a seed is used at full depth.
    let alone = simulate(640, vec![0..640], &[honest(4)], 1);
    assert!(alone.completed && alone.max_in_flight[0] > 1);
}

/// A partial holder that gets the rest later is probed again and serves it; one that is busy
/// now and then is not dropped for it.
#[test]
fn a_growing_holder_is_probed_and_a_busy_one_kept() {
    let peers = [
        SimPeer {
            ms_per_group: 2,
            latency: 5,
            behaviour: Behaviour::Partial {
                holds: 0..10,
                full_at: 3_000,
            },
        },
        SimPeer {
            ms_per_group: 2,
            latency: 5,
            behaviour: Behaviour::Busy { every: 2 },
        },
    ];
    let report = simulate(2000, vec![0..2000], &peers, 7);
    assert!(report.completed, "{:?}", report.trace.last());
    assert!(
        report.groups_from[0] > 100,
        "the holder served {} groups once it had them",
        report.groups_from[0]
    );
    assert!(report.groups_from[1] > 100);
    assert!(report.banned.is_empty());
}

/// Fetches of one blob that start at once, seeded differently, start on different parts.
#[test]
fn fetchers_start_on_different_parts() {
    let first = |seed: u64| {
        let mut fetch: Fetch<usize> = Fetch::new(4096, [0..4096], FetchConfig::default(), seed);
        let actions = fetch.handle(0, Event::PeerAdded(0));
        actions
            .into_iter()
            .find_map(|a| match a {
                Action::Request { groups, .. } => Some(groups.start),
                _ => None,
            })
            .expect("a request")
    };
    let starts: BTreeSet<u64> = (0..16).map(first).collect();
    assert!(starts.len() >= 10, "16 fetchers started at only {starts:?}");
}

/// A peer that states it holds everything but answers that it lacks whatever it is asked for is
/// dropped after a few tries, and the seed completes the fetch.
#[test]
fn a_peer_claiming_groups_it_never_sends_is_dropped() {
    let mut fetch: Fetch<usize> = Fetch::new(4096, [0..4096], FetchConfig::default(), 5);
    let mut actions = fetch.handle(0, Event::PeerAdded(0));
    let liar = 1;
    let all = || Some(vec![0..4096]);
    let mut now = 0;
    let mut asked_liar = 0;
    let mut done = false;
    let mut steps = 0;
    while !done {
        steps += 1;
        assert!(steps < 10_000, "no end");
        now += 10;
        let mut next = Vec::new();
        if steps == 1 {
            next.extend(fetch.handle(
                now,
                Event::Has {
                    peer: liar,
                    have: all(),
                },
            ));
            next.extend(fetch.handle(now, Event::Tick));
        }
        for a in actions.drain(..) {
            match a {
                Action::Request { id, peer, .. } if peer == liar => {
                    asked_liar += 1;
                    next.extend(fetch.handle(now, Event::Has { peer, have: all() }));
                    next.extend(fetch.handle(
                        now,
                        Event::Failed {
                            id,
                            failure: Failure::Lacks,
                            verified: vec![],
                        },
                    ));
                }
                Action::Request { id, .. } => {
                    next.extend(fetch.handle(now, Event::Completed { id }));
                }
                Action::Complete => done = true,
                _ => {}
            }
        }
        if next.is_empty() && !done {
            next = fetch.handle(now, Event::Tick);
        }
        actions = next;
    }
    assert!(
        asked_liar <= FetchConfig::default().max_failures as usize,
        "the liar was asked {asked_liar} times"
    );
}

#[test]
fn silent_peers_do_not_hold_up_a_fetch_a_seed_can_finish() {
    // The churn scenario: a fresh node starts on the live seed and on two announcers that left
    // (their dials hang); the seed races their requests once it is idle.
    let silent = silent();
    let alone = simulate(1024, vec![0..1024], &[honest(1)], 5);
    for seed in 0..20 {
        let with_silent = simulate(
            1024,
            vec![0..1024],
            &[silent.clone(), silent.clone(), honest(1)],
            seed,
        );
        assert!(with_silent.completed);
        assert!(
            with_silent.finished_at <= alone.finished_at * 13 / 10,
            "seed {seed}: with two silent peers {} ms, the seed alone {} ms",
            with_silent.finished_at,
            alone.finished_at
        );
    }
}

#[test]
fn a_known_seed_races_peers_of_unknown_holdings_from_the_start() {
    // A small blob (one range): the fetch starts on the peer that proved it holds the whole
    // blob and on two announcers that left (their dials hang). Whoever gets the range, the
    // seed must have a request for it at once, not after the others time out.
    for seed in 0..32 {
        let mut fetch: Fetch<usize> = Fetch::new(1, vec![0..1], FetchConfig::default(), seed);
        let mut actions = fetch.handle(
            0,
            Event::Has {
                peer: 2,
                have: None,
            },
        );
        actions.extend(fetch.handle(0, Event::PeerAdded(0)));
        actions.extend(fetch.handle(0, Event::PeerAdded(1)));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Request { peer: 2, .. })),
            "seed {seed}: the seed was not asked: {actions:?}"
        );
    }
}

#[test]
fn the_last_range_is_raced_by_every_idle_peer_when_none_is_known() {
    // Endgame: nothing is known of anyone's holdings yet and two of three peers never answer;
    // the range must not wait for their timeouts whichever peers got it first.
    let silent = silent();
    for seed in 0..32 {
        let report = simulate(
            1,
            vec![0..1],
            &[silent.clone(), silent.clone(), honest(1)],
            seed,
        );
        assert!(report.completed);
        assert!(
            report.finished_at < 100,
            "seed {seed}: finished at {} ms",
            report.finished_at
        );
    }
}

#[test]
fn streams_of_a_live_seed_dropped_together_count_once() {
    // The churn scenario under load: the seed's accept queue drops a burst of pipelined
    // streams (each fails at once), while the only other peer left long ago and its dial
    // hangs. Four failures at once are one incident: the seed stays in the fetch and is asked
    // again at once, rather than the fetch waiting on the departed peer's dial timeout.
    for seed in 0..32 {
        let mut fetch: Fetch<usize> = Fetch::new(1024, vec![0..1024], FetchConfig::default(), seed);
        let mut now = 0;
        let mut actions = fetch.handle(
            now,
            Event::Has {
                peer: 0,
                have: None,
            },
        );
        actions.extend(fetch.handle(now, Event::PeerAdded(1)));
        // The seed answers quickly until it has the most requests in flight.
        let max = FetchConfig::default().max_in_flight_per_peer;
        loop {
            let seeds: Vec<RequestId> = fetch
                .in_flight()
                .filter(|(_, p, _)| **p == 0)
                .map(|(id, _, _)| id)
                .collect();
            if seeds.len() >= max {
                break;
            }
            now += 5;
            actions = fetch.handle(now, Event::Completed { id: seeds[0] });
        }
        drop(actions);
        // Every stream in flight to the seed fails at once.
        now += 1;
        let dropped: Vec<RequestId> = fetch
            .in_flight()
            .filter(|(_, p, _)| **p == 0)
            .map(|(id, _, _)| id)
            .collect();
        let mut asked_again = false;
        for id in dropped {
            let out = fetch.handle(
                now,
                Event::Failed {
                    id,
                    failure: Failure::Unavailable,
                    verified: Vec::new(),
                },
            );
            asked_again |= out
                .iter()
                .any(|a| matches!(a, Action::Request { peer: 0, .. }));
        }
        assert!(asked_again, "seed {seed}: the seed was not asked again");
        assert_eq!(fetch.peer_count(), 2, "seed {seed}: the seed was dropped");
        // Failing request after request still drops it.
        for _ in 0..FetchConfig::default().max_failures {
            let Some(id) = fetch
                .in_flight()
                .find(|(_, p, _)| **p == 0)
                .map(|(id, _, _)| id)
            else {
                break;
            };
            now += 1;
            fetch.handle(
                now,
                Event::Failed {
                    id,
                    failure: Failure::Unavailable,
                    verified: Vec::new(),
                },
            );
        }
        assert_eq!(
            fetch.peer_count(),
            1,
            "seed {seed}: a failing seed was kept"
        );
    }
}
