//! The ledger: one [`Account`] per peer, the calls in flight, and the free allowance. Pure: no
//! I/O and no clock (time is passed in); [`crate::LedgerStore`] keeps it on disk.
//!
//! **Invariants** (checked by the property tests in `tests/ledger.rs`):
//! - A peer's exposure (what it owes net, plus the worst case of its calls in flight) never
//!   passes the disconnect threshold because of a call this ledger admitted: [`Ledger::admit`]
//!   reserves a call's worst case before it runs.
//! - Calls from unknown peers (no cheque from them, no calls made to them) are covered by one
//!   shared allowance: together they never get more than the allowance's cap plus its refill.
//! - What a peer has paid only grows: a cheque is accepted only with a higher `seq`, the same
//!   epoch, totals that do not go down, and a call total no higher than the receipts held.

use std::collections::{BTreeMap, HashMap};

use protocol::credits::{Cheque, CreditTerms, Royalty, VerifiedReceipt, royalty_of};
use protocol::{BlobHash, NodeId, Signed};

/// The newest cheque of one direction, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChequeState {
    /// Its epoch.
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its call total.
    pub calls: u64,
    /// Its royalty total.
    pub royalties: u64,
    /// The signed envelope.
    pub envelope: Vec<u8>,
}

impl ChequeState {
    /// The state of a signed cheque.
    pub fn of(cheque: &Signed<Cheque>) -> ChequeState {
        let c = cheque.body();
        ChequeState {
            epoch: c.epoch,
            seq: c.seq,
            calls: c.calls,
            royalties: c.royalties,
            envelope: cheque.to_bytes(),
        }
    }
}

/// What this node and one peer owe each other, from the receipts and cheques this node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Cost of the calls this node served the peer (receipts where the peer is the caller).
    pub served: u64,
    /// How many.
    pub served_calls: u64,
    /// Cost of the calls the peer served this node.
    pub used: u64,
    /// How many.
    pub used_calls: u64,
    /// Of `served`, what the free allowance forgave (calls the peer made while unknown).
    pub forgiven: u64,
    /// Royalties this node owes the peer (as payee of models this node served).
    pub royalties_owed: u64,
    /// Calls they came from.
    pub royalty_calls: u64,
    /// The newest cheque from the peer.
    pub cheque_in: Option<ChequeState>,
    /// The newest cheque this node signed to the peer.
    pub cheque_out: Option<ChequeState>,
    /// The newest receipt of a call this node served the peer.
    pub last_served: Option<BlobHash>,
    /// The newest receipt of a call the peer served this node.
    pub last_used: Option<BlobHash>,
}

impl Account {
    /// What the peer has paid for calls (its newest cheque's total).
    pub fn paid_in(&self) -> u64 {
        self.cheque_in.as_ref().map_or(0, |c| c.calls)
    }

    /// What this node has paid the peer for calls.
    pub fn paid_out(&self) -> u64 {
        self.cheque_out.as_ref().map_or(0, |c| c.calls)
    }

    /// Royalties the peer has paid this node.
    pub fn royalties_in(&self) -> u64 {
        self.cheque_in.as_ref().map_or(0, |c| c.royalties)
    }

    /// Royalties this node has paid the peer.
    pub fn royalties_paid(&self) -> u64 {
        self.cheque_out.as_ref().map_or(0, |c| c.royalties)
    }

    /// What the peer still owes for calls, before netting.
    pub fn owed_to_me(&self) -> u64 {
        self.served
            .saturating_sub(self.forgiven.saturating_add(self.paid_in()))
    }

    /// What this node still owes the peer for calls, before netting.
    pub fn owed_by_me(&self) -> u64 {
        self.used.saturating_sub(self.paid_out())
    }

    /// The balance after netting: positive when the peer owes this node.
    pub fn net(&self) -> i128 {
        self.owed_to_me() as i128 - self.owed_by_me() as i128
    }

