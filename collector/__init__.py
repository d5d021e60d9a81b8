"""latkit's host side: devices, transports, exporters, the Parquet store and the CLI.

    from latkit.collector import measure, export, Settings
    art = export(my_module, (torch.randn(1, 3, 224, 224),), "onnx")
    m = measure(art, device="local")        # a Measurement; the row is in ./latkit-data
"""
from .api import add_device, collect_models, data_summary, make_jobs, measure, measure_many, probe
from .devices import Device, Registry, get_device, list_devices
from .errors import LatkitError
from .exporters import export
from .job import Artifact, Job, Settings
from .measurement import Measurement, summarize
from .scheduler import CollectReport, collect
from .schema import COLUMNS, SCHEMA
from .store import Store

__all__ = ["measure", "measure_many", "probe", "data_summary", "add_device", "collect", "collect_models",
           "make_jobs", "CollectReport", "Device", "Registry", "get_device", "list_devices",
           "LatkitError", "export", "Artifact", "Job", "Settings", "Measurement", "summarize", "SCHEMA", "COLUMNS",
           "Store"]
