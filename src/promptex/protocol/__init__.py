"""What the contracts expect, in plain Python: units and provider constants, packed
words and EIP-712 messages with their signers, the usage Merkle tree, and exact
mirrors of the contracts' maths (AMM, Perp, Options, redemption slippage).

Pure and import-light on purpose: no ape, no web3, no database, no other promptex
package, so that every service (the gateway and metering included) can import it
without pulling a node client in. Talking to a node is `promptex.chain`'s job.
"""
