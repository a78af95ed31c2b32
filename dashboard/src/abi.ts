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
  "function exit_instant(address asset, uint256 amount, uint256 min_out, uint256 nonce, uint256 expiry, bytes signature) returns (uint256)",
  "function cancel_exit(address asset)",
  "function complete_exit(address asset, uint256 min_out, bool sell) returns (uint256)",
  "function claim(address asset) returns (uint256)",
  "function set_spend_cap(address asset, uint256 per_epoch, uint256 total, uint256 expiry)",
  "function balance_of(address account, address asset) view returns (uint256)",
  "function spend_cap(address account, address asset) view returns (uint256, uint256, uint256)",
  "function pending_exits(address arg0, address arg1) view returns ((uint256 amount, uint256 unlock_at, uint256 paused_before, address market))",
  "function exit_unlocks_at(address account, address asset) view returns (uint256)",
  "function claimable(address arg0, address arg1) view returns (uint256)",
  "function asset_policy(address arg0) view returns (uint8)",
  "function thaw_period() view returns (uint256)",
  "function epoch_length() view returns (uint256)",
  "function usage_roots(address arg0, uint256 arg1) view returns (bytes32)",
  "function session_nonce(address account, address asset) view returns (uint256)",
  "function revoke_session_key(address asset)",
]);

export const routerAbi = parseAbi([
  "function get_amounts_out(uint256 amount_in, address[] path, uint256[] fees) view returns (uint256[])",
  "function swap_exact_in(uint256 amount_in, uint256 min_out, address[] path, uint256[] fees, address to, uint256 deadline) returns (uint256)",
  "function FEE_DENOMINATOR() view returns (uint256)",
  "function EXIT_FEE() view returns (uint256)",
  "function add_liquidity(address token_a, address token_b, uint256 fee, uint256 amount_a_desired, uint256 amount_b_desired, uint256 amount_a_min, uint256 amount_b_min, address to, uint256 deadline) returns (uint256, uint256, uint256)",
  "function remove_liquidity(address token_a, address token_b, uint256 fee, uint256 liquidity, uint256 amount_a_min, uint256 amount_b_min, address to, uint256 deadline) returns (uint256, uint256)",
]);

// A pool's LP units are an ERC-20 of the pool itself.
export const poolAbi = parseAbi([
  "function balanceOf(address arg0) view returns (uint256)",
  "function totalSupply() view returns (uint256)",
  "function allowance(address arg0, address arg1) view returns (uint256)",
  "function approve(address spender, uint256 amount) returns (bool)",
  "function get_reserves() view returns (uint256, uint256, uint256)",
]);

export const redemptionAbi = parseAbi([
  "function set_grant(address agent, address payee, uint256 expiry, uint256 max_slippage_bps, address[] tokens, uint256[] daily_limits) returns (uint256)",
  "function revoke_grant(address agent)",
  "function link_account(bytes32 provider, bytes32 account_ref)",
  "function grant(address user, address agent) view returns (address, uint256, uint256, uint256)",
  "function daily_limit(address user, address agent, address token) view returns (uint256)",
  "function spent_today(address user, address agent, address token) view returns (uint256)",
  "function linked_account(address arg0, bytes32 arg1) view returns (bytes32)",
  "function billing_signer_count(bytes32 arg0) view returns (uint256)",
  "function token_provider(address arg0) view returns (bytes32)",
]);

export const escrowAbi = parseAbi([
  "function lot_count() view returns (uint256)",
  "function min_bond(uint256 face_value) view returns (uint256)",
  "function unbacked(address arg0) view returns (uint256)",
  "function insurance_fund(address arg0) view returns (uint256)",
  "function quote_buy_back(address token, uint256 amount) view returns (uint256)",
  "function buy_back_unbacked(address token, uint256 amount) returns (uint256)",
  "function tokenized_bond(address token, uint256 face_value) view returns (uint256)",
  "function lots(uint256 arg0) view returns ((address seller, address token, uint8 kind, uint8 status, uint16 rate_bps, uint64 expiry, uint256 face_value, uint256 capacity, uint256 seller_minted, uint256 consumed, uint256 last_epoch, uint256 bond, uint256 bond_released, bytes32 terms_hash, uint256 close_at))",
]);