    /// What the peer owes this node after netting (0 if this node owes it).
    pub fn debt(&self) -> u64 {
        u64::try_from(self.net().max(0)).unwrap_or(u64::MAX)
    }

    /// Royalties this node owes the peer and has not paid.
    pub fn royalties_due(&self) -> u64 {
        self.royalties_owed.saturating_sub(self.royalties_paid())
    }

    /// Whether the peer is known: it has sent this node a cheque, or served it. Unknown peers'
    /// calls are covered by the shared free allowance only.
    pub fn known(&self) -> bool {
        self.cheque_in.is_some() || self.used_calls > 0
    }
}

/// Why a call is refused for payment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer owes too much: its debt plus its calls in flight plus this one would pass the
    /// disconnect threshold.
    #[error(
        "payment required: you owe {owed} credits with {in_flight} reserved for calls in flight; this call may cost {worst}, and this provider extends at most {limit}"
    )]
    OverLimit {
        /// Its debt after netting.
        owed: u64,
        /// Reserved for its calls in flight.
        in_flight: u64,
        /// This call's worst case.
        worst: u64,
        /// The disconnect threshold.
        limit: u64,
    },
    /// An unknown peer, and the shared free allowance cannot cover the call.
    #[error(
        "payment required: the free allowance for callers without a ledger here has {left} credits left and this call may cost {worst}; open a ledger (send a cheque) to call on credit"
    )]
    NoAllowance {
        /// What the allowance can still cover.
        left: u64,
        /// This call's worst case.
        worst: u64,
    },
}

/// Why a cheque is refused. A refused cheque changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChequeError {
    /// Addressed to another node.
    #[error("the cheque pays {payee:?}, not this node")]
    WrongPayee {
        /// Whom it names.
        payee: NodeId,
    },
    /// Signed by this node itself.
    #[error("a cheque from this node to itself")]
    ToSelf,
    /// Another epoch than the payer's earlier cheques here.
    #[error("the cheque is of epoch {found}; this ledger is of epoch {expected}")]
    WrongEpoch {
        /// The ledger's.
        expected: u64,
        /// The cheque's.
        found: u64,
    },
    /// A later cheque with a lower total.
    #[error("the cheque's totals go down (calls {calls}, royalties {royalties})")]
    Decreasing {
        /// Its call total.
        calls: u64,
        /// Its royalty total.
        royalties: u64,
    },
    /// More than the receipts this node holds for the payer's calls.
    #[error("the cheque pays {calls} for calls; the receipts here total {held}")]
    OverReceipts {
        /// Its call total.
        calls: u64,
        /// What the receipts here total.
        held: u64,
    },
    /// It names a receipt this node does not hold (or none while it pays for calls).
    #[error("the cheque covers a receipt this node does not hold")]
    UnknownReceipt,
}

/// What accepting a cheque did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// It is newer: paid for calls and in royalties went up by these.
    New {
        /// More paid for calls.
        calls: u64,
        /// More paid in royalties.
        royalties: u64,
    },
    /// It is the one held, or older: nothing changed.
    Stale,
}

/// A call's worst case, reserved by [`Ledger::admit`]; give it back with [`Ledger::settle`] or
/// [`Ledger::release`], exactly once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation is settled or released"]
pub struct Reservation {
    /// The caller.
    pub peer: NodeId,
    /// The worst case reserved.
    pub worst: u64,
    /// Reserved from the free allowance (an unknown caller).
    pub free: bool,
}

/// The shared free allowance for unknown peers: a bucket of credits that refills at
/// `free_per_s` up to `free_cap`, on this node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Credits it can still forgive.
    pub tokens: u64,
    /// When `tokens` was last refilled, ms.
    pub at_ms: u64,
    /// Reserved for unknown peers' calls in flight.
    pub reserved: u64,
}

impl Allowance {
    /// A full allowance at `now_ms`.
    pub fn full(terms: &CreditTerms, now_ms: u64) -> Allowance {
        Allowance {
            tokens: terms.free_cap,
            at_ms: now_ms,
            reserved: 0,
        }
    }

