"""Contract addresses, ABIs and deployment of the on-chain half of PROMPTEX."""
