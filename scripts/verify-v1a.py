#!/usr/bin/env python3
"""An independent receiver-side verifier of Standard Webhooks `v1a`
(Ed25519) signatures, written against the specification with PyNaCl only
(no Herald code). The API tests run it with `.cache/venv/bin/python`
(scripts/test installs PyNaCl there).

Reads one JSON document on stdin:

  {"keys": ["whpk_...", {"kty": "OKP", "crv": "Ed25519", "x": "...", "kid": "..."}],
   "now": 1700000000,            # optional: the receiver's clock (unix seconds)
   "tolerance": 300,             # optional: accepted timestamp skew, seconds
   "deliveries": [{"headers": {"webhook-id": ..., ...}, "body_b64": "..."}]}

and prints one JSON document: for each delivery, whether it is accepted
and, per key, whether that key alone verifies it:

  {"results": [{"valid": true, "error": null, "v1a_entries": 1,
                "by_key": [true, false]}]}

A JWK key is also checked: kty OKP, crv Ed25519, and a `kid` equal to its
RFC 7638 thumbprint.
"""

import base64
import hashlib
import json
import sys
import time

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load_key(key) -> VerifyKey:
    if isinstance(key, str):
        if not key.startswith("whpk_"):
            raise ValueError(f"not a whpk_ key: {key!r}")
        raw = base64.b64decode(key[len("whpk_"):], validate=True)
    else:
        if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
            raise ValueError(f"not an OKP/Ed25519 JWK: {key!r}")
        canonical = json.dumps(
            {"crv": key["crv"], "kty": key["kty"], "x": key["x"]},
            separators=(",", ":"),
            sort_keys=True,
        )
        thumbprint = base64.urlsafe_b64encode(
            hashlib.sha256(canonical.encode()).digest()
        ).rstrip(b"=").decode()
        if key.get("kid") != thumbprint:
            raise ValueError(f"kid {key.get('kid')!r} is not the thumbprint {thumbprint!r}")
        raw = b64url_decode(key["x"])
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return VerifyKey(raw)


def v1a_signatures(header: str):
    for entry in header.split():
        version, _, sig = entry.partition(",")
        if version == "v1a":
            try:
                yield base64.b64decode(sig, validate=True)
            except ValueError:
                continue


def verified_by(key: VerifyKey, signed: bytes, signatures) -> bool:
    for sig in signatures:
        try:
            key.verify(signed, sig)
            return True
        except (BadSignatureError, ValueError):
            continue
    return False


def check(delivery, keys, now, tolerance):
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    body = base64.b64decode(delivery["body_b64"])
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    header = headers.get("webhook-signature", "")
    signatures = list(v1a_signatures(header))
    result = {"valid": False, "error": None, "v1a_entries": len(signatures), "by_key": []}
    if not msg_id or not ts:
        result["error"] = "missing webhook-id or webhook-timestamp"
        return result
    try:
        ts_int = int(ts)
    except ValueError:
        result["error"] = "bad timestamp"
        return result
    signed = f"{msg_id}.{ts}.".encode() + body
    result["by_key"] = [verified_by(k, signed, signatures) for k in keys]
    if abs(now - ts_int) > tolerance:
        result["error"] = "timestamp outside the tolerance"
    elif not any(result["by_key"]):
        result["error"] = "no v1a signature verifies"
    else:
        result["valid"] = True
    return result


def main():
    doc = json.load(sys.stdin)
    keys = [load_key(k) for k in doc["keys"]]
    now = int(doc.get("now") or time.time())
    tolerance = int(doc.get("tolerance", 300))
    results = [check(d, keys, now, tolerance) for d in doc["deliveries"]]
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
