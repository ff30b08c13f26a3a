"""Loaded model folders kept warm for `micd serve`: least recently used first out, bounded by count and by bytes.

A folder is reloaded when its model.json or weights file changed on disk (size and modification time), so a model
re-registered under the same folder is never served stale."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Optional, Tuple

from micd.contract import MODEL_JSON, WEIGHTS_FILE
from micd.model_package import ModelPackage, load_model_package


def _signature(folder: str) -> Tuple:
    out = []
    for name in (MODEL_JSON, WEIGHTS_FILE):
        try:
            st = os.stat(os.path.join(folder, name))
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def package_bytes(package: ModelPackage) -> int:
    """Memory the networks' parameters and buffers take."""
    return sum(t.numel() * t.element_size() for net in package.networks.values()
               for t in list(net.parameters()) + list(net.buffers()))


class ModelCache:
    """`get(folder)` → a loaded ModelPackage; at most `max_models` kept and about `max_bytes` in all (the model
    just used always stays, however large)."""

    def __init__(self, max_models: int = 4, max_bytes: int = 2 << 30,
                 load: Callable[[str], ModelPackage] = load_model_package):
        self.max_models = max(1, int(max_models))
        self.max_bytes = int(max_bytes)
        self._load = load
        self._entries: "OrderedDict[str, Tuple[Tuple, ModelPackage, int]]" = OrderedDict()
        self.hits = self.loads = 0

    def get(self, folder: str) -> ModelPackage:
        key = os.path.realpath(folder)
        sig = _signature(key)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == sig:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self._entries.pop(key, None)
        package = self._load(folder)
        self.loads += 1
        self._entries[key] = (sig, package, package_bytes(package))
        self._evict()
        return package

    def _evict(self) -> None:
        while len(self._entries) > 1 and (len(self._entries) > self.max_models or self.bytes > self.max_bytes):
            self._entries.popitem(last=False)

    @property
    def bytes(self) -> int:
        return sum(e[2] for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> dict:
        return {"models": [k for k in self._entries], "bytes": self.bytes, "hits": self.hits, "loads": self.loads,
                "max_models": self.max_models, "max_bytes": self.max_bytes}

    def peek(self, folder: str) -> Optional[ModelPackage]:
        entry = self._entries.get(os.path.realpath(folder))
        return entry[1] if entry else None
