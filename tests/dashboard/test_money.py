"""The front end's formatter (dashboard/src/money.ts) and the Python one
(promptex.protocol.units) answer the same cases the same way: amounts at the asset's
sensible precision, dust, rounding down/up/nearest, negative amounts, uint256 extremes,
dollars at a TWAP, the "unlimited" sentinel; and whole units typed by a person parse back
to exactly the smallest units (no float on the way). esbuild bundles money.ts (~0.1 s)."""

from __future__ import annotations

import random

from promptex.protocol.providers import PROVIDER_TOKENS
from promptex.protocol.units import (
    MAX_UINT256,
    PRICE_UNIT,
    amount_text,
    decimals_of,
    display_decimals,
    money,
    usd_text,
    whole_units,
)
from ts_cases import ts_cases

FACES = {t.symbol: t.face_value_usd_micro for t in PROVIDER_TOKENS}
SYMBOLS = ["USDC", *FACES, "XYZ"]  # XYZ: a token without a known face value
ROUNDINGS = ("nearest", "down", "up")


def interesting_amounts(rng: random.Random) -> list[int]:
    fixed = [0, 1, 5, 9, 10, 49, 50, 99, 100, 123, 4_500, 999_999, 1_000_000, 1_004_999, 1_005_000, 12_345_678]
    fixed += [10**18 - 1, 10**18, 10**18 + 1, 5 * 10**15, 123_456_789_012_345_678, 14_587_482_219_061_166_430]
    fixed += [2**128 - 1, MAX_UINT256, 79_228_162_514_264_337_593_543_950_335]
    fixed += [rng.randrange(10 ** rng.randint(1, 30)) for _ in range(60)]
    return fixed + [-a for a in fixed[1:12]] + [-rng.randrange(10**24) for _ in range(10)]


def cases() -> list[tuple[dict, str]]:
    """(the case for money.ts, the Python formatter's answer)."""
    rng = random.Random(21)
    out: list[tuple[dict, str]] = []
    amounts = interesting_amounts(rng)
    for amount in amounts:
        for decimals, places in ((6, 2), (18, 2), (18, 3), (18, 4), (0, 2), (8, 8)):
            rounding = rng.choice(ROUNDINGS)
            case = {"fn": "amount_text", "amount": str(amount), "decimals": decimals, "places": places}
            out.append(({**case, "rounding": rounding}, amount_text(amount, decimals, places, rounding)))  # type: ignore[arg-type]
        rounding = rng.choice(ROUNDINGS)
        out.append(({"fn": "usd_text", "amount": str(amount), "rounding": rounding}, usd_text(amount, rounding)))  # type: ignore[arg-type]
        for symbol in SYMBOLS:
            twap = rng.choice([None, PRICE_UNIT * 4, rng.randrange(1, PRICE_UNIT * 100)])
            unlimited = rng.choice([None, None, 2**96 - 1])
            rounding = rng.choice(ROUNDINGS)
            case = {"fn": "money", "amount": str(amount), "symbol": symbol, "rounding": rounding}
            case["twap"] = None if twap is None else str(twap)
            case["unlimited"] = None if unlimited is None else str(unlimited)
            case["face"] = FACES.get(symbol)
            out.append((case, money(amount, symbol, twap=twap, unlimited=unlimited, rounding=rounding)))  # type: ignore[arg-type]
    for symbol in SYMBOLS:
        out.append(({"fn": "display_decimals", "symbol": symbol, "face": FACES.get(symbol)}, display_decimals(symbol)))  # type: ignore[arg-type]
    for amount in amounts:
        if amount >= 0:
            for symbol in ("USDC", "CLD"):
                decimals = decimals_of(symbol)
                out.append(({"fn": "parse", "text": whole_units(amount, decimals), "decimals": decimals}, str(amount)))
    refused = ["", "1e5", "-3", "1.2.3", "0x10", "1.0000001", " 12 5", "NaN", "Infinity"]
    out += [({"fn": "parse", "text": text, "decimals": 6}, "refused") for text in refused]
    exact = (("1,234.5", "1234500000"), (".5", "500000"), ("0.000001", "1"))
    out += [({"fn": "parse", "text": text, "decimals": 6}, units) for text, units in exact]
    return out


def test_money__front_end_and_python__same_text_for_every_case(tmp_path):
    run = ts_cases("money", tmp_path)
    pairs = cases()
    answers = run([case for case, _ in pairs])
    differ = []
    for (case, expected), answer in zip(pairs, answers, strict=True):
        if expected == "refused":
            if not str(answer).startswith("error: "):
                differ.append((case, "a refusal", answer))
        elif str(answer) != str(expected):
            differ.append((case, expected, answer))
    assert not differ, f"{len(differ)} of {len(pairs)} cases differ, e.g. {differ[:5]}"
    assert len(pairs) > 1_000
