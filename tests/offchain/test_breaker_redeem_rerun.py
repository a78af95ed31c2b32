"""xbreak: `promptex redeem` run again as its pending message says, while `promptex agent
run` (always running under `promptex up`) finished that redemption meanwhile: the rerun
found nothing open and sold a second time for one need. The message now names the
redemption to resume (`--resume ID`), which never starts a new sale."""

from __future__ import annotations

import pytest
from agent_fakes import PAYEE, USER
from click.testing import CliRunner

from human_units import assert_human
from promptex.agent.service import RedemptionPending
from promptex.agent.store import RELEASED
from promptex.cli import agent as cli_agent
from promptex.protocol.units import USD_MICRO as USD


@pytest.fixture
def world(agent_world):
    return agent_world


def _cli(world, monkeypatch, *extra: str) -> tuple[int, str]:
    monkeypatch.setattr(cli_agent, "make_agent", world.agent)
    args = ["--user", USER, "--token", "CLD", "--usd", "20", "--to", "anthropic", *extra]
    result = CliRunner().invoke(cli_agent.redeem, args)
    assert_human(result.output, "promptex redeem")
    return result.exit_code, result.output


def _sold_once(world) -> bool:
    s = world.chain.s
    return s.redeems == 1 and s.releases == 1 and len(world.billing.purchases) == 1 and s.usdc[PAYEE] == 20 * USD


def test_cli_redeem__pending__the_agent_finishes_it__the_rerun_the_message_names_sells_nothing_more(world, monkeypatch):
    world.chain.hold = True
    code, out = _cli(world, monkeypatch)
    assert code == 1 and "redemption 1 ($20.00 of anthropic credits for CLD) is selling" in out
    assert "run this same command again" in out
    world.chain.mine()
    world.chain.hold = False
    assert world.agent().run_once(check_rules=False).advanced == {1: RELEASED}  # `promptex agent run`, meanwhile
    rerun = ("--resume", "1") if "again with --resume 1" in out else ()  # as the message says
    code, out = _cli(world, monkeypatch, *rerun)
    assert (code, out) == (0, "redemption 1: released\n")
    assert _sold_once(world) and len(world.agent().store.redemptions()) == 1


def test_redeem_resume__open__finished_as_the_bare_rerun_would(world):
    world.chain.hold = True
    with pytest.raises(RedemptionPending):
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic")
    with pytest.raises(RedemptionPending):  # still not mined: nothing signed anew
        world.agent().redeem(USER, "CLD", 20 * USD, "anthropic", resume=1)
    assert len(world.chain.mempool) == 1
    world.chain.mine()
    world.chain.hold = False
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic", resume=1).status == RELEASED
    assert _sold_once(world)


def test_redeem_resume__another_users_or_other_terms_or_unknown__refused_nothing_sold(world, monkeypatch):
    assert world.agent().redeem(USER, "CLD", 20 * USD, "anthropic").status == RELEASED
    for terms, resume in (((25 * USD,), 1), ((20 * USD,), 2)):
        with pytest.raises(ValueError):
            world.agent().redeem(USER, "CLD", *terms, "anthropic", resume=resume)
    code, out = _cli(world, monkeypatch, "--resume", "7")
    assert code == 1 and "redemption refused:" in out and "no redemption 7 for anthropic" in out
    assert _sold_once(world) and len(world.agent().store.redemptions()) == 1


def test_cli_redeem__the_node_refuses_its_stored_redeem__named_pending_not_a_traceback__sold_once(world, monkeypatch):
    """`agent run` (same key) signed another redemption's transaction at the same nonce a
    moment before: the node refuses this one's broadcast ("replacement transaction
    underpriced"). Its redeem is stored, so a later pass resolves it (dropped: the nonce
    went to the other — once that is a reorg window deep, 7cb91ee, as the fake's burnt nonce
    is no transaction of the log) and sells it: the command said nothing of that, only a
    traceback."""
    from web3.exceptions import Web3RPCError

    real = world.chain.broadcast
    refused: list[str] = []

    def broadcast(raw: str) -> None:
        if not refused:
            refused.append(raw)
            world.chain.burn_nonce()  # the other process's transaction holds the nonce
            raise Web3RPCError("replacement transaction underpriced")
        real(raw)

    monkeypatch.setattr(world.chain, "broadcast", broadcast)
    code, out = _cli(world, monkeypatch)
    assert code == 1 and out.startswith("Error: redemption 1 ($20.00 of anthropic credits for CLD) is selling")
    assert "which the node did not take (replacement transaction underpriced)" in out and "--resume 1" in out
    assert world.agent().run_once(check_rules=False).advanced == {}  # selling: its nonce's taker not yet deep
    world.chain.mine_blocks(world.agent().machine.reorg_window)
    assert world.agent().run_once(check_rules=False).advanced == {1: RELEASED}  # dropped, signed again, sold
    assert _sold_once(world) and len(world.agent().store.redemptions()) == 1
