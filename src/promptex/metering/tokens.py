"""What one request used, in tokens, as the providers report it.

Counts nest, so nothing is counted (or charged) twice:

    input_tokens   every input token processed, cached or not
      ├ cache_read_tokens      of which read from the provider's prompt cache
      └ cache_write_tokens     of which written to it (Anthropic's cache creation)
          └ cache_write_1h_tokens   of which with a one-hour lifetime
    output_tokens  every output token produced
      └ reasoning_tokens       of which reasoning (OpenAI counts them inside its
                               completion tokens, Anthropic its thinking tokens inside
                               its output tokens; they are priced as output)

OpenAI reports `prompt_tokens` with its cached tokens inside; Anthropic reports its
`input_tokens` without the cache reads and writes, which `anthropic_usage` adds back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        counts = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.reasoning_tokens,
        )
        if any(type(n) is not int or n < 0 for n in counts):
            raise ValueError("token counts are non-negative integers")
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("cache reads and writes are part of the input tokens")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError("one-hour cache writes are part of the cache writes")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning tokens are part of the output tokens")

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens neither read from nor written to a cache: priced at the input rate."""
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens

    @property
    def cache_write_5m_tokens(self) -> int:
        return self.cache_write_tokens - self.cache_write_1h_tokens


def anthropic_usage(
    input_tokens: int,
    output_tokens: int,
    cache_read: int = 0,
    cache_write: int = 0,
    cache_write_1h: int = 0,
    thinking: int = 0,
) -> TokenUsage:
    """An Anthropic `usage` (input tokens without the cache's; thinking tokens inside the
    output tokens, as `output_tokens_details.thinking_tokens`) as a TokenUsage."""
    return TokenUsage(
        input_tokens + cache_read + cache_write,
        output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=cache_write_1h,
        reasoning_tokens=thinking,
    )
