"""Independent check of moxnet's protocol v1 test vectors, written only from docs/protocol.md.

Usage: python3 docs/test-vectors/check.py [docs/test-vectors/v1.json]
Needs: pip install cbor2 blake3 cryptography
"""

import json
import sys
from pathlib import Path

import cbor2
from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def as_json(value):
    """The vectors' JSON view of a CBOR value: byte strings as h'<hex>'."""
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def canonical(value):
    return cbor2.dumps(value, canonical=True)


def check_signed(vec):
    name = vec["name"]
    envelope_bytes = bytes.fromhex(vec["envelope"])
    envelope = cbor2.loads(envelope_bytes)
    assert canonical(envelope) == envelope_bytes, f"{name}: envelope is not deterministic CBOR"
    assert set(envelope) == {"v", "domain", "signer", "body", "sig"}, name
    assert envelope["v"] == 1, name
    assert envelope["domain"] == vec["domain"], name
    body = envelope["body"]
    assert body.hex() == vec["body"], name
    assert envelope["sig"].hex() == vec["signature"], name
    # The key derives from the seed (RFC 8032), and the signature verifies over domain || 0 || body.
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["secret_seed"]))
    public = key.public_key().public_bytes_raw()
    assert public.hex() == vec["public_key"] == envelope["signer"].hex(), name
    message = vec["domain"].encode() + b"\x00" + body
    Ed25519PublicKey.from_public_bytes(public).verify(envelope["sig"], message)
    assert key.sign(message) == envelope["sig"], f"{name}: ed25519 signatures are deterministic"
    # The same signature must not verify under another domain.
    other = ("moxnet/v1/vote" if vec["domain"] != "moxnet/v1/vote" else "moxnet/v1/manifest")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(envelope["sig"], other.encode() + b"\x00" + body)
        raise AssertionError(f"{name}: signature verified under {other}")
    except Exception as e:  # cryptography raises InvalidSignature
        if isinstance(e, AssertionError):
            raise
    decoded = cbor2.loads(body)
    assert canonical(decoded) == body, f"{name}: body is not deterministic CBOR"
    assert as_json(decoded) == vec["fields"], f"{name}: decoded fields differ"
    assert blake3(envelope_bytes).hexdigest() == vec["id"], f"{name}: id is not BLAKE3(envelope)"


def check_object(vec):
    data = bytes.fromhex(vec["bytes"])
    decoded = cbor2.loads(data)
    assert canonical(decoded) == data, vec["name"]
    assert as_json(decoded) == vec["fields"], vec["name"]
    assert blake3(data).hexdigest() == vec["id"], vec["name"]
    # A cheque carried in a frame (a call paying, a refusal, settling) is a signed envelope of
    # the cheque domain (protocol.md §12.2, §12.7).
    for key in ("cheque", "held"):
        if isinstance(decoded, dict) and key in decoded:
            env = cbor2.loads(decoded[key])
            assert env["domain"] == "moxnet/v1/cheque", vec["name"]
            Ed25519PublicKey.from_public_bytes(env["signer"]).verify(
                env["sig"], b"moxnet/v1/cheque\x00" + env["body"])
            body = cbor2.loads(env["body"])
            assert body["seq"] >= 1 and (body["calls"] == 0 or "receipt" in body), vec["name"]


def check_vote(vec):
    """A vote (protocol.md §13): its fields are in range, and each receipt in it verifies, was
    made by the voter, of the voted model, on another node."""
    envelope = cbor2.loads(bytes.fromhex(vec["envelope"]))
    vote = cbor2.loads(envelope["body"])
    name = vec["name"]
    assert set(vote) <= {"v", "model", "choice", "clock", "issued_ms", "receipts"}, name
    assert vote["v"] == 1 and vote["clock"] >= 1, name
    assert vote["choice"] in ("up", "down", "retract"), name
    assert len(vote["model"]) == 32, name
    receipts = vote.get("receipts", [])
    assert "receipts" not in vote or 1 <= len(receipts) <= 8, name
    assert len(set(receipts)) == len(receipts), f"{name}: a receipt twice"
    for raw in receipts:
        receipt = cbor2.loads(raw)
        assert canonical(receipt) == raw, name
        req_env = cbor2.loads(receipt["request"])
        res_env = cbor2.loads(receipt["result"])
        Ed25519PublicKey.from_public_bytes(req_env["signer"]).verify(
            req_env["sig"], b"moxnet/v1/infer-request\x00" + req_env["body"])
        Ed25519PublicKey.from_public_bytes(res_env["signer"]).verify(
            res_env["sig"], b"moxnet/v1/infer-result\x00" + res_env["body"])
        request, result = cbor2.loads(req_env["body"]), cbor2.loads(res_env["body"])
        assert result["request"] == blake3(receipt["request"]).digest(), name
        assert req_env["signer"] == envelope["signer"], f"{name}: the receipt's caller is not the voter"
        assert request["model"] == vote["model"] == result["model"], f"{name}: another model"
        assert res_env["signer"] == request["provider"] != envelope["signer"], f"{name}: provider"


