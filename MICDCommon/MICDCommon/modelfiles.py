"""What a model import takes: `model.json` and the weights, nothing else a folder or zip may hold.

The backend reads only these two files from a model folder (micd.model_package): model.json names no other file
(its `weights_from` describes the checkpoint, it is no path) and the weights are always WEIGHTS_FILE. Their sizes are
checked before a byte is copied: model.json is capped, the weights must be exactly as long as their safetensors header
describes, and what a header may describe is capped too. A folder's files are taken only as regular files: every link
is refused, even one that points inside the folder. A zip is read from its directory first; its members are never
extracted under their own names, only these two files are written, and a copy stops at the size the directory
declared."""

import json
import os
import posixpath
import shutil
import stat
import struct
import zipfile
import zlib

from .contract import MODEL_JSON, WEIGHTS_FILE

MODEL_FILES = (MODEL_JSON, WEIGHTS_FILE)
MODEL_JSON_MAX_BYTES = 16 * 1024 ** 2  # a model.json is a few kB of text
HEADER_MAX_BYTES = 16 * 1024 ** 2  # a safetensors header: names, shapes and offsets of some thousand tensors
# Nothing declares how large a model's weights may be (their header only says how large they are); this caps what a
# header may describe, at the backend's own limit for a model archive (micd.model_package.ZIP_MAX_BYTES).
WEIGHTS_MAX_BYTES = 8 * 1024 ** 3
_CHUNK = 1024 ** 2

# bytes per element of the safetensors dtypes
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
                "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


class RegistryError(Exception):
    """A model could not be added, renamed, removed or exported; the message says why."""


def _mib(n):
    return f"{n / 1024 ** 2:.1f} MiB"


def safetensors_header(f, size, where):
    """{tensor name: header entry} of safetensors data (8 bytes little-endian header length, JSON header, tensors)
    read from the binary stream `f` of `size` bytes, after checking that every tensor's bytes lie in it and that it
    is exactly as long as the header says. Reads only the header. `where` names the file in the messages."""

    def unreadable(why):
        return RegistryError(f"{where}: not a readable safetensors file ({why})")

    head = f.read(8)
    if len(head) < 8:
        raise unreadable(f"{size} bytes")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise unreadable("the header is longer than the file: cut short?")
    if n > HEADER_MAX_BYTES:
        raise unreadable(f"a header of {_mib(n)}, more than the {_mib(HEADER_MAX_BYTES)} a model's can be")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise unreadable(e) from None
    if not isinstance(header, dict):
        raise unreadable("the header is not a JSON object")
    tensors, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in entry["data_offsets"])
            count = 1
            for d in entry["shape"]:
                count *= int(d)
            width = _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise unreadable(f"tensor {name!r} has no valid dtype, shape and offsets") from None
        if not 0 <= start <= stop or stop - start != count * width:
            raise unreadable(f"tensor {name!r}: its offsets do not match its shape")
        tensors[name], end = entry, max(end, stop)
    if 8 + n + end != size:
        raise unreadable(f"{size} bytes, the header describes {8 + n + end}: cut short or padded")
    return tensors


def read_safetensors_header(path):
    """safetensors_header of a weights file on disk."""
    if not os.path.isfile(path):
        raise RegistryError(f"{os.path.dirname(path)}: no {WEIGHTS_FILE}")
    try:
        with open(path, "rb") as f:
            return safetensors_header(f, os.fstat(f.fileno()).st_size, path)
    except OSError as e:
        raise RegistryError(f"{path}: not a readable safetensors file ({e})") from None


