"""The instant-exit request in the browser (issue 21): dashboard/src/exit.ts (on viem) hashes
an ExitRequest to the same EIP-712 digest as promptex.protocol.vault, case for case, and its
request body parses to the same terms at the coordinator's door. esbuild bundles exit.ts
with viem (~1 s)."""

from __future__ import annotations

import random

import pytest
from eth_account import Account

from promptex.coordinator.requests import Place, Refused, parse_exit_request
from promptex.protocol.vault import exit_request_digest
from ts_cases import ts_cases


def cases() -> list[dict]:
    rng = random.Random(21)
    out = []
    for _ in range(12):
        terms = {
            "account": Account.from_key(rng.randbytes(32)).address,
            "asset": Account.from_key(rng.randbytes(32)).address,
            "amount": rng.choice([1, 12_500_000, 2**256 - 1, rng.randrange(10**30)]),
            "nonce": rng.randrange(2**64),
            "expiry": rng.randrange(2**40),
        }
        out.append({"chain_id": rng.choice([1, 31337, 8453]), "vault": Account.from_key(rng.randbytes(32)).address,
                    "terms": terms})  # fmt: skip
    return out


def test_exit_request__front_end__same_digest_and_body_as_python(tmp_path):
    run = ts_cases("exit", tmp_path)
    given = cases()
    wire = [{**c, "terms": {k: str(v) if isinstance(v, int) else v for k, v in c["terms"].items()}} for c in given]
    answers = run(wire)
    assert len(answers) == len(given) == 12
    for case, got in zip(given, answers, strict=True):
        assert got["digest"] == "0x" + exit_request_digest(chain_id=case["chain_id"], vault=case["vault"],
                                                           **case["terms"]).hex(), case  # fmt: skip
        # The body the page posts reaches the door's parser as the same terms (the dummy
        # signature is then refused, after every field parsed).
        place = Place(case["chain_id"], case["vault"], {"USDC": case["terms"]["asset"]})
        with pytest.raises(Refused) as refused:
            parse_exit_request(got["body"], place, now=case["terms"]["expiry"] - 1)
        assert refused.value.code == "bad_signature", refused.value.message