    fn refill(&mut self, terms: &CreditTerms, now_ms: u64) {
        // A clock that went back refills nothing (and never takes anything away).
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let more = (elapsed as u128 * terms.free_per_s as u128 / 1000) as u64;
        if more > 0 || now_ms < self.at_ms {
            self.tokens = self.tokens.saturating_add(more).min(terms.free_cap);
            self.at_ms = now_ms;
        }
    }

    /// What it can still cover.
    pub fn left(&self) -> u64 {
        self.tokens.saturating_sub(self.reserved)
    }
}

/// What a settled call changed: the accounts to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The caller's account after the call.
    pub caller: Account,
    /// The royalty payee and its account, when the model names one (other than this node).
    pub royalty: Option<(NodeId, Account, u64)>,
}

/// Whether this node should pay a peer now, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayWhen {
    /// Only past half the payee's payment threshold (the normal case, with each call).
    Due,
    /// Now, everything owed (the payee refused a call for payment).
    Now,
    /// As [`PayWhen::Due`], but never only to open a ledger (when settling with a peer this
    /// node is not calling).
    Settling,
}

/// The ledger of one node: see the module docs.
#[derive(Debug, Clone)]
pub struct Ledger {
    me: NodeId,
    terms: CreditTerms,
    accounts: BTreeMap<NodeId, Account>,
    reserved: HashMap<NodeId, u64>,
    allowance: Allowance,
}

impl Ledger {
    /// A ledger for node `me`, extending credit on `terms`, with the accounts and allowance
    /// kept (nothing is in flight after a start).
    pub fn new(
        me: NodeId,
        terms: CreditTerms,
        accounts: BTreeMap<NodeId, Account>,
        allowance: Allowance,
    ) -> Ledger {
        Ledger {
            me,
            terms,
            accounts,
            reserved: HashMap::new(),
            allowance: Allowance {
                reserved: 0,
                tokens: allowance.tokens.min(terms.free_cap),
                ..allowance
            },
        }
    }

