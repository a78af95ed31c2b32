"""The chain indexer: vault, escrow, factory, pool and redemption events into the ledger.

indexer = Indexer(ledger, RpcClient(url), Followed.from_deployment(load_deployment("local")))
indexer.catch_up()          # or serve(indexer, once=False, poll_seconds=2.0)
"""

from promptex.indexer.followed import Followed
from promptex.indexer.rpc import RpcClient
from promptex.indexer.service import Indexer, IndexerError, Options, Step, serve

__all__ = ["Followed", "Indexer", "IndexerError", "Options", "RpcClient", "Step", "serve"]
