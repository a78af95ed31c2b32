// The slices of the contracts' ABIs the dashboard calls (tests/dashboard checks them
// against the compiled ABIs in deployments/abi so a contract change cannot drift past).
import { parseAbi } from "viem";

export const erc20Abi = parseAbi([
  "function balanceOf(address) view returns (uint256)",
  "function allowance(address, address) view returns (uint256)",
  "function approve(address to, uint256 amount) returns (bool)",
  "function decimals() view returns (uint8)",
  "function symbol() view returns (string)",
]);

export const mockUsdcAbi = parseAbi(["function mint(address owner, uint256 amount)"]);

export const vaultAbi = parseAbi([
  "function deposit(address asset, uint256 amount)",
  "function request_exit(address asset, uint256 amount) returns (uint256)",
  "function cancel_exit(address asset)",
  "function complete_exit(address asset, uint256 min_out) returns (uint256)",
  "function claim(address asset) returns (uint256)",
  "function set_spend_cap(address asset, uint256 per_epoch, uint256 total, uint256 expiry)",
  "function balance_of(address account, address asset) view returns (uint256)",
  "function spend_cap(address account, address asset) view returns (uint256, uint256, uint256)",
  "function pending_exits(address arg0, address arg1) view returns ((uint256 amount, uint256 unlock_at))",
  "function claimable(address arg0, address arg1) view returns (uint256)",
  "function asset_policy(address arg0) view returns (uint8)",
  "function thaw_period() view returns (uint256)",
  "function epoch_length() view returns (uint256)",
  "function usage_roots(address arg0, uint256 arg1) view returns (bytes32)",
]);

export const routerAbi = parseAbi([
  "function get_amounts_out(uint256 amount_in, address[] path, uint256[] fees) view returns (uint256[])",
  "function swap_exact_in(uint256 amount_in, uint256 min_out, address[] path, uint256[] fees, address to, uint256 deadline) returns (uint256)",
  "function FEE_DENOMINATOR() view returns (uint256)",
]);

export const escrowAbi = parseAbi([
  "function lot_count() view returns (uint256)",
  "function lots(uint256 arg0) view returns ((address seller, address token, uint8 kind, uint8 status, uint16 rate_bps, uint64 expiry, uint256 face_value, uint256 capacity, uint256 seller_minted, uint256 consumed, uint256 last_epoch, uint256 bond, uint256 bond_released, bytes32 terms_hash))",
]);
