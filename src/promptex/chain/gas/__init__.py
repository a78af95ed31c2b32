"""Gas scenarios: the transactions `bench/gas.py` measures and the contract tests' gas
pins (tests/contracts/test_*_gas.py) assert, each in a described steady state. One
function per scenario, shared by both, so that the pinned figure and the printed one
come from the same transactions."""
