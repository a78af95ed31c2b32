"""The ≥ 10-digit-integer scan (issue 21): text a person reads never shows an amount in
smallest units — an integer of ten or more digits (grouped or not) beside an asset
symbol or the word "units". Machine output (`--json`, `*_units` fields) is not scanned."""

from __future__ import annotations

import re

SYMBOLS = "USDC|CLD|GPT|GEM|LLM|units|smallest units|token units|USD micro"
RAW = re.compile(
    rf"(?<![\w.,])(?:\d{{10,}}|\d{{1,3}}(?:,\d{{3}}){{3,}})(?:\.\d+)?(?![\w.,])\s*(?:\(?(?:{SYMBOLS})\b)",
)


def raw_amounts(text: str) -> list[str]:
    return [m.group(0) for m in RAW.finditer(text)]


def assert_human(text: str, where: str = "output") -> None:
    found = raw_amounts(text)
    assert not found, f"{where} shows amounts in smallest units: {found}"
