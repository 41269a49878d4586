#!/usr/bin/python3
"""Independent checker for coffer's key formats, written from FORMAT.md section 9 alone.

It reads keys/testdata/vectors.json and, for every vector, rebuilds each associated data,
HMAC message, HSM label and parameter blob from the inputs, recomputes every key (Argon2id
master key, KWK, check value, derived DEKs), re-seals and opens every wrapped DEK and KEK
material, compares all of it byte for byte, and checks that tampered or malformed variants
(the vectors' own and ones made here) are rejected. Exit status 0 only if every check
passed; the last line is "N passed, M failed".

Run: /usr/bin/python3 test/format/decode_keys.py [path/to/vectors.json]
Needs python3-cryptography (Debian 12: version 38) and python3-argon2 (argon2-cffi).
"""

import hmac as std_hmac
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

try:
    from argon2.low_level import Type, hash_secret_raw
except ImportError:  # a clear message rather than a traceback: make test installs it
    sys.exit("decode_keys.py: python3-argon2 is missing (test/deps.sh installs it)")

# ---------------------------------------------------------------- FORMAT.md 9.1

LABEL_WRAP = b"coffer/dek-wrap/v1"
LABEL_DERIVE = b"coffer/dek-derive/v1"
LABEL_PP_KEK = b"coffer/passphrase-kek/v1"
LABEL_PP_KWK = b"coffer/passphrase-kwk/v1"
LABEL_PP_CHECK = b"coffer/passphrase-check/v1"
LABEL_SELFTEST = b"coffer/kek-selftest/v1"

ID_LEN = 16
KEY_LEN = 32
IV_LEN = 12
TAG_LEN = 16
SALT_LEN = 32  # derive-mode salt
WRAPPED_LEN = KEY_LEN + TAG_LEN

# 9.5.1
PARAMS_LEN = 63
PARAMS_MAGIC = b"CFPP"
PARAMS_VERSION = 1
ALG_ARGON2ID = 1
ARGON2_VERSION = 0x13
PP_SALT_LEN = 16
# Tight bounds: the catalog is read before anything authenticates it, so these numbers are
# an attacker's to choose; they cap one unlock at 10 passes over 1 GiB (FORMAT.md 9.5.1).
T_MIN, T_MAX = 1, 10
M_MIN, M_MAX = 8192, 1048576
P_MIN, P_MAX = 1, 16

# 9.5.3
MATERIAL_VERSION = 1
MATERIAL_LEN = 93
KEK_LEN = 64

CHAIN_RE = re.compile(r"[A-Za-z0-9._-]{0,32}")


class Reject(Exception):
    """Bytes (or catalog values) that a decoder must refuse."""


def u32be(n):
    return struct.pack(">I", n)


def lp(x):
    return u32be(len(x)) + x


def check_id(name, b):
    if len(b) != ID_LEN:
        raise Reject("%s is %d bytes, want %d" % (name, len(b), ID_LEN))


def check_ref(chain, version):
    # 9.2: "" or at most 32 characters of [A-Za-z0-9._-], "volume" reserved; version u32 >= 1.
    if not CHAIN_RE.fullmatch(chain) or chain == "volume":
        raise Reject("bad chain %r" % chain)
    if not 1 <= version <= 0xFFFFFFFF:
        raise Reject("bad version %d" % version)


def hmac_sha256(key, msg):
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(msg)
    return h.finalize()


def gcm_open(key, iv, ct, aad):
    try:
        return AESGCM(key).decrypt(iv, ct, aad)
    except InvalidTag:
        raise Reject("AES-GCM tag does not verify")


# ---------------------------------------------------------------- FORMAT.md 9.3


def wrap_aad(volume_id, file_id, chain, version):
    check_id("volume id", volume_id)
    check_id("file id", file_id)
    check_ref(chain, version)
    return (lp(LABEL_WRAP) + lp(volume_id) + lp(file_id) + lp(chain.encode("ascii"))
            + u32be(version))


def wrap_dek(aes_key, iv, dek, volume_id, file_id, chain, version):
    assert len(aes_key) == KEY_LEN and len(iv) == IV_LEN and len(dek) == KEY_LEN
    return AESGCM(aes_key).encrypt(iv, dek, wrap_aad(volume_id, file_id, chain, version))