    /// Replaces the accounts (with those on disk, after a failed write); calls in flight and
    /// the allowance stay.
    pub fn replace_accounts(&mut self, accounts: BTreeMap<NodeId, Account>) {
        self.accounts = accounts;
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The terms this node extends credit on.
    pub fn terms(&self) -> CreditTerms {
        self.terms
    }

    /// The account with `peer` (empty if none).
    pub fn account(&self, peer: &NodeId) -> Account {
        self.accounts.get(peer).cloned().unwrap_or_default()
    }

    /// Every account, by peer.
    pub fn accounts(&self) -> &BTreeMap<NodeId, Account> {
        &self.accounts
    }

    /// Reserved for `peer`'s calls in flight.
    pub fn in_flight(&self, peer: &NodeId) -> u64 {
        self.reserved.get(peer).copied().unwrap_or(0)
    }

    /// The free allowance, refilled to `now_ms`.
    pub fn allowance(&mut self, now_ms: u64) -> Allowance {
        self.allowance.refill(&self.terms, now_ms);
        self.allowance
    }

    /// Admits a call from `peer` whose worst case is `worst` credits, or refuses it for
    /// payment. Known peers get credit up to the disconnect threshold; unknown ones only what
    /// the shared free allowance covers.
    pub fn admit(&mut self, peer: NodeId, worst: u64, now_ms: u64) -> Result<Reservation, Refusal> {
        let account = self.accounts.get(&peer);
        if !account.is_some_and(Account::known) {
            self.allowance.refill(&self.terms, now_ms);
            let left = self.allowance.left();
            if worst > left {
                return Err(Refusal::NoAllowance { left, worst });
            }
            self.allowance.reserved += worst;
            return Ok(Reservation {
                peer,
                worst,
                free: true,
            });
        }
        let owed = account.map_or(0, Account::debt);
        let in_flight = self.in_flight(&peer);
        let limit = self.terms.disconnect_threshold;
        if owed.saturating_add(in_flight).saturating_add(worst) > limit {
            return Err(Refusal::OverLimit {
                owed,
                in_flight,
                worst,
                limit,
            });
        }
        *self.reserved.entry(peer).or_default() += worst;
        Ok(Reservation {
            peer,
            worst,
            free: false,
        })
    }

    /// Gives back a reservation whose call produced no receipt (it failed or was refused).
    pub fn release(&mut self, reservation: Reservation) {
        self.unreserve(&reservation);
    }

    fn unreserve(&mut self, r: &Reservation) {
        if r.free {
            self.allowance.reserved = self.allowance.reserved.saturating_sub(r.worst);
        } else if let Some(held) = self.reserved.get_mut(&r.peer) {
            *held = held.saturating_sub(r.worst);
            if *held == 0 {
                self.reserved.remove(&r.peer);
            }
        }
    }

    /// Books a call this node served under `reservation`: the caller owes its cost (forgiven
    /// by the allowance if it was reserved there), and the royalty payee, if any, is owed its
    /// share. The receipt must be this node's, for the reserved caller.
    pub fn settle(
        &mut self,
        reservation: Reservation,
        receipt: &VerifiedReceipt,
        royalty: Option<Royalty>,
    ) -> Settled {
        self.unreserve(&reservation);
        debug_assert_eq!(receipt.provider, self.me);
        debug_assert_eq!(receipt.caller, reservation.peer);
        let cost = receipt.cost;
        let forgiven = if reservation.free {
            let f = cost.min(self.allowance.tokens);
            self.allowance.tokens -= f;
            f
        } else {
            0
        };
        let account = self.accounts.entry(reservation.peer).or_default();
        account.served = account.served.saturating_add(cost);
        account.served_calls += 1;
        account.forgiven = account.forgiven.saturating_add(forgiven);
        account.last_served = Some(receipt.id);
        let caller = account.clone();
        let royalty = royalty.filter(|r| r.payee != self.me).map(|r| {
            let due = royalty_of(cost, r.bps);
            let payee = self.accounts.entry(r.payee).or_default();
            payee.royalties_owed = payee.royalties_owed.saturating_add(due);
            payee.royalty_calls += 1;
            (r.payee, payee.clone(), due)
        });
        Settled { caller, royalty }
    }

    /// Books a call a peer served this node (this node is the receipt's caller); returns the
    /// account to write.
    pub fn record_used(&mut self, receipt: &VerifiedReceipt) -> Account {
        debug_assert_eq!(receipt.caller, self.me);
        let account = self.accounts.entry(receipt.provider).or_default();
        account.used = account.used.saturating_add(receipt.cost);
        account.used_calls += 1;
        account.last_used = Some(receipt.id);
        account.clone()
    }

    /// Accepts a cheque from its signer (see [`ChequeError`] for what is refused);
    /// `holds_receipt` says whether this node holds a receipt of the payer's calls here.
    pub fn accept_cheque(
        &mut self,
        cheque: &Signed<Cheque>,
        holds_receipt: impl Fn(&BlobHash) -> bool,
    ) -> Result<(Accepted, Account), ChequeError> {
        let payer = cheque.signer();
        let c = cheque.body();
        if c.payee != self.me {
            return Err(ChequeError::WrongPayee { payee: c.payee });
        }
        if payer == self.me {
            return Err(ChequeError::ToSelf);
        }
        let empty = Account::default();
        let account = self.accounts.get(&payer).unwrap_or(&empty);
        let (paid_calls, paid_royalties) = match &account.cheque_in {
            Some(prev) => {
                if c.epoch != prev.epoch {
                    return Err(ChequeError::WrongEpoch {
                        expected: prev.epoch,
                        found: c.epoch,
                    });
                }
                if c.seq <= prev.seq {
                    return Ok((Accepted::Stale, account.clone()));
                }
                if c.calls < prev.calls || c.royalties < prev.royalties {
                    return Err(ChequeError::Decreasing {
                        calls: c.calls,
                        royalties: c.royalties,
                    });
                }
                (prev.calls, prev.royalties)
            }
            None => (0, 0),
        };
        if c.calls > account.served {
            return Err(ChequeError::OverReceipts {
                calls: c.calls,
                held: account.served,
            });
        }
        match &c.receipt {
            // The newest receipt with the payer is the one named almost always: no lookup.
            Some(r) if account.last_served.as_ref() != Some(r) && !holds_receipt(r) => {
                return Err(ChequeError::UnknownReceipt);
            }
            None if c.calls > 0 => return Err(ChequeError::UnknownReceipt),
            _ => {}
        }
        let account = self.accounts.entry(payer).or_default();
        account.cheque_in = Some(ChequeState::of(cheque));
        Ok((
            Accepted::New {
                calls: c.calls - paid_calls,
                royalties: c.royalties - paid_royalties,
            },
            account.clone(),
        ))
    }

    /// The cheque this node should sign to `payee` now, if any: everything it owes for calls
    /// after netting (once that reaches half of `payment_threshold`, or at once with
    /// [`PayWhen::Now`]) and the royalties it owes; the first cheque to a payee opens the
    /// ledger even when nothing is owed. Never beyond `spend_limit`: what this node has paid
    /// the payee for calls, less what the payee's calls here cost, stays within it.
    pub fn cheque_for(
        &self,
        payee: NodeId,
        payment_threshold: u64,
        spend_limit: u64,
        when: PayWhen,
        now_ms: u64,
    ) -> Option<Cheque> {
        if payee == self.me {
            return None;
        }
        let account = self.account(&payee);
        let owed = u64::try_from((-account.net()).max(0)).unwrap_or(u64::MAX);
        let due = match when {
            PayWhen::Now => owed > 0,
            PayWhen::Due | PayWhen::Settling => owed > 0 && owed >= payment_threshold / 2,
        };
        let allowed = spend_limit
            .saturating_add(account.served)
            .saturating_sub(account.paid_out());
        let pay = if due { owed.min(allowed) } else { 0 };
        let royalties = account.royalties_due();
        let opening = account.cheque_out.is_none() && when != PayWhen::Settling;
        if pay == 0 && royalties == 0 && !opening {
            return None;
        }
        let (epoch, seq) = match &account.cheque_out {
            Some(prev) => (prev.epoch, prev.seq + 1),
            // A ledger's epoch is when it was opened: a node that lost its ledger opens a new
            // one, which the payee refuses until the node adopts the payee's copy.
            None => (now_ms.max(1), 1),
        };
        Some(Cheque {
            payee,
            epoch,
            seq,
            calls: account.paid_out() + pay,
            royalties: account.royalties_owed,
            receipt: if account.paid_out() + pay > 0 {
                account.last_used
            } else {
                None
            },
            issued_ms: now_ms,
        })
    }

    /// Records a cheque this node signed, before it is sent; returns the account to write.
    pub fn record_sent(&mut self, cheque: &Signed<Cheque>) -> Account {
        let account = self.accounts.entry(cheque.body().payee).or_default();
        account.cheque_out = Some(ChequeState::of(cheque));
        account.clone()
    }

    /// Adopts this node's own cheque as a payee returned it (this node lost a newer state,
    /// e.g. its ledger was restored from an old copy): only one signed by this node, to that
    /// payee, and newer than the one held. Returns the account to write if adopted.
    pub fn adopt_own(&mut self, from: NodeId, cheque: &Signed<Cheque>) -> Option<Account> {
        let c = cheque.body();
        if cheque.signer() != self.me || c.payee != from {
            return None;
        }
        let account = self.accounts.entry(from).or_default();
        let newer = account
            .cheque_out
            .as_ref()
            .is_none_or(|prev| prev.epoch != c.epoch || prev.seq < c.seq);
        if !newer {
            return None;
        }
        account.cheque_out = Some(ChequeState::of(cheque));
        Some(account.clone())
    }
}
