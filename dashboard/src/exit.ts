// An instant exit the wallet asks for (issue 21): the EIP-712 ExitRequest the wallet signs to
// the coordinator's door, mirrored from promptex/protocol/vault.py (tests/dashboard/
// test_exit_request.py checks the digests case for case against it). The door answers with a
// Release the coordinator co-signed if the amount is free of unsettled usage; the wallet then
// sends it to the vault's exit_instant. The vault never sees the request itself.
import { hashTypedData, type Address, type Hex } from "viem";
import { vaultDomain } from "./signed";

export const EXIT_REQUEST_SECONDS = 300n; // a request is answered until then (chain time)

export const EXIT_REQUEST_TYPES = {
  ExitRequest: [
    { name: "account", type: "address" },
    { name: "asset", type: "address" },
    { name: "amount", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "expiry", type: "uint256" },
  ],
} as const;

export interface ExitTerms {
  account: Address;
  asset: Address;
  amount: bigint; // smallest units
  nonce: bigint; // the door's request nonce for this wallet (GET /api/exits/nonce)
  expiry: bigint; // unix seconds, chain time
}

/** The release the door answers with (`promptex coordinator release`'s JSON). */
export interface Release {
  address: Address;
  asset: string;
  asset_address: Address;
  amount: string;
  nonce: number;
  expiry: number;
  signature: Hex;
}

/** What the wallet is asked to sign (eth_signTypedData_v4): it shows the amount and the expiry. */
export function exitRequestTypedData(chainId: number, vault: Address, terms: ExitTerms) {
  return { domain: vaultDomain(chainId, vault), types: EXIT_REQUEST_TYPES, primaryType: "ExitRequest" as const, message: terms };
}

export function exitRequestDigest(chainId: number, vault: Address, terms: ExitTerms): Hex {
  return hashTypedData(exitRequestTypedData(chainId, vault, terms));
}

/** The JSON body the door takes: the terms as decimal strings, and the wallet's signature. */
export function exitRequestBody(terms: ExitTerms, signature: Hex): Record<string, string> {
  return {
    account: terms.account,
    asset: terms.asset,
    amount: terms.amount.toString(),
    nonce: terms.nonce.toString(),
    expiry: terms.expiry.toString(),
    signature,
  };
}
