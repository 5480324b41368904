//! moxnet's credit layer: every remote call is paid, without a chain, a token or anyone in the
//! middle. The spec is `docs/protocol.md` §12; the reasons are in `docs/ARCHITECTURE.md`.
//!
//! - **Receipts** ([`protocol::credits::Receipt`]): the caller's signed request and the
//!   provider's signed result. Both sides keep them; each receipt's cost is fixed by the two
//!   signatures.
//! - **Bilateral accounts** ([`Account`]): each pair of peers keeps one balance. What a peer
//!   owes for calls this node served nets out against what this node owes it for calls it
//!   served this node; only the difference is paid.
//! - **Cheques** ([`protocol::credits::Cheque`]): signed, cumulative, with a sequence number;
//!   resending one changes nothing, an older one is ignored, a wrong or excessive one is
//!   refused ([`ChequeError`]). A caller pays once it owes half the provider's payment
//!   threshold, with its next call.
//! - **Limits** ([`Ledger::admit`]): a provider reserves the worst case of every call before it
//!   runs and refuses ([`Refusal`], `PaymentRequired` on the wire) a call that would take the
//!   caller past the disconnect threshold. Callers it does not know share one free allowance.
//! - **Royalties**: a manifest may name a payee and a share; the provider that runs the model
//!   owes the payee that share of every call's cost and pays it with its own cheques.
//! - **Durability** ([`LedgerStore`]): accounts and receipts in sled behind a journal; each
//!   change is a journal record before anything that depends on it is sent (a killed node
//!   loses none), and a checkpointer moves them to sled with one flush a second.
//!
//! [`Credits`] puts the pure [`Ledger`] and its store together behind one lock.

mod ledger;
mod store;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use protocol::compute::{InferRequest, InferResult};
use protocol::credits::{Cheque, CreditTerms, Receipt, ReceiptError, Royalty, VerifiedReceipt};
use protocol::{BlobHash, DecodeError, NodeId, SecretKey, Signed};

pub use ledger::{
    Accepted, Account, Allowance, ChequeError, ChequeState, Ledger, PayWhen, Refusal, Reservation,
    Settled,
};
pub use store::{
    CHECKPOINT_BYTES, CHECKPOINT_EVERY, Change, LedgerStore, Side, StoreError, decode_account,
    encode_account,
};

/// Why a credit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    /// The database failed; nothing that depended on the change was done.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cheque was refused.
    #[error(transparent)]
    Cheque(#[from] ChequeError),
    /// A message did not decode or its signature did not verify.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A receipt's two halves do not agree.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
}

/// One account as shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// The peer.
    pub peer: NodeId,
    /// The account.
    pub account: Account,
    /// Reserved for the peer's calls in flight here.
    pub in_flight: u64,
}

/// The node's credits: its [`Ledger`] and [`LedgerStore`] behind one lock, so memory and disk
/// change in the same order.
pub struct Credits {
    ledger: Mutex<Ledger>,
    store: LedgerStore,
}