def _take(files, dest, link=()):
    """Check the sizes of {name: (where, size, open)}, then copy each file into the folder `dest`; the files named in
    `link` {name: path} are hard-linked instead where the file system allows it (copied where it does not)."""
    where, size, _open = files[MODEL_JSON]
    if size > MODEL_JSON_MAX_BYTES:
        raise RegistryError(f"{where} is {_mib(size)}; a {MODEL_JSON} is at most {_mib(MODEL_JSON_MAX_BYTES)}, so "
                            "this is not a MICD model")
    where, size, _open = files[WEIGHTS_FILE]
    if size > WEIGHTS_MAX_BYTES:
        raise RegistryError(f"{where} is {_mib(size)}, more than the {_mib(WEIGHTS_MAX_BYTES)} MICD imports as a "
                            "model's weights")
    with _open() as f:
        safetensors_header(f, size, where)  # refuses weights longer or shorter than their header says
    need, free = sum(s for _w, s, _o in files.values()), shutil.disk_usage(dest).free
    if need > free:
        raise RegistryError(f"the model needs {_mib(need)} but only {_mib(free)} are free on the disk of {dest}")
    for name, (where, size, _open) in files.items():
        if name in link:
            try:
                os.link(link[name], os.path.join(dest, name))
                continue
            except OSError:  # another file system, or none that links: copy
                pass
        with _open() as src, open(os.path.join(dest, name), "wb") as out:
            left = size
            while True:
                chunk = src.read(min(_CHUNK, left + 1))
                if not chunk:
                    break
                left -= len(chunk)
                if left < 0:
                    raise RegistryError(f"{where} holds more than the {size} bytes it declares; not imported")
                out.write(chunk)
            if left:
                raise RegistryError(f"{where} ended after {size - left} of the {size} bytes it declares")


def copy_model_folder(folder, dest, link_weights=False):
    """Copy model.json and the weights of the model folder `folder` into the empty folder `dest`. `link_weights`:
    hard-link the weights instead (O(1) on Slicer's main thread, where a 150 MB copy takes over 100 ms), for a folder
    only the backend writes: it replaces a model folder whole (a new file, never one rewritten in place), so the
    link keeps the registered weights as they were."""
    files = {}
    for name in MODEL_FILES:
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            if name == MODEL_JSON:
                raise RegistryError(f"{folder}: not a MICD model folder (no {MODEL_JSON})") from None
            raise RegistryError(f"{folder}: no {WEIGHTS_FILE}") from None
        if stat.S_ISLNK(info.st_mode):
            raise RegistryError(f"{path} is a link; a model is imported only from regular files, so that no file "
                                "from elsewhere is copied with it")
        if not stat.S_ISREG(info.st_mode):
            raise RegistryError(f"{path} is not a regular file")
        files[name] = (path, info.st_size, lambda path=path: _open_no_link(path))
    _take(files, dest, link={WEIGHTS_FILE: files[WEIGHTS_FILE][0]} if link_weights else {})


def _open_no_link(path):
    # O_NOFOLLOW: a file swapped for a link after the check above is not followed either (where the OS has it)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


def _unsafe(member):
    parts = member.replace("\\", "/").split("/")
    return member.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]


def extract_model_zip(zip_path, dest):
    """Write model.json and the weights of the model in a zip into the empty folder `dest`; returns the folder the
    model has inside the zip ('' when model.json is at the top)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            infos = z.infolist()
            for info in infos:
                if _unsafe(info.filename):
                    raise RegistryError(f"{zip_path}: unsafe entry {info.filename!r} (points outside the archive)")
            found = [i for i in infos if not i.is_dir() and posixpath.basename(i.filename) == MODEL_JSON]
            if len(found) != 1:
                raise RegistryError(f"{zip_path}: expected exactly one {MODEL_JSON} in the zip, found {len(found)}")
            inner = posixpath.dirname(found[0].filename)
            files = {}
            for name in MODEL_FILES:
                member = posixpath.join(inner, name)
                entries = [i for i in infos if i.filename == member]
                if not entries:
                    raise RegistryError(f"{zip_path}: no {WEIGHTS_FILE} beside {posixpath.join(inner, MODEL_JSON)}")
                if len(entries) > 1:
                    raise RegistryError(f"{zip_path}: {len(entries)} entries are named {member!r}")
                info = entries[0]
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise RegistryError(f"{zip_path}: entry {member!r} is a link; a model archive holds files only")
                files[name] = (f"{zip_path} ({member})", info.file_size, lambda info=info: z.open(info))
            _take(files, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as e:  # RuntimeError: encrypted, unknown method
        raise RegistryError(f"{zip_path}: not a readable zip archive ({e})") from None
    return inner