def check_record(rec):
    """The length table of 9.3: anything else is malformed (an unwrap failure)."""
    mode = rec["mode"]
    iv, wrapped, salt = (bytes.fromhex(rec[k]) for k in ("iv", "wrapped", "salt"))
    if mode == "wrap":
        want = (IV_LEN, WRAPPED_LEN, 0)
    elif mode == "derive":
        want = (0, 0, SALT_LEN)
    else:
        raise Reject("unknown mode %r" % mode)
    if (len(iv), len(wrapped), len(salt)) != want:
        raise Reject("record lengths %s for mode %s" % ((len(iv), len(wrapped), len(salt)), mode))
    check_ref(rec["chain"], rec["version"])


def open_record(rec, aes_key, hmac_key, volume_id, file_id):
    """Opens a file key record of 9.3 given the KEK version's two keys."""
    check_record(rec)
    if rec["mode"] == "wrap":
        aad = wrap_aad(volume_id, file_id, rec["chain"], rec["version"])
        return gcm_open(aes_key, bytes.fromhex(rec["iv"]), bytes.fromhex(rec["wrapped"]), aad)
    return hmac_sha256(hmac_key, derive_msg(volume_id, file_id, bytes.fromhex(rec["salt"])))


def derive_msg(volume_id, file_id, salt):
    check_id("volume id", volume_id)
    check_id("file id", file_id)
    if len(salt) != SALT_LEN:
        raise Reject("derive salt is %d bytes" % len(salt))
    return lp(LABEL_DERIVE) + lp(volume_id) + lp(file_id) + lp(salt)


# ---------------------------------------------------------------- FORMAT.md 9.4


def hsm_label(volume_id, chain, version, kind):
    check_id("volume id", volume_id)
    check_ref(chain, version)
    assert kind in ("aes", "hmac")
    return "coffer:%s:%s:v%d:%s" % (volume_id.hex(), chain, version, kind)


def selftest_aad(volume_id, chain, version):
    check_id("volume id", volume_id)
    check_ref(chain, version)
    return lp(LABEL_SELFTEST) + lp(volume_id) + lp(chain.encode("ascii")) + u32be(version)


# ---------------------------------------------------------------- FORMAT.md 9.5


def parse_params(b):
    if len(b) != PARAMS_LEN:
        raise Reject("params are %d bytes, want %d" % (len(b), PARAMS_LEN))
    if b[0:4] != PARAMS_MAGIC:
        raise Reject("bad magic")
    if b[4] != PARAMS_VERSION:
        raise Reject("params version %d" % b[4])
    if b[5] != ALG_ARGON2ID:
        raise Reject("algorithm %d" % b[5])
    t, m = struct.unpack(">II", b[6:14])
    p = b[14]
    if not T_MIN <= t <= T_MAX:
        raise Reject("t = %d" % t)
    if not P_MIN <= p <= P_MAX:
        raise Reject("p = %d" % p)
    if not M_MIN <= m <= M_MAX or m < 8 * p:
        raise Reject("m = %d" % m)
    return {"t": t, "m": m, "p": p, "salt": b[15:31], "check": b[31:63]}


def encode_params(t, m, p, salt, check):
    assert len(salt) == PP_SALT_LEN and len(check) == KEY_LEN
    return (PARAMS_MAGIC + bytes([PARAMS_VERSION, ALG_ARGON2ID]) + u32be(t) + u32be(m)
            + bytes([p]) + salt + check)


def master_key(passphrase, salt, t, m, p):
    return hash_secret_raw(passphrase, salt, time_cost=t, memory_cost=m, parallelism=p,
                           hash_len=KEY_LEN, type=Type.ID, version=ARGON2_VERSION)


def kwk_of(master, volume_id):
    check_id("volume id", volume_id)
    return hmac_sha256(master, lp(LABEL_PP_KWK) + lp(volume_id))


def check_of(master, volume_id):
    check_id("volume id", volume_id)
    return hmac_sha256(master, lp(LABEL_PP_CHECK) + lp(volume_id))


