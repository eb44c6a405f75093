"""The kit's Jupyter kernel talks to its client over CurveZMQ-encrypted TCP, whoever launches it.

ipykernel warns "Kernel is running over TCP without encryption" unless the kernel manager provisions
CurveZMQ keys, and jupyter_client does that only when its ``transport_encryption`` policy says so (default:
disabled). papermill, nbval and JupyterLab create their kernel managers without any config we could set, so
the kit's kernelspec names this provisioner instead: it asks for ``transport_encryption="auto"``, and
jupyter_client then writes a fresh key pair into the connection file (the kernelspec already declares
``supported_encryption: ["curve"]``). Where pyzmq lacks CurveZMQ, the kernel runs as before, unencrypted.

`make install` wires it up: ``python -m hepml_kit.teach.encrypted_kernel KERNEL_DIR`` adds the provisioner
to the ``hepml-kit`` kernelspec written by ``ipykernel install``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner

__all__ = ["NAME", "EncryptedLocalProvisioner", "add_to_kernelspec"]

NAME = "hepml-kit-curve"  # the entry point in pyproject.toml's jupyter_client.kernel_provisioners group


class EncryptedLocalProvisioner(LocalProvisioner):
    """A local kernel process whose sockets use CurveZMQ keys provisioned by the kernel manager."""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        import zmq

        if zmq.has("curve"):
            kwargs.setdefault("transport_encryption", "auto")
        return await super().pre_launch(**kwargs)


def add_to_kernelspec(kernel_dir: str | Path) -> Path:
    """Name this provisioner in ``KERNEL_DIR/kernel.json`` (idempotent); returns the file."""
    path = Path(kernel_dir) / "kernel.json"
    spec = json.loads(path.read_text())
    metadata = spec.setdefault("metadata", {})
    metadata["kernel_provisioner"] = {"provisioner_name": NAME, "config": {}}
    metadata.setdefault("supported_encryption", ["curve"])
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(f"kernelspec {add_to_kernelspec(folder)}: CurveZMQ transport encryption")
