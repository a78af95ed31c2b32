"""Signed mode in the browser (issue 23): the playground's SessionKey and Voucher messages
(dashboard/src/signed.ts, on viem) hash to the same EIP-712 digests as promptex.protocol.vault,
its session key's voucher signatures are byte for byte Python's, and its header parses with
the buyer side's wire parser. esbuild bundles signed.ts with viem (~1 s)."""

from __future__ import annotations

import random

import pytest
from eth_account import Account

from promptex.buyerside.wire import parse_voucher
from promptex.protocol.vault import recover_voucher_signer, session_key_digest, sign_voucher, voucher_digest
from ts_cases import ts_cases


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


@pytest.fixture(scope="module")
def front_end(tmp_path_factory):
    """Runs cases through dashboard/src/signed.ts (bundled once per module)."""
    return ts_cases("signed", tmp_path_factory.mktemp("signed"))


def test_signed__front_end_messages__same_digests_signatures_and_header_as_python(front_end):
    given = cases()
    wire = [{**c, "terms": {k: str(v) if isinstance(v, int) else v for k, v in c["terms"].items()}} for c in given]
    answers = front_end(wire)
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


def test_signed__next_voucher__lane_total_plus_hold_within_the_session_maximum(front_end):
    key = Account.create()
    account, usdc, vault = address(random.Random(1)), address(random.Random(2)), address(random.Random(3))
    tab = {"chainId": 31337, "vault": vault, "account": account, "asset": usdc, "symbol": "USDC",
           "privateKey": "0x" + bytes(key.key).hex(), "key": key.address, "session": "4", "lanes": 2,
           "maximum": "5000000", "expiry": "2000000000"}  # fmt: skip

    def report(charged: tuple[int, int], busy: tuple[bool, bool] = (False, False), **change) -> dict:
        lanes = [{"session": 4, "lane": i, "charged_units": str(c), "settled_units": "0", "in_flight": b}
                 for i, (c, b) in enumerate(zip(charged, busy, strict=True))]  # fmt: skip
        return {"asset": "USDC", "session": 4, "key": key.address, "maximum": "5000000", "open": True,
                "data": lanes, **change}  # fmt: skip

    accepted = report((1_000, 0))  # lane 0 accepted a voucher of 2,000 (ceilings rise strictly per lane)
    accepted["data"][0]["voucher"] = {"session": 4, "lane": 0, "ceiling": "2000", "sig": "0x" + "00" * 65}
    given = [
        {"kind": "next", "tab": tab, "report": report((1_000, 0)), "hold": "300"},  # lane 0: 1,000 + 300
        {"kind": "next", "tab": tab, "report": report((1_000, 0), (True, False)), "hold": "300"},  # lane 1: 0 + 300
        {"kind": "next", "tab": tab, "report": report((4_000_000, 900_000)), "hold": "500000"},  # only 100,000 left
        {"kind": "next", "tab": tab, "report": report((4_000_000, 1_000_000)), "hold": "1"},  # spent
        {"kind": "next", "tab": tab, "report": report((0, 0), (True, True)), "hold": "1"},  # both lanes busy
        {"kind": "next", "tab": tab, "report": report((0, 0), session=None, key=None), "hold": "1"},  # not registered
        {"kind": "next", "tab": tab, "report": report((0, 0), open=False), "hold": "1"},  # ended
        {"kind": "next", "tab": tab, "report": accepted, "hold": "300"},  # above lane 0's accepted 2,000
    ]
    answers = front_end(given)
    place = {"chain_id": 31337, "vault": vault, "account": account, "asset": usdc, "session": 4}
    for answer, (lane, ceiling) in zip(answers[:3], [(0, 1_300), (1, 300), (0, 4_100_000)], strict=True):
        voucher = parse_voucher(answer["header"])
        assert (voucher.session, voucher.lane, voucher.ceiling) == (4, lane, ceiling), answer
        assert recover_voucher_signer(voucher.signature, **place, lane=lane, ceiling=ceiling) == key.address
    assert "maximum is spent" in answers[3]["error"]
    assert "in flight" in answers[4]["error"]
    assert answers[5] == {"header": None}  # the request goes capped until the chain registers it
    assert "has ended" in answers[6]["error"]
    assert parse_voucher(answers[7]["header"]).ceiling == 2_001