def unlock(passphrase, params, volume_id):
    """9.5.2: returns the KWK, or raises Reject for a wrong passphrase."""
    pr = parse_params(params)
    m = master_key(passphrase, pr["salt"], pr["t"], pr["m"], pr["p"])
    if not std_hmac.compare_digest(check_of(m, volume_id), pr["check"]):
        raise Reject("wrong passphrase")
    return kwk_of(m, volume_id)


def kek_aad(volume_id, chain, version):
    check_id("volume id", volume_id)
    check_ref(chain, version)
    return lp(LABEL_PP_KEK) + lp(volume_id) + lp(chain.encode("ascii")) + u32be(version)


def seal_material(kwk, nonce, kek, volume_id, chain, version):
    assert len(nonce) == IV_LEN and len(kek) == KEK_LEN
    return (bytes([MATERIAL_VERSION]) + nonce
            + AESGCM(kwk).encrypt(nonce, kek, kek_aad(volume_id, chain, version)))


def open_material(kwk, material, volume_id, chain, version):
    """9.5.3: returns (AES key, HMAC key)."""
    if len(material) != MATERIAL_LEN:
        raise Reject("material is %d bytes" % len(material))
    if material[0] != MATERIAL_VERSION:
        raise Reject("material version %d" % material[0])
    kek = gcm_open(kwk, material[1:13], material[13:], kek_aad(volume_id, chain, version))
    if len(kek) != KEK_LEN:
        raise Reject("KEK is %d bytes" % len(kek))
    return kek[:32], kek[32:]


# ---------------------------------------------------------------- checks

passed = 0
failed = 0


def ok(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what)


def eq(got, want, what):
    ok(got == want, "%s: got %s, want %s" % (what, _show(got), _show(want)))


def _show(x):
    return x.hex() if isinstance(x, (bytes, bytearray)) else repr(x)


def rejects(fn, what):
    try:
        fn()
    except Reject:
        ok(True, what)
        return
    except Exception as e:  # a crash is not a clean refusal
        ok(False, "%s: raised %r instead of rejecting" % (what, e))
        return
    ok(False, "%s: accepted" % what)


def flip(b, i):
    b = bytearray(b)
    b[i % len(b)] ^= 0x01
    return bytes(b)


def other_chain(chain):
    return "u1001" if chain != "u1001" else "u1002"


def h(v, k):
    return bytes.fromhex(v[k])


def check_wrap(v):
    name = "wrap %s" % v["name"]
    vol, fid, chain, ver = h(v, "volume_id"), h(v, "file_id"), v["chain"], v["version"]
    aes_key, iv, dek = h(v, "aes_key"), h(v, "iv"), h(v, "dek")
    aad = wrap_aad(vol, fid, chain, ver)
    eq(aad, h(v, "aad"), name + " AAD")
    eq(len(aad), 70 + len(chain), name + " AAD length")
    wrapped = wrap_dek(aes_key, iv, dek, vol, fid, chain, ver)
    eq(wrapped, h(v, "wrapped"), name + " wrapped")
    eq(len(wrapped), WRAPPED_LEN, name + " wrapped length")
    rec = {"mode": "wrap", "chain": chain, "version": ver, "iv": v["iv"], "wrapped": v["wrapped"],
           "salt": ""}
    eq(open_record(rec, aes_key, None, vol, fid), dek, name + " open")
    # The AAD binds every identity: any change must fail to open.
    for i in (0, 31, 32, 47):
        rejects(lambda i=i: open_record(dict(rec, wrapped=flip(h(v, "wrapped"), i).hex()),
                                        aes_key, None, vol, fid), name + " flipped wrapped[%d]" % i)
    rejects(lambda: open_record(dict(rec, iv=flip(iv, 5).hex()), aes_key, None, vol, fid),
            name + " flipped IV")
    rejects(lambda: open_record(rec, aes_key, None, flip(vol, 15), fid), name + " other volume")
    rejects(lambda: open_record(rec, aes_key, None, vol, flip(fid, 0)), name + " other file")
    rejects(lambda: open_record(dict(rec, version=ver + 1), aes_key, None, vol, fid),
            name + " other version")
    rejects(lambda: open_record(dict(rec, chain=other_chain(chain)), aes_key, None, vol, fid),
            name + " other chain")
    rejects(lambda: open_record(rec, flip(aes_key, 3), None, vol, fid), name + " other KEK")
    rejects(lambda: open_record(dict(rec, wrapped=v["wrapped"][:-2]), aes_key, None, vol, fid),
            name + " short wrapped")
    rejects(lambda: open_record(dict(rec, salt="00" * 32), aes_key, None, vol, fid),
            name + " record with salt")
    for t in v.get("tampered", []):
        rejects(lambda t=t: open_record(dict(rec, **{k: t[k] for k in t if k != "name"}),
                                        aes_key, None, vol, fid),
                name + " tampered (vector) " + t["name"])


