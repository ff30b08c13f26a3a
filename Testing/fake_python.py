"""A stand-in for the backend's Python in the dependency-setup tests: answers the probe from a state file and acts
out pip and light-the-torch the way the setup calls them, recording every command line.

Environment: FAKE_PY_STATE (JSON: {"packages": {dist: version}, "micd": version or null}), FAKE_PY_CALLS (one JSON
argv per line is appended), FAKE_PY_DOWNLOAD_S (seconds the download takes, printed as slow progress lines),
FAKE_PY_FAIL (a step that exits 1: bootstrap, resolve, download or install).
"""

import ast
import json
import os
import re
import stat
import sys
import time

PRESENT = {"numpy": "2.0", "SimpleITK": "2.5", "scipy": "1.1", "tqdm": "4", "pynrrd": "1", "safetensors": "0.4"}


def main(argv):
    with open(os.environ["FAKE_PY_CALLS"], "a", encoding="utf-8") as f:
        f.write(json.dumps(argv) + "\n")
    state_path = os.environ["FAKE_PY_STATE"]
    with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
    if argv[0] == "-c":  # the probe: its names dict is the first literal in the script
        names = ast.literal_eval(re.search(r"names = (\{.*?\})", argv[1]).group(1))
        packages = {dist: state["packages"].get(dist) for dist in names}
        print("MICD-PROBE " + json.dumps({"python": sys.argv[0], "version": "3.9", "packages": packages,
                                          "gpus": state.get("gpus", []) if re.search(r"^if True and", argv[1], re.M) else [],
                                          "micd": state.get("micd")}), flush=True)
        return 0
    module, command, rest = argv[1], argv[2], argv[3:]
    step = {("pip", "install"): "install" if "--no-index" in rest else "bootstrap",
            ("light_the_torch", "install"): "resolve", ("pip", "download"): "download"}[(module, command)]
    if os.environ.get("FAKE_PY_FAIL") == step:
        print("ERROR: Could not find a version that satisfies the requirement", flush=True)
        return 1
    requirements = [a for a in rest if not a.startswith("-") and not os.path.isabs(a) and "://" not in a]
    if step == "resolve":
        report = rest[rest.index("--report") + 1]
        with open(report, "w", encoding="utf-8") as f:
            json.dump({"install": [{"download_info": {"url": f"https://files.example/{r.split('>')[0]}-1.0.whl"}}
                                   for r in requirements]}, f)
    elif step == "download":
        dest = rest[rest.index("--dest") + 1]
        urls = [a for a in rest if "://" in a]
        seconds = float(os.environ.get("FAKE_PY_DOWNLOAD_S", "0"))
        end = time.monotonic() + seconds
        for url in urls:
            print(f"Collecting {url}", flush=True)
        while time.monotonic() < end:
            print(f"Downloading torch-2.9.0+cu128-cp39-cp39-linux_x86_64.whl ({time.monotonic() - end:+.1f} s)",
                  flush=True)
            time.sleep(0.05)
        for url in urls:
            open(os.path.join(dest, url.rsplit("/", 1)[1]), "wb").close()
        print("Saved " + " ".join(urls), flush=True)
    elif step == "install":
        folder = rest[rest.index("--find-links") + 1]
        for requirement in requirements:
            name = re.split("[<>=]", requirement)[0]
            if not any(f.startswith(name) for f in os.listdir(folder)):
                print(f"ERROR: No matching distribution found for {requirement}", flush=True)
                return 1
            state["packages"][name] = "1.0"
        with open(state_path, "w", encoding="utf-8") as f:
            json.dump(state, f)
        print("Successfully installed " + " ".join(requirements), flush=True)
    return 0


class FakePython:
    """The fake as the backend's Python of a BackendLauncher, with its state and recorded calls in `folder`."""

    def __init__(self, folder, packages, micd="0.1.0", download_s=0.0, fail=None, gpus=()):
        from MICDCommon.backend import BackendLauncher

        self.folder = folder
        self.state = folder / "state.json"
        self.state.write_text(json.dumps({"packages": dict(packages), "micd": micd, "gpus": list(gpus)}))
        self.calls_file = folder / "calls.jsonl"
        self.python = folder / "python"
        self.python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" "$@"\n')
        self.python.chmod(self.python.stat().st_mode | stat.S_IEXEC)
        env = {"FAKE_PY_STATE": str(self.state), "FAKE_PY_CALLS": str(self.calls_file),
               "FAKE_PY_DOWNLOAD_S": str(download_s)}
        if fail:
            env["FAKE_PY_FAIL"] = fail
        self.launcher = BackendLauncher(python=str(self.python), extra_env=env)

    def calls(self):
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def packages(self):
        return json.loads(self.state.read_text())["packages"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
