"""Sealing secrets at rest: envelope encryption of the upstream API keys sellers
register and of the provider credentials the redemption agent keeps. Used by the
gateway, the agent and the dashboard; it depends on no other promptex package."""
