import click
import pytest
from click.testing import CliRunner

from promptex.chain.deployments import DeployedContract, Deployment, save_deployment
from promptex.cli import main
from promptex.cli.amounts import token_units, usd_micro
from promptex.config import settings


def test_deployment_show__missing_network__one_line_error_and_nonzero_exit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["deployment", "show", "--network", "nowhere"])
    assert result.exit_code == 1
    assert "no deployment for network 'nowhere'" in result.output
    assert "or run this in the folder `promptex up` runs in" in result.output  # beside no market: where to go
    assert "Traceback" not in result.output


def test_deployment_show__recorded__lists_addresses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = Deployment(
        network="local",
        chain_id=31337,
        block_number=7,
        deployer="0x" + "11" * 20,
        contracts={"CreditEscrow": DeployedContract(address="0x" + "22" * 20, abi="deployments/abi/x.json")},
    )
    save_deployment(record, tmp_path / "deployments")
    result = CliRunner().invoke(main, ["deployment", "show"])
    assert result.exit_code == 0, result.output
    assert "CreditEscrow" in result.output and "0x" + "22" * 20 in result.output


@pytest.mark.parametrize(
    "parse, text, expected",
    [
        (usd_micro, "19.99", 19_990_000),
        (usd_micro, "20", 20_000_000),
        (token_units, "0.5", 5 * 10**17),
        (token_units, "0.000000000000000001", 1),
    ],
)
def test_amounts__whole_units__exact_smallest_units(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    "parse, text, message",
    [
        (usd_micro, "1.0000001", "at most 6 decimals"),
        (usd_micro, "twenty", "is not a dollar amount"),
        (usd_micro, "0", "a positive amount"),
        (token_units, "-1", "a positive amount"),
        (token_units, "0.0000000000000000001", "at most 18 decimals"),
        (token_units, "x", "is not a token amount"),
    ],
)
def test_amounts__not_positive_or_too_precise__refused(parse, text, message):
    with pytest.raises(click.BadParameter, match=message):
        parse(text)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PROMPTEX_COORDINATOR_REORG_WINDOW_BLOCKS", "0", "greater than or equal to 1"),
        ("PROMPTEX_GATEWAY_PORT", "abc", "valid integer"),
        ("PROMPTEX_GATEWAY_KEY_CACHE_SECONDS", "s3cret-looking", "valid number"),
    ],
)
def test_bad_setting__named_as_it_is_set__one_line_and_exit_1(tmp_path, monkeypatch, name, value, says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    settings.cache_clear()  # read the environment again
    try:
        result = CliRunner(mix_stderr=False).invoke(main, ["coordinator", "--once"])
    finally:
        settings.cache_clear()
    assert result.exit_code == 1
    shown = "" if "KEY" in name else f"={value!r}"  # a setting that may hold a secret: never echoed
    assert result.stderr.startswith(f"Error: bad setting {name}{shown}: ")
    assert "KEY" not in name or value not in result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fake_upstream__says_where_it_serves_and_which_keys_it_takes(monkeypatch):
    """A seller following the README starts it, then opens a lot on its URL: before, it said
    nothing at all (was it up? which key?)."""
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    result = CliRunner().invoke(main, ["fake-upstream", "--port", "9001"])
    assert result.exit_code == 0 and served and served[0]["port"] == 9001, result.output
    assert "fake upstream on http://127.0.0.1:9001/v1 (OpenAI and Anthropic APIs; any non-empty key)" in result.output
    keyed = CliRunner().invoke(main, ["fake-upstream", "--accept-key", "sk-1"])
    assert "http://127.0.0.1:9000/v1 (OpenAI and Anthropic APIs; the keys --accept-key names)" in keyed.output
