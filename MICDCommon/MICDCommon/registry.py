"""The user's model folder: one sub-folder per model (`model.json` + `weights.safetensors`, as `micd train` writes
in RUN_DIR/model). List with provenance, register a trained model, rename, delete, export/import as zip or folder.

The registry lists only folders that `micd predict` would accept: `check_model_folder` repeats the backend's checks
that need no torch (model.json's fields, labels, outputs; the safetensors header: readable, complete, a tensor set per
declared branch), and a model added or imported is also loaded by the backend itself (`micd info --check`, the
loader `micd predict` uses) when the registry has a launcher. The weights are never loaded in Slicer's process."""

import json
import os
import re
import shutil
import tempfile
import zipfile

from .contract import MODEL_FORMAT, MODEL_JSON, WEIGHTS_FILE, model_json_problem
from .modelfiles import RegistryError, copy_model_folder, extract_model_zip, read_safetensors_header


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


def check_model_folder(folder):
    """The model folder checks of `micd predict` (micd.model_package) that need no torch; returns model.json's dict.

    Raises RegistryError for: a model.json of another format or schema version, a missing field, labels that are
    not 1, 2, ... (0 is the background), a network whose outputs do not match the labels, a weights file that is
    missing, not safetensors, cut short or padded, and a declared branch without tensors in it. What only loading
    can tell (tensor shapes against the architecture) is `check_with_backend`'s."""
    meta = read_model_json(folder)
    mj = os.path.join(folder, MODEL_JSON)
    problem = model_json_problem(meta)
    if problem:
        raise RegistryError(f"{mj}: {problem}")
    try:
        labels = sorted(int(k) for k in meta["labels"])
    except (TypeError, ValueError):
        raise RegistryError(f"{mj}: label values must be whole numbers") from None
    if not labels or labels[0] <= 0:
        raise RegistryError(f"{mj}: 'labels' must name the foreground label values (1, 2, ...), not 0")
    network, branches = meta["network"], meta["branches"]
    outputs = network.get("out_channels") if isinstance(network, dict) else None
    if "channels" in meta:  # output k stands for label value channels[k] (background 0, then the labels ascending)
        if meta["channels"] != [0] + labels:
            raise RegistryError(f"{mj}: 'channels' {meta['channels']!r} do not list the labels' values {labels} "
                                "after background 0")
        if outputs != len(labels) + 1:
            raise RegistryError(f"{mj}: the network has {outputs} outputs but 'channels' lists {len(labels) + 1}")
    elif outputs != labels[-1] + 1:  # folders written before the channel map: output k is value k
        raise RegistryError(f"{mj}: the network has {outputs} outputs but the labels go up to {labels[-1]}")
    if not isinstance(branches, list) or not branches or not all(isinstance(b, str) for b in branches):
        raise RegistryError(f"{mj}: 'branches' must list the stored networks")
    tensors = read_safetensors_header(os.path.join(folder, WEIGHTS_FILE))
    for branch in branches:
        if not any(name.startswith(branch + ".") for name in tensors):
            raise RegistryError(f"{os.path.join(folder, WEIGHTS_FILE)}: no weights for branch {branch!r} declared in "
                                f"{MODEL_JSON}")
    return meta


