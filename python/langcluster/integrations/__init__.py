"""Adapters between langcluster and the libraries users already hold: the
httpx transports (``transport``, for the OpenAI SDK, LangChain's
``ChatOpenAI`` and any httpx client; httpx is a dependency) and LangChain's
cache (``langchain``, an optional extra)."""
