"""The user's model folder: one sub-folder per model (`model.json` + `weights.safetensors`, as `micd train` writes
in RUN_DIR/model). List with provenance, register a trained model, rename, delete, export/import as zip or folder.

Only `model.json` is read (as JSON); the weights are never loaded here."""

import json
import os
import re
import shutil
import tempfile
import zipfile

MODEL_JSON = "model.json"
MODEL_FORMAT = "micd-model"


class RegistryError(Exception):
    """A model could not be added, renamed, removed or exported; the message says why."""


def safe_name(name):
    """A folder name made from a display name: letters, digits, '-', '_', '.', spaces turned into '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip()).strip("._")
    return cleaned[:80] or "model"


def read_model_json(folder):
    path = os.path.join(folder, MODEL_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"{folder}: not a MICD model folder ({MODEL_JSON}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT or not isinstance(meta.get("labels"), dict):
        raise RegistryError(f"{folder}: {MODEL_JSON} is not a MICD model description")
    return meta


class ModelInfo:
    """A registered model as the panels show it."""

    def __init__(self, path, meta):
        self.path = os.path.abspath(path)
        self.meta = meta

    @property
    def folder_name(self):
        return os.path.basename(self.path)

    @property
    def name(self):
        return self.meta.get("display_name") or self.folder_name

    @property
    def labels(self):
        """{label value: name}, sorted by value."""
        return dict(sorted((int(k), str(v)) for k, v in self.meta.get("labels", {}).items()))

    @property
    def colors(self):
        """{label value: (r, g, b) in 0..1} for the labels that have one."""
        return {int(k): tuple(float(c) for c in v[:3]) for k, v in (self.meta.get("colors") or {}).items()}

    @property
    def provenance(self):
        return self.meta.get("provenance") or {}

    @property
    def created(self):
        return self.provenance.get("created", "")

    @property
    def mean_dice(self):
        value = (self.meta.get("metrics") or {}).get("best_mean_dice")
        return value if isinstance(value, (int, float)) else None

    def summary(self):
        """One paragraph of provenance: labels, date, data counts, method, validation Dice."""
        counts = self.provenance.get("counts") or {}
        parts = [f"Labels: {', '.join(self.labels.values())}"]
        if self.created:
            parts.append(f"trained {self.created[:16].replace('T', ' ')}")
        if counts:
            parts.append(f"{counts.get('labeled', '?')} labeled / {counts.get('unlabeled', '?')} unlabeled / "
                         f"{counts.get('validation', 0)} validation cases")
        if self.meta.get("method"):
            parts.append(f"method {self.meta['method']}, {self.provenance.get('iterations', '?')} iterations")
        parts.append(f"validation Dice {self.mean_dice:.3f}" if self.mean_dice is not None else "no validation Dice")
        return "; ".join(parts)

    def __repr__(self):
        return f"ModelInfo({self.name!r}, {self.path!r})"


class ModelRegistry:
    """Models under `root` (one folder each)."""

    def __init__(self, root):
        self.root = os.path.abspath(root)

    def models(self):
        """Registered models, newest first; folders that are not models are skipped."""
        found = []
        if os.path.isdir(self.root):
            for name in os.listdir(self.root):
                folder = os.path.join(self.root, name)
                if name.startswith(".") or not os.path.isfile(os.path.join(folder, MODEL_JSON)):
                    continue
                try:
                    found.append(ModelInfo(folder, read_model_json(folder)))
                except RegistryError:
                    continue
        return sorted(found, key=lambda m: (m.created, m.name), reverse=True)

    def get(self, name_or_path):
        """A model by display name, folder name or path."""
        if isinstance(name_or_path, ModelInfo):
            return name_or_path
        if os.path.isdir(str(name_or_path)):
            return ModelInfo(name_or_path, read_model_json(name_or_path))
        for model in self.models():
            if name_or_path in (model.name, model.folder_name):
                return model
        raise RegistryError(f"no model named {name_or_path!r} in {self.root}")

    def _free_folder(self, name):
        base = safe_name(name)
        candidate, i = base, 2
        while os.path.exists(os.path.join(self.root, candidate)):
            candidate, i = f"{base}_{i}", i + 1
        return os.path.join(self.root, candidate)

    def add_folder(self, folder, name=None, colors=None):
        """Copy a model folder (e.g. RUN_DIR/model) into the registry under `name`; returns its ModelInfo.

        `colors` {label value: (r, g, b)} replaces the model's colours (e.g. the training segments' own colours)."""
        meta = read_model_json(folder)
        name = name or meta.get("display_name") or meta.get("name") or os.path.basename(os.path.abspath(folder))
        os.makedirs(self.root, exist_ok=True)
        target = self._free_folder(name)
        shutil.copytree(folder, target)
        changes = {"display_name": str(name)}
        if colors:
            changes["colors"] = {str(k): [float(c) for c in v[:3]] for k, v in colors.items()}
        self._update_meta(target, changes)
        return ModelInfo(target, read_model_json(target))

    def rename(self, model, new_name):
        model = self.get(model)
        if not str(new_name).strip():
            raise RegistryError("a model name cannot be empty")
        target = self._free_folder(new_name) if safe_name(new_name) != model.folder_name else model.path
        if target != model.path:
            os.replace(model.path, target)
        self._update_meta(target, {"display_name": str(new_name)})
        return ModelInfo(target, read_model_json(target))

    def delete(self, model):
        model = self.get(model)
        if os.path.dirname(model.path) != self.root:
            raise RegistryError(f"{model.path} is not inside the model folder {self.root}; not deleting it")
        shutil.rmtree(model.path)

    def export_zip(self, model, zip_path):
        """Write the model folder into a zip (entries `<folder name>/model.json`, ...)."""
        model = self.get(model)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for base, _dirs, files in os.walk(model.path):
                for f in sorted(files):
                    full = os.path.join(base, f)
                    z.write(full, os.path.join(model.folder_name, os.path.relpath(full, model.path)))
        return zip_path

    def import_path(self, path, name=None):
        """Add a model from a folder or a zip (model.json at the top of the zip or in one folder inside it)."""
        if os.path.isdir(path):
            return self.add_folder(path, name)
        if not zipfile.is_zipfile(path):
            raise RegistryError(f"{path}: neither a model folder nor a zip file")
        with tempfile.TemporaryDirectory(prefix="micd-import-") as tmp:
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    target = os.path.abspath(os.path.join(tmp, member))
                    if not target.startswith(os.path.abspath(tmp) + os.sep):
                        raise RegistryError(f"{path}: unsafe entry {member!r} (points outside the archive)")
                z.extractall(tmp)
            folders = [base for base, _d, files in os.walk(tmp) if MODEL_JSON in files]
            if len(folders) != 1:
                raise RegistryError(f"{path}: expected exactly one {MODEL_JSON} in the zip, found {len(folders)}")
            default = os.path.splitext(os.path.basename(path))[0] if folders[0] == tmp else None
            return self.add_folder(folders[0], name or default)

    @staticmethod
    def _update_meta(folder, changes):
        """Change top-level fields of the registry's own copy of model.json (display name, colours)."""
        path = os.path.join(folder, MODEL_JSON)
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        meta.update(changes)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, path)
