"""Device catalog: device types, their metrics, units and ranges (shared by sim and edge)."""

from devices.catalog import Catalog, DeviceType, MetricSpec, load_catalog

__all__ = ["Catalog", "DeviceType", "MetricSpec", "load_catalog"]
