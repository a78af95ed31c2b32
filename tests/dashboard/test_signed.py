"""Signed mode in the browser (issue 23): the playground's SessionKey and Voucher messages
(dashboard/src/signed.ts, on viem) hash to the same EIP-712 digests as promptex.protocol.vault,
its session key's voucher signatures are byte for byte Python's, and its header parses with
the buyer side's wire parser. esbuild bundles signed.ts with viem (~1 s)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest
from eth_account import Account

from anvil_node import ROOT
from promptex.buyerside.wire import parse_voucher
from promptex.protocol.vault import recover_voucher_signer, session_key_digest, sign_voucher, voucher_digest

DASHBOARD = ROOT / "dashboard"
ESBUILD = DASHBOARD / "node_modules" / ".bin" / "esbuild"


def address(rng: random.Random) -> str:
    return Account.from_key(rng.randbytes(32)).address


def cases() -> list[dict]:
    rng = random.Random(23)
    out = []
    for _ in range(12):
        chain_id, vault = rng.choice([1, 31337, 8453]), address(rng)
        session = {
            "account": address(rng), "asset": address(rng), "key": address(rng), "lanes": rng.randint(1, 64),
            "maximum": rng.choice([5_000_000, 2**96 - 1, rng.randrange(10**24)]), "expiry": rng.randrange(2**40),
            "nonce": rng.randrange(1000),
        }  # fmt: skip
        out.append({"kind": "session", "chain_id": chain_id, "vault": vault, "terms": session})
        voucher = {
            "account": session["account"], "asset": session["asset"], "session": session["nonce"],
            "lane": rng.randrange(64), "ceiling": rng.choice([0, 1, rng.randrange(2**128)]),
        }  # fmt: skip
        key = "0x" + rng.randbytes(32).hex()
        out.append({"kind": "voucher", "chain_id": chain_id, "vault": vault, "terms": voucher, "private_key": key})
    return out


def test_signed__front_end_messages__same_digests_signatures_and_header_as_python(tmp_path):
    if shutil.which("node") is None or not ESBUILD.exists():
        pytest.skip("needs node and dashboard/node_modules (make setup)")
    module = tmp_path / "signed.mjs"
    subprocess.run(
        [str(ESBUILD), str(DASHBOARD / "src" / "signed.ts"), "--bundle", "--format=esm", "--platform=node",
         f"--outfile={module}", "--log-level=error"],
        check=True, timeout=120, cwd=DASHBOARD,
    )  # fmt: skip
    given = cases()
    wire = [{**c, "terms": {k: str(v) if isinstance(v, int) else v for k, v in c["terms"].items()}} for c in given]
    run = subprocess.run(
        ["node", str(DASHBOARD / "tests" / "signed_cases.mjs")],
        input=json.dumps(wire),
        env={**os.environ, "SIGNED_MODULE": str(module)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers = json.loads(run.stdout)
    assert len(answers) == len(given) == 24
    for case, answer in zip(given, answers, strict=True):
        place = {"chain_id": case["chain_id"], "vault": case["vault"]}
        if case["kind"] == "session":
            assert answer["digest"] == "0x" + session_key_digest(**place, **case["terms"]).hex(), case
            continue
        assert answer["digest"] == "0x" + voucher_digest(**place, **case["terms"]).hex(), case
        expected = sign_voucher(case["private_key"], **place, **case["terms"])
        assert answer["sig"] == "0x" + expected.hex(), case
        voucher = parse_voucher(answer["header"])
        terms = case["terms"]
        assert (voucher.session, voucher.lane, voucher.ceiling) == (terms["session"], terms["lane"], terms["ceiling"])
        signer = recover_voucher_signer(voucher.signature, **place, **terms)
        assert signer == answer["key"] == Account.from_key(case["private_key"]).address
