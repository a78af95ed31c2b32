// The usage Merkle tree's leaf and proof check (as src/promptex/protocol/merkle.py and
// OpenZeppelin's MerkleProof): checked here, in the browser, against the root on chain.
// Leaf version 1 (batches planned before exact token accounting) and version 2 (which
// commits to the version and to the cached and reasoning token counts).
import { concat, encodeAbiParameters, keccak256, parseAbiParameters, type Address, type Hex } from "viem";

const LEAF_V1 = parseAbiParameters("string, address, string, uint256, uint256, uint256, uint256");
const LEAF_V2 = parseAbiParameters(
  "uint256, string, address, string, uint256, uint256, uint256, uint256, uint256, uint256, uint256, uint256",
);

export interface LeafFields {
  request_id: string;
  account: Address;
  model: string;
  input_tokens: number | string;
  output_tokens: number | string;
  cost: string;
  lot_id: number | string;
  cache_read_tokens?: number | string;
  cache_write_tokens?: number | string;
  cache_write_1h_tokens?: number | string;
  reasoning_tokens?: number | string;
}

export function leafHash(r: LeafFields, version = 1): Hex {
  if (version === 1) {
    const encoded = encodeAbiParameters(LEAF_V1, [
      r.request_id,
      r.account,
      r.model,
      BigInt(r.input_tokens),
      BigInt(r.output_tokens),
      BigInt(r.cost),
      BigInt(r.lot_id),
    ]);
    return keccak256(keccak256(encoded));
  }
  if (version !== 2) throw new Error(`unknown usage leaf version ${version}`);
  const count = (n: number | string | undefined): bigint => {
    if (n === undefined) throw new Error("a version-2 usage record lacks a token count");
    return BigInt(n);
  };
  const encoded = encodeAbiParameters(LEAF_V2, [
    2n,
    r.request_id,
    r.account,
    r.model,
    BigInt(r.input_tokens),
    BigInt(r.output_tokens),
    count(r.cache_read_tokens),
    count(r.cache_write_tokens),
    count(r.cache_write_1h_tokens),
    count(r.reasoning_tokens),
    BigInt(r.cost),
    BigInt(r.lot_id),
  ]);
  return keccak256(keccak256(encoded));
}

export function hashPair(a: Hex, b: Hex): Hex {
  return a.toLowerCase() < b.toLowerCase() ? keccak256(concat([a, b])) : keccak256(concat([b, a]));
}

export function verify(proof: Hex[], root: Hex, leaf: Hex): boolean {
  return proof.reduce((node, sibling) => hashPair(node, sibling), leaf).toLowerCase() === root.toLowerCase();
}
