"""`hepml-kit kernel install`: a Jupyter kernelspec for the kit, for NERSC's JupyterHub.

Three kinds: the current Python (``python -m ipykernel_launcher``), a conda environment (its python), or a
container image run through podman-hpc or shifter (NERSC's container runtimes), following NERSC's
"Jupyter kernels" documentation. Kernelspecs go to the user's Jupyter data folder (or ``--prefix``)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

__all__ = ["install_kernel", "kernelspec"]


def kernelspec(name: str = "hepml-kit", conda_env: str | None = None, image: str | None = None,
               container: str = "podman-hpc", display_name: str | None = None) -> dict:
    if conda_env and image:
        raise ValueError("choose either a conda environment or a container image, not both")
    if not re.match(r"^[A-Za-z0-9._-]+$", name):
        raise ValueError(f"kernel name {name!r}: use letters, digits, '.', '_' and '-'")
    tail = ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    env = {"IPP_NONINTERACTIVE": "1", "HEPML_KIT_KERNEL": name}
    if image:
        if container == "shifter":
            argv = ["shifter", f"--image={image}", "python", *tail]
        elif container == "podman-hpc":
            argv = ["podman-hpc", "run", "--rm", "--gpu", "--net", "host", "-v", "/global:/global",
                    "-v", "{connection_file}:{connection_file}", image, "python", *tail]
        else:
            raise ValueError(f"container must be podman-hpc or shifter, got {container!r}")
        label = f"hepml-kit ({container} {image})"
    elif conda_env:
        py = Path(conda_env) / "bin" / "python"
        if not py.exists():
            raise ValueError(f"no python in conda env {conda_env} (looked for {py})")
        argv, label = [str(py), *tail], f"hepml-kit (conda {Path(conda_env).name})"
    else:
        argv, label = [sys.executable, *tail], "hepml-kit"
    return {"argv": argv, "display_name": display_name or label, "language": "python", "env": env,
            "metadata": {"debugger": False, "hepml_kit": True}}


def install_kernel(name: str = "hepml-kit", conda_env: str | None = None, image: str | None = None,
                   container: str = "podman-hpc", prefix: str | None = None,
                   display_name: str | None = None) -> Path:
    """Write the kernelspec; returns its folder."""
    from jupyter_core.paths import jupyter_data_dir

    spec = kernelspec(name, conda_env, image, container, display_name)
    base = Path(prefix) / "share" / "jupyter" if prefix else Path(jupyter_data_dir())
    folder = base / "kernels" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return folder


def cli(a) -> int:
    try:
        folder = install_kernel(a.name, a.conda_env, a.image, a.container, a.prefix, a.display_name)
    except ValueError as e:
        print(f"hepml-kit kernel install: {e}", file=sys.stderr)
        return 2
    print(f"installed kernelspec {a.name!r} in {folder}; pick it in JupyterLab or run papermill -k {a.name}")
    return 0
