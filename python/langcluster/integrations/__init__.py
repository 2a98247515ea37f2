"""Adapters from langcluster to other libraries (each an optional extra)."""
