"""The scan itself: what it finds (the issue's examples) and what it leaves (people's amounts)."""

from human_units import raw_amounts


def test_scan__finds_the_issue_s_raw_amounts() -> None:
    assert raw_amounts("14587482219061166430 CLD (smallest units)") == ["14587482219061166430 CLD"]
    assert raw_amounts("sold 4698712441181960321565 CLD units") == ["4698712441181960321565 CLD"]
    assert raw_amounts("79,228,162,514,264,337,593,543.95 USDC in total") == ["79,228,162,514,264,337,593,543.95 USDC"]
    assert raw_amounts("a cost of 1234567890 units") == ["1234567890 units"]
    assert raw_amounts("the daily limit leaves 240341030143964715662 token units") == [
        "240341030143964715662 token units"
    ]


def test_scan__leaves_whole_units_addresses_and_hashes() -> None:
    assert raw_amounts("14.59 CLD ($61.53); 250.50 USDC; 1,234,567.00 USDC; unlimited") == []
    assert raw_amounts("wallet 0x976EA74026E726554dB657fA54763abd0C3a0aa9 holds 3.00 USDC") == []
    assert raw_amounts("block 12345678901 of chain 31337") == []
