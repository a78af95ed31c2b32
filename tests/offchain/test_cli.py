from click.testing import CliRunner

from promptex.chain.deployments import DeployedContract, Deployment, save_deployment
from promptex.cli import main


def test_deployment_show__missing_network__one_line_error_and_nonzero_exit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["deployment", "show", "--network", "nowhere"])
    assert result.exit_code == 1
    assert "no deployment for network 'nowhere'" in result.output
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
