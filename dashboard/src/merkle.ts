// The usage Merkle tree's leaf and proof check (as src/promptex/coordinator/merkle.py and
// OpenZeppelin's MerkleProof): checked here, in the browser, against the root on chain.
import { concat, encodeAbiParameters, keccak256, parseAbiParameters, type Address, type Hex } from "viem";

const LEAF = parseAbiParameters("string, address, string, uint256, uint256, uint256, uint256");

export interface LeafFields {
  request_id: string;
  account: Address;
  model: string;
  input_tokens: number | string;
  output_tokens: number | string;
  cost: string;
  lot_id: number | string;
}

export function leafHash(r: LeafFields): Hex {
  const encoded = encodeAbiParameters(LEAF, [
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

export function hashPair(a: Hex, b: Hex): Hex {
  return a.toLowerCase() < b.toLowerCase() ? keccak256(concat([a, b])) : keccak256(concat([b, a]));
}

export function verify(proof: Hex[], root: Hex, leaf: Hex): boolean {
  return proof.reduce((node, sibling) => hashPair(node, sibling), leaf).toLowerCase() === root.toLowerCase();
}
