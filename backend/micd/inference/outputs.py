"""Pairing inputs with output paths: one file (or DICOM series folder) -> one file; a folder of files -> a folder.

The output format comes from the output's suffix, or from `--format` when the output is a folder.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from micd.data.io import IMAGE_SUFFIXES, SEG_SUFFIX, expand_image_sources, is_dicom_folder

FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha", "seg.nrrd": SEG_SUFFIX}
WRITABLE = (SEG_SUFFIX, ".nii.gz", ".nii", ".nrrd", ".mha")  # longest first


class OutputError(ValueError):
    """The output (or uncertainty) path cannot be derived or used; the message says what to pass instead."""


def suffix_of(path: str) -> Optional[str]:
    p = path.lower()
    return next((s for s in WRITABLE if p.endswith(s)), None)


def case_name(path: str) -> str:
    """File name without its image suffix (or the DICOM folder's name)."""
    base = os.path.basename(os.path.normpath(path))
    low = base.lower()
    for s in (SEG_SUFFIX,) + IMAGE_SUFFIXES:
        if low.endswith(s):
            return base[: -len(s)]
    return base


def plan_outputs(inp: str, out: str, fmt: Optional[str] = None) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Return ([(input, output)], problems). Folder inputs (not a DICOM series) map to a folder output."""
    if fmt is not None and fmt not in FORMATS:
        raise OutputError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if not os.path.exists(inp):
        raise OutputError(f"--input {inp}: not found")
    if os.path.isdir(inp) and not is_dicom_folder(inp):
        if suffix_of(out):
            raise OutputError(f"--input {inp} is a folder, so --output must be a folder, not a file ({out})")
        if os.path.isfile(out):
            raise OutputError(f"--output {out} is a file; give a folder for a folder of inputs")
        paths, problems = expand_image_sources([inp])
        if os.path.abspath(out) == os.path.abspath(inp):
            raise OutputError("--output must differ from --input (inputs would be overwritten)")
        pairs = [(p, os.path.join(out, case_name(p) + _suffix_for(p, fmt))) for p in paths]
        return pairs, problems
    suf = suffix_of(out)
    if suf is None:
        if os.path.isdir(out) or out.endswith(os.sep):
            return [(inp, os.path.join(out, case_name(inp) + _suffix_for(inp, fmt)))], []
        raise OutputError(f"--output {out}: unknown format; end it with {', '.join(WRITABLE)} or give a folder")
    if fmt is not None and FORMATS[fmt] != suf:
        raise OutputError(f"--output {out} ends with {suf} but --format is {fmt}")
    if os.path.abspath(out) == os.path.abspath(inp):
        raise OutputError("--output must differ from --input (the input would be overwritten)")
    return [(inp, out)], []


def uncertainty_path(spec: str, output: str, n_inputs: int) -> str:
    """A file for a single input (suffix given, or the output's), a folder of `<case><suffix>` otherwise."""
    suf = suffix_of(spec)
    if suf == SEG_SUFFIX:
        raise OutputError("--uncertainty: a float map cannot be a .seg.nrrd; use .nrrd, .nii.gz or .mha")
    out_suf = suffix_of(output) or ".nii.gz"
    out_suf = ".nrrd" if out_suf == SEG_SUFFIX else out_suf
    if n_inputs == 1 and suf:
        return spec
    if suf:
        raise OutputError("--uncertainty must be a folder when --input is a folder")
    return os.path.join(spec, case_name(output) + out_suf)


def _suffix_for(path: str, fmt: Optional[str]) -> str:
    if fmt:
        return FORMATS[fmt]
    s = suffix_of(path)
    return s if s and s != SEG_SUFFIX else ".nii.gz"
