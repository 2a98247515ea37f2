"""Service discovery: where the nodes of a service come from.

``StaticDiscovery`` (a list, or a JSON/TOML file; needs no server),
``EtcdDiscovery`` (etcd v3: leases and a prefix watch) and
``ConsulDiscovery`` (Consul: health-checked instances and blocking
queries), all with the ``Discovery`` interface.
"""

from __future__ import annotations

from langcluster.discovery.base import Discovery, node_from_record
from langcluster.discovery.consul import ConsulDiscovery
from langcluster.discovery.etcd import EtcdDiscovery
from langcluster.discovery.static import StaticDiscovery

__all__ = ["ConsulDiscovery", "Discovery", "EtcdDiscovery", "StaticDiscovery", "node_from_record"]
