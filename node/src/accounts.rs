//! How the credit ledger (`credits::Credits`) is shown by the API: every account with a peer,
//! and the receipts and cheques behind one, as signed bytes anyone can check.

use api::dto::{CreditsView, PeerCredits, ReceiptList, ReceiptView};
use credits::{Balance, Credits, Side};
use protocol::NodeId;
use protocol::credits::Receipt;

/// One account as the API shows it.
pub fn peer_credits(b: &Balance) -> PeerCredits {
    let a = &b.account;
    PeerCredits {
        node_id: b.peer.to_string(),
        peer_id: net::peer_id_of(&b.peer).map_or_else(String::new, |p| p.to_string()),
        served_calls: a.served_calls,
        served: a.served,
        forgiven: a.forgiven,
        used_calls: a.used_calls,
        used: a.used,
        paid_in: a.paid_in(),
        paid_out: a.paid_out(),
        net: i64::try_from(a.net()).unwrap_or(if a.net() > 0 { i64::MAX } else { i64::MIN }),
        in_flight: b.in_flight,
        royalties_owed: a.royalties_owed,
        royalty_calls: a.royalty_calls,
        royalties_paid: a.royalties_paid(),
        royalties_received: a.royalties_in(),
        cheque_in_seq: a.cheque_in.as_ref().map(|c| c.seq),
        cheque_out_seq: a.cheque_out.as_ref().map(|c| c.seq),
    }
}

/// The whole ledger.
pub fn credits_view(credits: &Credits, me: NodeId, spend_limit: u64, now_ms: u64) -> CreditsView {
    let terms = credits.terms();
    CreditsView {
        node_id: me.to_string(),
        payment_threshold: terms.payment_threshold,
        disconnect_threshold: terms.disconnect_threshold,
        free_cap: terms.free_cap,
        free_per_sec: terms.free_per_s,
        free_left: credits.allowance(now_ms).left(),
        spend_limit,
        peers: credits.balances().iter().map(peer_credits).collect(),
    }
}

fn receipt_view(r: &Receipt) -> Result<ReceiptView, String> {
    // Stored receipts were checked when booked; they are checked again, signatures and all,
    // so that what is shown is what anyone would verify.
    let v = r
        .verify()
        .map_err(|e| format!("a stored receipt does not verify: {e}"))?;
    Ok(ReceiptView {
        id: v.id.to_string(),
        caller: v.caller.to_string(),
        provider: v.provider.to_string(),
        model: v.model.to_string(),
        fuel: v.fuel,
        price_per_mfuel: v.price_per_mfuel,
        cost: v.cost,
        issued_ms: v.issued_ms,
        receipt: hex::encode(protocol::Object::to_bytes(r)),
    })
}

/// The receipts and cheques behind the account with `peer`.
pub fn receipt_list(credits: &Credits, peer: NodeId) -> Result<ReceiptList, String> {
    let side = |s: Side| -> Result<Vec<ReceiptView>, String> {
        credits
            .receipts(&peer, s)
            .map_err(|e| e.to_string())?
            .iter()
            .map(receipt_view)
            .collect()
    };
    let balance = credits.balance(&peer);
    Ok(ReceiptList {
        account: peer_credits(&balance),
        served: side(Side::Served)?,
        used: side(Side::Used)?,
        cheque_in: balance
            .account
            .cheque_in
            .as_ref()
            .map(|c| hex::encode(&c.envelope)),
        cheque_out: balance
            .account
            .cheque_out
            .as_ref()
            .map(|c| hex::encode(&c.envelope)),
    })
}

/// Checks every receipt and cheque of a list with nothing but the public keys they carry:
/// signatures, that each result answers its request, that the stated costs are what the
/// signed fuel and price give, and that the sums are the account's. Returns a summary line.
pub fn check_receipts(list: &ReceiptList) -> anyhow::Result<String> {
    use anyhow::{Context, bail};
    use protocol::{Object, Signed, credits::Cheque};
    let sum = |views: &[ReceiptView], what: &str| -> anyhow::Result<u64> {
        let mut total = 0u64;
        for v in views {
            let bytes =
                hex::decode(&v.receipt).with_context(|| format!("{what} receipt {}", v.id))?;
            let receipt =
                Receipt::from_bytes(&bytes).with_context(|| format!("{what} receipt {}", v.id))?;
            let checked = receipt
                .verify()
                .with_context(|| format!("{what} receipt {}", v.id))?;
            if checked.cost != v.cost || checked.id.to_string() != v.id {
                bail!(
                    "{what} receipt {} states cost {} but its signatures give {}",
                    v.id,
                    v.cost,
                    checked.cost
                );
            }
            total = total.saturating_add(checked.cost);
        }
        Ok(total)
    };
    let served = sum(&list.served, "served")?;
    let used = sum(&list.used, "used")?;
    let a = &list.account;
    if served != a.served || used != a.used {
        bail!(
            "the receipts total {served} served and {used} used; the account says {} and {}",
            a.served,
            a.used
        );
    }
    let cheque = |hex_bytes: &Option<String>| -> anyhow::Result<Option<(u64, u64)>> {
        hex_bytes
            .as_ref()
            .map(|h| {
                let bytes = hex::decode(h).context("cheque")?;
                let c = Signed::<Cheque>::from_bytes(&bytes).context("cheque")?;
                Ok((c.body().seq, c.body().calls))
            })
            .transpose()
    };
    let cin = cheque(&list.cheque_in)?;
    let cout = cheque(&list.cheque_out)?;
    if cin.map_or(0, |c| c.1) != a.paid_in || cout.map_or(0, |c| c.1) != a.paid_out {
        bail!("the cheques do not state what the account says was paid");
    }
    Ok(format!(
        "checked with the public keys alone: {} served receipts ({served} credits), {} used receipts ({used} credits), cheques in {} / out {}",
        list.served.len(),
        list.used.len(),
        cin.map_or_else(
            || "none".to_string(),
            |(seq, calls)| format!("#{seq} paying {calls}")
        ),
        cout.map_or_else(
            || "none".to_string(),
            |(seq, calls)| format!("#{seq} paying {calls}")
        ),
    ))
}
