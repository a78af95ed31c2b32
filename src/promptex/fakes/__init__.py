"""Fakes that ship with PROMPTEX so the demo, tests and benchmarks run offline.

`upstream`: an OpenAI- and Anthropic-compatible model server with deterministic text,
real usage numbers, configurable latency and error injection (`promptex fake-upstream`).
"""

from promptex.fakes.upstream import FakeUpstreamConfig, count_tokens, create_fake_upstream, fake_text

__all__ = ["FakeUpstreamConfig", "count_tokens", "create_fake_upstream", "fake_text"]
