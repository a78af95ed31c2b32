"""The one door to a node: deployments (addresses and ABIs), ape deploy and seeding code,
reading and sending through JSON-RPC. Pure formats and maths live in `promptex.protocol`."""