def check_derive(v):
    name = "derive %s" % v["name"]
    vol, fid, salt, key = h(v, "volume_id"), h(v, "file_id"), h(v, "salt"), h(v, "hmac_key")
    msg = derive_msg(vol, fid, salt)
    eq(msg, h(v, "msg"), name + " msg")
    eq(len(msg), 100, name + " msg length")
    dek = hmac_sha256(key, msg)
    eq(dek, h(v, "dek"), name + " DEK")
    rec = {"mode": "derive", "chain": v["chain"], "version": v["version"], "iv": "", "wrapped": "",
           "salt": v["salt"]}
    eq(open_record(rec, None, key, vol, fid), dek, name + " open record")
    ok(open_record(rec, None, key, flip(vol, 0), fid) != dek, name + " other volume, other DEK")
    ok(open_record(rec, None, key, vol, flip(fid, 9)) != dek, name + " other file, other DEK")
    ok(open_record(rec, None, flip(key, 0), vol, fid) != dek, name + " other KEK, other DEK")
    rejects(lambda: open_record(dict(rec, salt=v["salt"][:-2]), None, key, vol, fid),
            name + " 31-byte salt")
    rejects(lambda: open_record(dict(rec, iv="00" * 12), None, key, vol, fid),
            name + " record with IV")


def volume_key_msg(volume_id, purpose):
    check_id("volume id", volume_id)
    if not re.fullmatch(r"[a-z0-9-]{1,32}", purpose):
        raise Reject("volume key purpose %r" % purpose)
    return lp(b"coffer/volume-key/v1") + lp(volume_id) + lp(purpose.encode())


def check_volume_key(v):
    name = "volume key %s" % v["name"]
    vol, key = h(v, "volume_id"), h(v, "hmac_key")
    msg = volume_key_msg(vol, v["purpose"])
    eq(msg, h(v, "msg"), name + " msg")
    got = hmac_sha256(key, msg)
    eq(got, h(v, "key"), name + " key")
    other = "names" if v["purpose"] != "names" else "replica"
    ok(hmac_sha256(key, volume_key_msg(vol, other)) != got, name + " other purpose, other key")
    ok(hmac_sha256(key, volume_key_msg(flip(vol, 0), v["purpose"])) != got, name + " other volume, other key")
    rejects(lambda: volume_key_msg(vol, "Replica"), name + " upper-case purpose")


def check_hsm(v):
    name = "hsm label %s" % v["name"]
    vol, chain, ver = h(v, "volume_id"), v["chain"], v["version"]
    eq(hsm_label(vol, chain, ver, "aes"), v["aes_label"], name + " aes")
    eq(hsm_label(vol, chain, ver, "hmac"), v["hmac_label"], name + " hmac")
    if "selftest_aad" in v:
        eq(selftest_aad(vol, chain, ver), h(v, "selftest_aad"), name + " self-test AAD")