impl Credits {
    /// Opens the ledger of node `me` in `dir`, extending credit on `terms`.
    pub fn open(
        dir: &Path,
        me: NodeId,
        terms: CreditTerms,
        now_ms: u64,
    ) -> Result<Credits, CreditsError> {
        let store = LedgerStore::open(dir)?;
        let accounts = store.accounts()?;
        let allowance = store
            .allowance()?
            .unwrap_or_else(|| Allowance::full(&terms, now_ms));
        Ok(Credits {
            ledger: Mutex::new(Ledger::new(me, terms, accounts, allowance)),
            store,
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `change`; if that fails, the ledger in memory is reloaded from disk (what was not
    /// written did not happen).
    fn commit(&self, ledger: &mut Ledger, change: Change) -> Result<(), CreditsError> {
        let written = self.store.apply(change);
        if let Err(e) = written {
            match self.store.accounts() {
                Ok(accounts) => ledger.replace_accounts(accounts),
                Err(reload) => tracing::error!(
                    "credits: a write failed ({e}) and reloading the ledger failed too ({reload}); the next write retries"
                ),
            }
            return Err(e.into());
        }
        Ok(written?)
    }

    /// The terms this node extends credit on.
    pub fn terms(&self) -> CreditTerms {
        self.ledger().terms()
    }

    /// Admits a call from `peer` whose worst case is `worst` (see [`Ledger::admit`]).
    pub fn admit(&self, peer: NodeId, worst: u64, now_ms: u64) -> Result<Reservation, Refusal> {
        self.ledger().admit(peer, worst, now_ms)
    }

    /// Gives back the reservation of a call that produced no receipt.
    pub fn release(&self, reservation: Reservation) {
        self.ledger().release(reservation)
    }

    /// Books a call this node served and writes its receipt, before the reply is sent. The
    /// request was verified when the call came in and the result was signed here.
    pub fn settle(
        &self,
        reservation: Reservation,
        request: &Signed<InferRequest>,
        result: &Signed<InferResult>,
        royalty: Option<Royalty>,
        now_ms: u64,
    ) -> Result<VerifiedReceipt, CreditsError> {
        let receipt = Receipt::of(request, result);
        let verified = match receipt.verify_trusted() {
            Ok(v) => v,
            Err(e) => {
                self.release(reservation);
                return Err(e.into());
            }
        };
        let mut ledger = self.ledger();
        let peer = reservation.peer;
        let settled = ledger.settle(reservation, &verified, royalty);
        let n = settled.caller.served_calls - 1;
        let mut change = Change::default()
            .account(peer, &settled.caller)
            .receipt(peer, Side::Served, n, verified.id, &receipt)
            .allowance(ledger.allowance(now_ms));
        if let Some((payee, account, _)) = &settled.royalty {
            change = change.account(*payee, account).royalty_receipt(
                *payee,
                account.royalty_calls - 1,
                &receipt,
            );
        }
        self.commit(&mut ledger, change)?;
        Ok(verified)
    }

    /// Books a call a peer served this node, from the signed request it sent and the verified
    /// result it got. A receipt already recorded changes nothing.
    pub fn record_used(
        &self,
        request: &Signed<InferRequest>,
        result: &Signed<InferResult>,
    ) -> Result<VerifiedReceipt, CreditsError> {
        let receipt = Receipt::of(request, result);
        let verified = receipt.verify_trusted()?;
        self.book_used(&receipt, &verified)?;
        Ok(verified)
    }

    /// Books a verified receipt of a call a peer served this node, once; whether it was new.
    fn book_used(
        &self,
        receipt: &Receipt,
        verified: &VerifiedReceipt,
    ) -> Result<bool, CreditsError> {
        let mut ledger = self.ledger();
        if verified.caller != ledger.me() {
            return Err(ReceiptError::Mismatch("this node is not the receipt's caller").into());
        }
        if self.store.has_receipt(&verified.id)? {
            return Ok(false);
        }
        let account = ledger.record_used(verified);
        let change = Change::default()
            .account(verified.provider, &account)
            .receipt(
                verified.provider,
                Side::Used,
                account.used_calls - 1,
                verified.id,
                receipt,
            );
        self.commit(&mut ledger, change)?;
        Ok(true)
    }

    /// Books a receipt of a call a peer served this node that this node did not record (a
    /// provider sent it back: this node stopped before the reply came). Its signatures are
    /// checked, this node must be its caller, and one already recorded changes nothing.
    /// Returns it if it was new.
    pub fn record_receipt(
        &self,
        receipt: &Receipt,
    ) -> Result<Option<VerifiedReceipt>, CreditsError> {
        let verified = receipt.verify()?;
        Ok(self.book_used(receipt, &verified)?.then_some(verified))
    }

    /// The receipts with `peer` on one side from the `from`-th on, at most `limit`, as stored
    /// (a provider sends them back to a caller that missed some).
    pub fn receipts_range(
        &self,
        peer: &NodeId,
        side: Side,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, CreditsError> {
        Ok(self.store.receipts_range(peer, side, from, limit)?)
    }

    /// At most `limit` receipts behind the royalties this node owes `payee`, from the `from`-th
    /// on, as stored (the payee audits them).
    pub fn royalty_receipts(
        &self,
        payee: &NodeId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, CreditsError> {
        Ok(self.store.royalty_receipts(payee, from, limit)?)
    }

    /// Accepts a cheque (its envelope bytes) from a peer, written to disk before this returns
    /// (so before it is acknowledged).
    pub fn accept_cheque(&self, envelope: &[u8]) -> Result<(NodeId, Accepted), CreditsError> {
        // The signature is checked before the lock is taken.
        let cheque = Signed::<Cheque>::from_bytes(envelope)?;
        let mut ledger = self.ledger();
        let holds = |id: &BlobHash| self.store.has_receipt(id).unwrap_or(false);
        let (accepted, account) = ledger.accept_cheque(&cheque, holds)?;
        if let Accepted::New { .. } = accepted {
            let change = Change::default().account(cheque.signer(), &account);
            self.commit(&mut ledger, change)?;
        }
        Ok((cheque.signer(), accepted))
    }

    /// The newest cheque from `peer`, as received (a payee returns it to a payer that lost its
    /// own copy).
    pub fn cheque_from(&self, peer: &NodeId) -> Option<Vec<u8>> {
        self.ledger().account(peer).cheque_in.map(|c| c.envelope)
    }

    /// Signs and records the cheque this node owes `payee` now, if any (see
    /// [`Ledger::cheque_for`]); it is on disk before it is returned for sending.
    pub fn pay(
        &self,
        key: &SecretKey,
        payee: NodeId,
        payment_threshold: u64,
        spend_limit: u64,
        when: PayWhen,
        now_ms: u64,
    ) -> Result<Option<Signed<Cheque>>, CreditsError> {
        let mut ledger = self.ledger();
        let Some(cheque) = ledger.cheque_for(payee, payment_threshold, spend_limit, when, now_ms)
        else {
            return Ok(None);
        };
        let signed = key.sign(cheque);
        let account = ledger.record_sent(&signed);
        self.commit(&mut ledger, Change::default().account(payee, &account))?;
        Ok(Some(signed))
    }

    /// Signs the cheque [`Credits::pay`] would send `payee` now with [`PayWhen::Due`], without
    /// recording it: a caller prepares the cheque for its next call after a call ends, off the
    /// next call's path, and records it with [`Credits::send_prepared`] when it sends it.
    pub fn prepare(
        &self,
        key: &SecretKey,
        payee: NodeId,
        payment_threshold: u64,
        spend_limit: u64,
        now_ms: u64,
    ) -> Option<Signed<Cheque>> {
        let cheque = self.ledger().cheque_for(
            payee,
            payment_threshold,
            spend_limit,
            PayWhen::Due,
            now_ms,
        )?;
        Some(key.sign(cheque))
    }

    /// Records a cheque made by [`Credits::prepare`] as sent, on disk before this returns, if
    /// it is still right: it follows the newest cheque sent to its payee (same epoch, the next
    /// sequence number) and pays no more than [`PayWhen::Due`] would now (netting may have cut
    /// what is owed). Returns whether it was; if not, the caller pays with [`Credits::pay`].
    pub fn send_prepared(
        &self,
        cheque: &Signed<Cheque>,
        payment_threshold: u64,
        spend_limit: u64,
        now_ms: u64,
    ) -> Result<bool, CreditsError> {
        let mut ledger = self.ledger();
        let p = cheque.body();
        let Some(now) = ledger.cheque_for(
            p.payee,
            payment_threshold,
            spend_limit,
            PayWhen::Due,
            now_ms,
        ) else {
            return Ok(false);
        };
        if cheque.signer() != ledger.me()
            || p.epoch != now.epoch
            || p.seq != now.seq
            || p.calls > now.calls
            || p.royalties > now.royalties
        {
            return Ok(false);
        }
        let account = ledger.record_sent(cheque);
        self.commit(&mut ledger, Change::default().account(p.payee, &account))?;
        Ok(true)
    }

    /// Adopts this node's own newer cheque as `from` returned it (see [`Ledger::adopt_own`]).
    pub fn adopt_own(&self, from: NodeId, envelope: &[u8]) -> Result<bool, CreditsError> {
        let cheque = Signed::<Cheque>::from_bytes(envelope)?;
        let mut ledger = self.ledger();
        match ledger.adopt_own(from, &cheque) {
            Some(account) => {
                self.commit(&mut ledger, Change::default().account(from, &account))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every account, by peer.
    pub fn balances(&self) -> Vec<Balance> {
        let ledger = self.ledger();
        ledger
            .accounts()
            .iter()
            .map(|(peer, account)| Balance {
                peer: *peer,
                account: account.clone(),
                in_flight: ledger.in_flight(peer),
            })
            .collect()
    }

    /// The account with `peer`.
    pub fn balance(&self, peer: &NodeId) -> Balance {
        let ledger = self.ledger();
        Balance {
            peer: *peer,
            account: ledger.account(peer),
            in_flight: ledger.in_flight(peer),
        }
    }

    /// The free allowance now.
    pub fn allowance(&self, now_ms: u64) -> Allowance {
        self.ledger().allowance(now_ms)
    }

    /// The receipts behind the account with `peer`, on one side, oldest first.
    pub fn receipts(&self, peer: &NodeId, side: Side) -> Result<Vec<Receipt>, CreditsError> {
        Ok(self.store.receipts(peer, side)?)
    }
}