def check_revocation(vec):
    """A key revocation (protocol.md §13): its fields, and a reason of at most 256 bytes."""
    body = cbor2.loads(cbor2.loads(bytes.fromhex(vec["envelope"]))["body"])
    name = vec["name"]
    assert set(body) <= {"v", "issued_ms", "reason"} and body["v"] == 1, name
    assert isinstance(body["issued_ms"], int), name
    assert len(body.get("reason", "").encode()) <= 256, name


def vote_supersedes(a, b):
    """The merge rule (protocol.md §13): greater clock, then greater id (BLAKE3 of the
    envelope) as bytes."""
    return (a[0], a[1]) > (b[0], b[1])


def check_receipt(vec):
    """A receipt (protocol.md §12.1): both envelopes verify, the result answers the request, and
    the cost and royalty re-derive from the signed fields."""
    name = vec["name"]
    data = bytes.fromhex(vec["bytes"])
    receipt = cbor2.loads(data)
    assert canonical(receipt) == data, name
    assert set(receipt) == {"v", "request", "result"} and receipt["v"] == 1, name

    def open_envelope(raw, domain):
        env = cbor2.loads(raw)
        assert canonical(env) == raw, name
        assert env["domain"] == domain, name
        Ed25519PublicKey.from_public_bytes(env["signer"]).verify(
            env["sig"], domain.encode() + b"\x00" + env["body"])
        return env["signer"], cbor2.loads(env["body"])

    caller, request = open_envelope(receipt["request"], "moxnet/v1/infer-request")
    provider, result = open_envelope(receipt["result"], "moxnet/v1/infer-result")
    assert result["request"] == blake3(receipt["request"]).digest(), f"{name}: result answers another request"
    assert request["provider"] == provider, f"{name}: the result is not the addressed provider's"
    assert result["model"] == request["model"], name
    assert result["fuel"] <= request["max_fuel"], name
    assert result["price_per_mfuel"] <= request["max_price_per_mfuel"], name
    cost = -(-result["fuel"] * result["price_per_mfuel"] // 1_000_000)
    assert cost == vec["cost"], f"{name}: cost {cost} != {vec['cost']}"
    assert caller.hex() == vec["caller"] and provider.hex() == vec["provider"], name
    assert blake3(receipt["result"]).hexdigest() == vec["id"], f"{name}: id is BLAKE3(result envelope)"
    assert cost * vec["royalty_bps"] // 10_000 == vec["royalty"], f"{name}: royalty"


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("v1.json")
    vectors = json.loads(path.read_text())
    for vec in vectors["signed"]:
        check_signed(vec)
        if vec["domain"] == "moxnet/v1/vote":
            check_vote(vec)
        if vec["domain"] == "moxnet/v1/revocation":
            check_revocation(vec)
    # The revocation is signed by the voter: after it, neither vote counts.
    revocation = next(v for v in vectors["signed"] if v["domain"] == "moxnet/v1/revocation")
    assert all(v["public_key"] == revocation["public_key"]
               for v in vectors["signed"] if v["domain"] == "moxnet/v1/vote")
    # The retraction (clock 2) supersedes the vote up (clock 1) from the same voter.
    votes = {v["name"]: v for v in vectors["signed"] if v["domain"] == "moxnet/v1/vote"}
    up, retract = votes["vote-up-with-receipt"], votes["vote-retract"]
    key = lambda v: (v["fields"]["clock"], bytes.fromhex(v["id"]))
    assert vote_supersedes(key(retract), key(up)) and not vote_supersedes(key(up), key(retract))
    for vec in vectors["objects"]:
        check_object(vec)
    for vec in vectors["receipts"]:
        check_receipt(vec)
    print(f"ok: {len(vectors['signed'])} signed, {len(vectors['objects'])} plain and {len(vectors['receipts'])} receipt vectors verified independently")


if __name__ == "__main__":
    main()