def check_passphrase(v):
    name = "passphrase %s" % v["name"]
    vol = h(v, "volume_id")
    pw = h(v, "passphrase")
    ok(pw.decode("utf-8") == v["passphrase_text"], name + " passphrase is the UTF-8 of its text")
    salt, t, m, p = h(v, "salt"), v["t"], v["m"], v["p"]
    M = master_key(pw, salt, t, m, p)
    eq(M, h(v, "master"), name + " Argon2id master key")
    kwk, check = kwk_of(M, vol), check_of(M, vol)
    eq(kwk, h(v, "kwk"), name + " KWK")
    eq(check, h(v, "check"), name + " check")
    params = encode_params(t, m, p, salt, check)
    eq(params, h(v, "params"), name + " params blob")
    pr = parse_params(h(v, "params"))
    eq((pr["t"], pr["m"], pr["p"], pr["salt"], pr["check"]), (t, m, p, salt, check),
       name + " params parse")
    eq(unlock(pw, params, vol), kwk, name + " unlock")
    rejects(lambda: unlock(pw + b"!", params, vol), name + " wrong passphrase")
    rejects(lambda: unlock(pw, params, flip(vol, 7)), name + " params of another volume")
    rejects(lambda: unlock(pw, params[:31] + flip(params[31:], 0), vol), name + " altered check")
    rejects(lambda: unlock(pw, params[:15] + flip(params[15:31], 0) + params[31:], vol),
            name + " altered salt")
    for mv in v["materials"]:
        mname = "%s material %s/v%d" % (name, mv["chain"] or "volume", mv["version"])
        chain, ver = mv["chain"], mv["version"]
        kek = h(mv, "aes_key") + h(mv, "hmac_key")
        eq(kek_aad(vol, chain, ver), h(mv, "aad"), mname + " AAD")
        mat = seal_material(kwk, h(mv, "nonce"), kek, vol, chain, ver)
        eq(mat, h(mv, "material"), mname + " sealed")
        eq(len(mat), MATERIAL_LEN, mname + " length")
        eq(open_material(kwk, h(mv, "material"), vol, chain, ver), (h(mv, "aes_key"), h(mv, "hmac_key")),
           mname + " open")
        for i in (0, 1, 13, 92):
            rejects(lambda i=i: open_material(kwk, flip(mat, i), vol, chain, ver),
                    mname + " flipped byte %d" % i)
        rejects(lambda: open_material(kwk, mat, vol, chain, ver + 1), mname + " other version")
        rejects(lambda: open_material(kwk, mat, vol, other_chain(chain), ver), mname + " other chain")
        rejects(lambda: open_material(kwk, mat, flip(vol, 1), chain, ver), mname + " other volume")
        rejects(lambda: open_material(kwk, mat[:-1], vol, chain, ver), mname + " truncated")
        # The KEK's keys work as an HSM version's (9.5.3): wrap and derive with them.
        if "wrap" in mv:
            check_wrap(dict(mv["wrap"], aes_key=mv["aes_key"], name=mname + " wrap"))
        if "derive" in mv:
            check_derive(dict(mv["derive"], hmac_key=mv["hmac_key"], name=mname + " derive"))


def check_edge_params(v):
    p = parse_params(h(v, "params"))
    ok((p["t"], p["m"], p["p"]) == (v["t"], v["m"], v["p"]), "edge params %s decode" % v["name"])


def check_bad_params(v):
    rejects(lambda: parse_params(h(v, "params")), "bad params %s" % v["name"])


def check_bad_record(v):
    rec = v["record"]
    rejects(lambda: check_record(rec), "bad record %s" % v["name"])


def check_bad_chain(v):
    rejects(lambda: check_ref(v["chain"], v["version"]), "bad KEK ref %s" % v["name"])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "..", "keys", "testdata", "vectors.json")
    with open(path) as f:
        doc = json.load(f)
    sections = [("wrap", check_wrap), ("derive", check_derive), ("hsm", check_hsm),
                ("passphrase", check_passphrase), ("edge_params", check_edge_params),
                ("bad_params", check_bad_params),
                ("bad_records", check_bad_record), ("bad_refs", check_bad_chain),
                ("volume_keys", check_volume_key)]
    for key, fn in sections:
        vs = doc.get(key) or []
        ok(len(vs) > 0, "vectors.json has no %r vectors" % key)
        for v in vs:
            try:
                fn(v)
            except Exception as e:
                ok(False, "%s %s: %r" % (key, v.get("name"), e))
    # Self-checks of the checker: its own refusals, so a lax parser cannot pass silently.
    rejects(lambda: check_ref("volume", 1), "chain 'volume' is reserved")
    rejects(lambda: check_ref("u1000", 0), "version 0")
    rejects(lambda: check_ref("x" * 33, 1), "33-character chain")
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
