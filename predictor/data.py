"""Latency tables for predictors: one (arch x device) matrix of a space, with the checks users need."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from latkit.collector.dataset import read_latency
from latkit.collector.errors import LatkitError
from latkit.collector.spaces import arch_space


class LatencyTable:
    """latency_ms of a space's archs on its devices (median over repeated rows). Loaded once; readers that
    must not see some latencies (samplers, pipelines) are given archs, not this table. With another `target`
    (collector/dataset.py TARGETS: energy_mj) the table holds that column instead, and `latency` returns it:
    the same pipelines fit it."""

    def __init__(self, path, space, target: str = "latency_ms"):
        space = arch_space(space)  # a Space or its name; an unknown one, or zoo: a clear error first
        t = read_latency(path, space.name, target)
        if t.num_rows == 0:
            fix = ("pick the space the data holds" if target == "latency_ms" else
                   f"measure them with --energy (rows measured without it have no {target}), or pick the space "
                   "the data holds")
            raise LatkitError(f"no {space.name} rows in {path} have {target}; {fix}")
        df = t.to_pandas()
        bad = df[~np.isfinite(df[target]) | (df[target] <= 0)]
        if len(bad):
            raise LatkitError(f"{len(bad)} rows in {path} have NaN, zero or negative {target} "
                              f"(e.g. {bad.iloc[0]['device']} / {bad.iloc[0]['arch'][:40]}); fix or drop them")
        self.space, self.target = space, target  # the Space; the column
        self.wide = df.pivot_table(index="arch", columns="device", values=target, aggfunc="median")

    def join(self, other: "LatencyTable") -> "LatencyTable":
        """One table with the devices of both (same space; a device in both is refused)."""
        both = set(self.devices) & set(other.devices)
        if other.space != self.space or both:
            raise LatkitError(f"cannot join tables: {'device(s) ' + ', '.join(sorted(both)) + ' in both' if both else 'spaces differ'}; "
                              "give sources with other devices of the same space")
        out = object.__new__(LatencyTable)
        if other.target != self.target:
            raise LatkitError(f"cannot join a table of {self.target} with one of {other.target}")
        out.space, out.target, out.wide = self.space, self.target, self.wide.join(other.wide, how="outer")
        return out

    @property
    def devices(self) -> list:
        return list(self.wide.columns)

    def check_devices(self, devices: Sequence[str]) -> None:
        missing = [d for d in devices if d not in self.wide.columns]
        if missing:
            raise LatkitError(f"unknown device(s) {', '.join(missing)} for {self.space.name}; "
                              f"this data has: {', '.join(self.devices)}")

    def archs(self, device: str) -> list:
        """Archs measured on `device`."""
        self.check_devices([device])
        return list(self.wide.index[self.wide[device].notna()])

    def latency(self, device: str, archs: Sequence[str]) -> np.ndarray:
        self.check_devices([device])
        col = self.wide[device]
        values = col.reindex(list(archs)).to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            missing = [a for a, v in zip(archs, values) if np.isnan(v)]
            raise LatkitError(f"{len(missing)} archs have no {self.target} on {device} (e.g. {missing[0][:60]}); "
                              "collect them or choose archs the device has")
        return values

    def common_archs(self, devices: Sequence[str]) -> list:
        self.check_devices(devices)
        return list(self.wide.index[self.wide[list(devices)].notna().all(axis=1)])

