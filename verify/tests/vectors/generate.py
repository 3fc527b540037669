"""Signature test vectors for PayFlow v1 and the generic `hmac` scheme, made with Python's
`hmac` module (never with payflow-verify). `library_ok` is the verdict of the reference
verifier below, written from DESIGN.md's table, independently of the Rust code.

Usage: python3 generate.py > vectors.json   (run by verify/tests/third_party_vectors.rs)
"""
import base64
import hashlib
import hmac
import json
import time

NOW = int(time.time())
TOL = 300
BODY = json.dumps(
    {"id": "evt_py_1", "type": "payment.failed", "created_at": "2024-01-15T10:30:00Z",
     "data": {"amount": 990, "currency": "USD", "status": "failed", "memo": "naïve ✓"}},
    ensure_ascii=False, indent=1,
).encode()
TAMPERED = BODY.replace(b"990", b"991")
GARBAGE = ["", " ", "garbage", "t=", "t=abc,v1=00", "v1=" + "0" * 64, "t=1,t=2", "\u00e9", "," * 50]
cases = []


def mac(key: str, *parts: bytes) -> bytes:
    h = hmac.new(key.encode(), digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.digest()


def add(name, scheme, secrets, headers, expect, body=BODY, library_ok=None, **extra):
    case = {"name": name, "scheme": scheme, "secrets": secrets, "headers": headers,
            "expect": expect, "library_ok": library_ok, "now": NOW, "tolerance": TOL,
            "require_timestamp": False, "json_compat": False,
            "body_b64": base64.b64encode(body).decode(), "source": "python hmac"}
    case.update(extra)
    cases.append(case)


# ----------------------------------------------------------------- payflow v1 (timestamped)
def payflow_v1_reference(secrets, body, value):
    """t=<unix>,v1=<hex>[,v1=<hex>...] over "{t}.{body}", tolerance both ways."""
    items = [i.strip().split("=", 1) for i in value.split(",") if "=" in i]
    ts = [v for k, v in items if k == "t"]
    sigs = [v for k, v in items if k == "v1"]
    if len(ts) != 1 or not ts[0].isdigit() or abs(NOW - int(ts[0])) > TOL:
        return False
    return any(hmac.compare_digest(mac(s, ts[0].encode(), b".", body).hex(), sig)
               for s in secrets for sig in sigs)


SECRET, OTHER = "whsec_payflow_v1", "whsec_payflow_v1_other"


def v1_header(secret, ts, body=BODY):
    return f"t={ts},v1={mac(secret, str(ts).encode(), b'.', body).hex()}"


def v1(name, secrets, value, expect, body=BODY, **extra):
    headers = [] if value is None else [["X-PayFlow-Signature", value]]
    add(f"payflow-v1/{name}", "payflow", secrets, headers, expect, body,
        library_ok=payflow_v1_reference(secrets, body, value or ""), **extra)


good = v1_header(SECRET, NOW)
sig = good.split("v1=")[1]
v1("valid", [SECRET], good, "ok")
v1("valid_required_timestamp", [SECRET], good, "ok", require_timestamp=True)
v1("tampered_body", [SECRET], good, "invalid_signature", body=TAMPERED)
v1("wrong_secret", [OTHER], good, "invalid_signature")
v1("rotation_second_secret", [OTHER, SECRET], good, "ok")
v1("several_signatures_one_valid", [SECRET], f"t={NOW},v1={'ab' * 32},v1={sig}", "ok")
v1("truncated", [SECRET], good[:-2], "malformed_signature")
v1("empty_v1", [SECRET], f"t={NOW},v1=", "malformed_signature")
v1("stale", [SECRET], v1_header(SECRET, NOW - TOL - 1), "timestamp_out_of_tolerance")
v1("future", [SECRET], v1_header(SECRET, NOW + TOL + 1), "timestamp_out_of_tolerance")
v1("edge_of_tolerance", [SECRET], v1_header(SECRET, NOW - TOL), "ok")
v1("swapped_timestamp", [SECRET], v1_header(SECRET, NOW - 5).replace(f"t={NOW - 5}", f"t={NOW - 6}"), "invalid_signature")
v1("v0_signature_with_t", [SECRET], f"t={NOW},v0={sig}", "malformed_signature")
v1("missing_header", [SECRET], None, "missing_signature")
for i, g in enumerate(GARBAGE):
    v1(f"garbage_{i}", [SECRET], g, "missing_signature" if not g.strip() else "malformed_signature")

# --------------------------------------------------------------------------- generic hmac
def generic(name, header, prefix, encoding, secrets, value, expect, body=BODY):
    def reference():
        if value is None or not value.startswith(prefix):
            return False
        for s in secrets:
            raw = mac(s, body)
            want = raw.hex() if encoding == "hex" else base64.b64encode(raw).decode()
            if hmac.compare_digest(want, value[len(prefix):]):
                return True
        return False
    headers = [] if value is None else [[header, value]]
    add(f"hmac-{encoding}/{name}", "hmac", secrets, headers, expect, body, library_ok=reference(),
        hmac={"header": header, "prefix": prefix, "encoding": encoding})


for header, prefix, encoding in [("X-Signature-256", "sha256=", "hex"), ("X-Webhook-Hmac", "", "base64")]:
    def enc(raw):
        return raw.hex() if encoding == "hex" else base64.b64encode(raw).decode()
    right = prefix + enc(mac(SECRET, BODY))
    generic("valid", header, prefix, encoding, [SECRET], right, "ok")
    generic("tampered_body", header, prefix, encoding, [SECRET], right, "invalid_signature", body=TAMPERED)
    generic("wrong_secret", header, prefix, encoding, [OTHER], right, "invalid_signature")
    generic("rotation_second_secret", header, prefix, encoding, [OTHER, SECRET], right, "ok")
    generic("truncated", header, prefix, encoding, [SECRET], right[:-2], "malformed_signature")
    generic("empty", header, prefix, encoding, [SECRET], prefix, "malformed_signature" if prefix else "missing_signature")
    generic("missing_header", header, prefix, encoding, [SECRET], None, "missing_signature")
    generic("garbage", header, prefix, encoding, [SECRET], prefix + "not-a-signature", "malformed_signature")

print(json.dumps({"generator": "generate.py", "now": NOW, "cases": cases}, indent=1))
