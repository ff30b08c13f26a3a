"""The contract with the backend (file names, exit codes, event and model schema, option defaults, the duration
parser), read from the shipped backend's `micd/contract.py` so that it is written once.

That file imports only the standard library; it is loaded here by its path, not as `micd.contract`, so that the
`micd` package (and with it torch) never enters Slicer's process. The names it defines become this module's."""

import importlib.util
import os

from .backend import find_backend_path


def _load():
    root = find_backend_path()
    path = os.path.join(root, "micd", "contract.py") if root else None
    if not path or not os.path.isfile(path):
        raise ImportError("the MICD backend (micd/contract.py) was not found beside the extension; reinstall the "
                          "MICD extension, or set MICD_BACKEND_PATH to the folder that holds micd/")
    spec = importlib.util.spec_from_file_location("MICDCommon._backend_contract", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_contract = _load()
globals().update({k: v for k, v in vars(_contract).items() if not k.startswith("_")})
