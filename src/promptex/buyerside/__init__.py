"""The buyer's side of signed mode (issue 23): sign one cumulative ceiling per lane and
request, so that whatever a gateway or coordinator does, no more can be taken from the
buyer than the true cost plus one hold per lane.

- `wire`: the `x-promptex-voucher` header and the gateway's answers about lanes.
- `voucherlog`: every voucher signed, fsync'd before its request is sent.
- `lanes`: which lane is free, what it was charged so far, the highest ceiling signed.
- `answers`: the check of each answer (price × tokens exactly, token counts within the
  bounds the request and the answer give).
- `signer`: the one object that signs, logs, checks and stops signing (saying why).
- `recovery`: the lane book after a crash, from the chain, the gateway and the log.
- `transport`: an httpx transport that signs (`OpenAI(http_client=httpx.Client(transport=…))`).
- `proxy`: the local OpenAI- and Anthropic-compatible endpoint of `promptex proxy`.
"""
