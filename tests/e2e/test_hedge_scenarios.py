"""The enterprise hedging example (`ape run hedge_scenarios`) runs on a fresh anvil and its
numbers tell the story the README tells: a capped call or a long protects a buyer against
a rising price, a short does not, a put protects a seller of capacity."""


def test_hedge_scenarios__fresh_anvil__every_claim_checked_against_the_contracts(ape_run):
    result = ape_run("hedge_scenarios")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for claim in (
        "A: the capped call and the long pay when GPT rises",
        "A: the short LOSES when GPT rises",
        "B: flat, the call costs at most its premium",
        "C: GPT falls: call and long lose, the seller's put pays",
    ):
        assert f"✓ {claim}" in result.stdout
    assert "does not reconcile" not in result.stdout + result.stderr