def check_with_backend(folder, launcher, timeout=300):
    """Load the folder with the backend, as `micd predict` does (`micd info --check --json`, in a subprocess with
    the launcher's Python); raises RegistryError with the backend's reason when it refuses the folder."""
    import subprocess

    from .processes import run

    try:
        p = run(launcher.command("info", os.path.abspath(folder), "--check", "--json"), timeout=timeout,
                env=launcher.environment())
    except subprocess.TimeoutExpired:
        raise RegistryError(f"{folder}: the MICD backend did not finish checking the model in {timeout} s") from None
    except (OSError, ValueError) as e:
        raise RegistryError(f"{folder}: could not run the MICD backend to check the model ({e})") from None
    answer = None
    for line in reversed((p.stdout or "").splitlines()):
        try:
            answer = json.loads(line)
            break
        except ValueError:
            continue
    if p.returncode == 0 and isinstance(answer, dict) and answer.get("ok") is True:
        return answer
    if isinstance(answer, dict) and answer.get("error"):
        raise RegistryError(answer["error"])
    tail = (p.stderr or "").strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
    raise RegistryError(f"{folder}: the MICD backend could not check the model ({tail[0]})")


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
    """Models under `root` (one folder each).

    launcher: a BackendLauncher; when given, a model is added or imported only after the backend loaded it
    (`check_with_backend`), so the list holds nothing `micd predict` would refuse."""

    def __init__(self, root, launcher=None):
        self.root = os.path.abspath(root)
        self.launcher = launcher
        self.refused = []  # (folder, reason) of the folders the last models() left out

    def models(self):
        """Registered models, newest first; folders that fail `check_model_folder` are left out (see `refused`)."""
        found, refused = [], []
        if os.path.isdir(self.root):
            for name in os.listdir(self.root):
                folder = os.path.join(self.root, name)
                if name.startswith(".") or not os.path.isfile(os.path.join(folder, MODEL_JSON)):
                    continue
                try:
                    found.append(ModelInfo(folder, check_model_folder(folder)))
                except RegistryError as e:
                    refused.append((folder, str(e)))
        self.refused = refused
        return sorted(found, key=lambda m: (m.created, m.name), reverse=True)

    def check(self, folder):
        """The checks a folder must pass to be listed (and, with a launcher, the backend's own load)."""
        meta = check_model_folder(folder)
        if self.launcher is not None:
            check_with_backend(folder, self.launcher)
        return meta

    def get(self, name_or_path):
        """A model by path, folder name (unique), or display name (refused when several models share it)."""
        if isinstance(name_or_path, ModelInfo):
            return name_or_path
        if os.path.isdir(str(name_or_path)):
            return ModelInfo(name_or_path, check_model_folder(name_or_path))
        models = self.models()
        for model in models:
            if name_or_path == model.folder_name:
                return model
        named = [m for m in models if m.name == name_or_path]
        if len(named) > 1:
            raise RegistryError(f"{len(named)} models are named {name_or_path!r} (folders "
                                f"{', '.join(m.folder_name for m in named)}); give the folder name or path")
        if named:
            return named[0]
        raise RegistryError(f"no model named {name_or_path!r} in {self.root}")

    def _free_folder(self, name):
        base = safe_name(name)
        candidate, i = base, 2
        while os.path.exists(os.path.join(self.root, candidate)):
            candidate, i = f"{base}_{i}", i + 1
        return os.path.join(self.root, candidate)

    def add_folder(self, folder, name=None, colors=None, backend_check=True, link_weights=False):
        """Copy a model folder (e.g. RUN_DIR/model) into the registry under `name`; returns its ModelInfo.

        Only model.json and the weights are copied (see modelfiles). `colors` {label value: (r, g, b)} replaces the
        model's colours (e.g. the training segments' own colours). backend_check=False skips the backend's load of
        the model (seconds: it imports torch) for a folder the backend itself just wrote; the file checks still
        run. link_weights: hard-link the weights file rather than copy it (see modelfiles.copy_model_folder), for a
        model folder of one of our own runs."""

        def fill(dest):
            copy_model_folder(folder, dest, link_weights=link_weights)
            return None, os.path.basename(os.path.abspath(folder))

        return self._add(folder, fill, name, colors, backend_check)

    def _add(self, source, fill, name, colors=None, backend_check=True):
        """Import a model: `fill(folder)` writes its files into a hidden folder inside the registry, which is
        checked and then renamed into place, or removed when anything fails. `fill` returns two names for a model
        imported without `name`: one that comes before model.json's display name and name, one that comes after
        (None when there is none)."""
        os.makedirs(self.root, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".import-", dir=self.root)
        try:
            try:
                preferred, fallback = fill(staging)
                meta = self.check(staging) if backend_check else check_model_folder(staging)
            except RegistryError as e:
                raise RegistryError(str(e).replace(staging, source)) from None
            except OSError as e:
                raise RegistryError(f"{source}: the model could not be imported ({e})") from None
            name = name or preferred or meta.get("display_name") or meta.get("name") or fallback
            changes = {"display_name": str(name)}
            if colors:
                changes["colors"] = {str(k): [float(c) for c in v[:3]] for k, v in colors.items()}
            self._update_meta(staging, changes)
            target = self._free_folder(name)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ModelInfo(target, read_model_json(target))

    def rename(self, model, new_name):
        model = self.get(model)
        if os.path.dirname(model.path) != self.root:
            raise RegistryError(f"{model.path} is not inside the model folder {self.root}; import it first to rename "
                                "the registry's copy")
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

    def export_zip(self, model, zip_path, overwrite=False):
        """Write the model folder into a zip (entries `<folder name>/model.json`, ...).

        An existing file is replaced only with `overwrite` (the panel's save dialog has asked); the zip is written
        beside it first, so a failure (a full disk) leaves the earlier file as it was."""
        model = self.get(model)
        zip_path = os.path.abspath(str(zip_path))
        if zip_path.startswith(os.path.abspath(model.path) + os.sep):
            raise RegistryError(f"{zip_path}: a model cannot be zipped into its own folder; choose a file outside it")
        if os.path.exists(zip_path) and not overwrite:
            raise RegistryError(f"{zip_path} already exists; choose another file name (or pass overwrite=True)")
        tmp = zip_path + ".part"
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for base, _dirs, files in os.walk(model.path):
                    for f in sorted(files):
                        full = os.path.join(base, f)
                        z.write(full, os.path.join(model.folder_name, os.path.relpath(full, model.path)))
            os.replace(tmp, zip_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return zip_path

    def import_path(self, path, name=None):
        """Add a model from a folder or a zip (model.json at the top of the zip or in a folder inside it); only
        model.json and the weights are taken (see modelfiles)."""
        if os.path.isdir(path):
            return self.add_folder(path, name)
        if not zipfile.is_zipfile(path):
            raise RegistryError(f"{path}: neither a model folder nor a zip file")

        def fill(dest):
            inner = extract_model_zip(path, dest)
            return (None, os.path.basename(inner)) if inner else (os.path.splitext(os.path.basename(path))[0], None)

        return self._add(path, fill, name)

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