export const oracleAbi = parseAbi([
  "function consult(address token, uint256 window) view returns (uint256)",
  "function update(address token)",
]);

export const perpAbi = parseAbi([
  "function deposit(uint256 amount, uint256 min_shares) returns (uint256)",
  "function withdraw(uint256 shares, uint256 min_amount) returns (uint256)",
  "function open_position(address token, bool is_long, uint256 margin, uint256 notional) returns (uint256)",
  "function add_margin(uint256 position_id, uint256 amount)",
  "function close_position(uint256 position_id, uint256 min_payout) returns (uint256)",
  "function price(address token) view returns (uint256)",
  "function funding_rate(address token) view returns (int256)",
  "function markets(address arg0) view returns ((bool active, uint256 funding_k, uint256 max_leverage, uint256 maintenance_bps, uint256 oi_cap_bps, uint256 liquidation_bonus_bps, uint256 open_fee_bps, uint256 close_fee_bps, uint256 max_profit_bps, uint256 long_notional, uint256 short_notional, uint256 long_size, uint256 short_size, int256 long_funding, int256 short_funding, int256 long_funding_basis, int256 short_funding_basis, uint256 last_funding_time))",
  "function positions(uint256 arg0) view returns ((address owner, address token, bool is_long, uint256 margin, uint256 size, uint256 notional, uint256 reserved, int256 entry_funding))",
  "function position_count() view returns (uint256)",
  "function preview_close(uint256 position_id, bool liquidation) view returns ((uint256 price, int256 pnl, int256 funding, int256 gain, int256 equity, uint256 fee, uint256 bonus, uint256 bonus_from_insurance, uint256 payout, uint256 bad_debt, uint256 bad_debt_covered))",
  "function pool_amount() view returns (uint256)",
  "function total_reserved() view returns (uint256)",
  "function pool_value(bool for_deposit) view returns (uint256)",
  "function shares_of(address arg0) view returns (uint256)",
  "function total_shares() view returns (uint256)",
]);

export const optionsAbi = parseAbi([
  "function create_series(address token, uint8 kind, uint256 strike, uint256 bound, uint256 expiry, uint256 size) returns (uint256)",
  "function series_id(address token, uint8 kind, uint256 strike, uint256 bound, uint256 expiry, uint256 size) pure returns (uint256)",
  "function series(uint256 series_id) view returns ((address token, uint8 kind, uint256 strike, uint256 bound, uint256 expiry, uint256 size, uint256 collateral_per_unit, bool settled, uint256 settlement_price, uint256 payout_per_unit))",
  "function write(uint256 series_id, uint256 units) returns (uint256)",
  "function reclaim(uint256 series_id) returns (uint256)",
  "function offer(uint256 series_id, uint256 units, uint256 premium_per_unit) returns (uint256)",
  "function buy(uint256 offer_id, uint256 units) returns (uint256)",
  "function offers(uint256 offer_id) view returns ((address seller, uint256 series_id, uint256 units, uint256 premium_per_unit))",
  "function offer_count() view returns (uint256)",
  "function settle(uint256 series_id, uint256 start_rank, uint256 end_rank) returns (uint256)",
  "function settlement_ranks(uint256 series_id) view returns (uint256, uint256)",
  "function claim(uint256 series_id) returns (uint256)",
  "function written(uint256 arg0, address arg1) view returns (uint256)",
  "function balanceOf(address owner, uint256 id) view returns (uint256)",
  "function twap_window() view returns (uint256)",
  "event SeriesCreated(uint256 indexed series_id, address indexed token, uint8 kind, uint256 strike, uint256 bound, uint256 expiry, uint256 size, uint256 collateral_per_unit)",
]);
