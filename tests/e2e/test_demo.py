"""The README's first command runs this script: it must finish and reconcile."""


def test_demo__fresh_anvil__every_step_reconciles(ape_run):
    result = ape_run("demo")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo complete: every number reconciles" in result.stdout
    assert "does not reconcile" not in result.stdout
    for step in (
        "the indexer credited both deposits: ledger == vault",
        "buyer 1 charged exactly the meter",
        "CLD supply fell by exactly the metered cost",
        "lot B drawn down by the list value it served, in the same call",
        "promptex reconcile: books reconcile with the chain",
        "promptex reconcile at the end: books reconcile with the chain",
        "proves into CLD epoch 1's root",
        "seller B received its earnings",
        "buyer 2 got back everything not spent",
        "after every exit: ledger == vault for both buyers",
        "rule fired; redemption released",
        "the escrow released against the billing signer's EIP-712 receipt",
        "the agent's operator was reimbursed $20",
    ):
        assert step in result.stdout
