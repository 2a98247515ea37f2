"""httpx transports that route each request through a ``Cluster``: the
drop-in for clients users already hold (the OpenAI SDK, LangChain's
``ChatOpenAI``, any httpx client)."""

from __future__ import annotations

from langcluster.transport.keys import PromptText, chat_text, read_prompt
from langcluster.transport.transport import AsyncClusterTransport, ClusterTransport, retry_after_s

__all__ = [
    "AsyncClusterTransport",
    "ClusterTransport",
    "PromptText",
    "chat_text",
    "read_prompt",
    "retry_after_s",
]
