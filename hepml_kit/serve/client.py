"""One client for any KServe v2 inference server — PyTriton here, the Triton container on Perlmutter, or
another v2 server — over HTTP or gRPC, through NVIDIA's `tritonclient`.

    with ServiceClient("127.0.0.1:8000") as client:             # protocol="grpc" for the gRPC port
        client.wait_ready(models=["jet_transformer"])
        out = client.infer("jet_transformer", {"tracks": tracks, "mask": mask})   # dict of numpy arrays

A request the server refuses (unknown model, wrong input name, shape, dtype, batch too large, bad content)
raises `ServiceError` carrying the server's own message and status; the server keeps serving.

Taught in curriculum/08_inference_service.
"""

from __future__ import annotations

import re
import time

import numpy as np

from hepml_kit.serve.encoding import triton_datatype

__all__ = ["ServiceClient", "ServiceError"]


class ServiceError(RuntimeError):
    """The server refused or failed a request; `status` is the HTTP code or gRPC status name."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


def _protocol_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    return module


class ServiceClient:
    """A thin KServe v2 client: numpy dicts in and out, clear errors.

    Args:
        url: ``host:port`` of the HTTP or gRPC endpoint (no scheme).
        protocol: ``"http"`` or ``"grpc"``.
        timeout_s: network timeout of one call.
    """

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 60.0):
        if "://" in url:
            url = url.split("://", 1)[1]
        self.url, self.protocol = url, protocol
        self._module = _protocol_module(protocol)
        if protocol == "http":
            self._client = self._module.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            self._client = self._module.InferenceServerClient(url)
        self._timeout_s = timeout_s

    # --- health ---------------------------------------------------------------------------------------------
    def is_ready(self, models: list[str] = ()) -> bool:
        """Server live and ready, and every named model ready (False, not an error, while it is starting)."""
        try:
            return bool(
                self._client.is_server_live()
                and self._client.is_server_ready()
                and all(self._client.is_model_ready(m) for m in models)
            )
        except Exception:  # noqa: BLE001 - refused connections and 5xx while starting mean "not ready"
            return False

    def wait_ready(self, models: list[str] = (), timeout_s: float = 120.0, poll_s: float = 0.1) -> None:
        """Block until `is_ready(models)`; raise TimeoutError naming what is not ready."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready(models):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.protocol}://{self.url} not ready after {timeout_s:.0f} s "
                    f"(server and models {list(models)})"
                )
            time.sleep(poll_s)

    def model_metadata(self, model: str) -> dict:
        """Inputs and outputs (name, datatype, shape) as the server states them."""
        try:
            if self.protocol == "grpc":
                return self._client.get_model_metadata(model, as_json=True)
            return self._client.get_model_metadata(model)
        except Exception as err:  # noqa: BLE001 - refusals and network errors alike become ServiceError
            raise self._error(err, model) from None

    # --- inference ------------------------------------------------------------------------------------------
    def prepare(self, inputs: dict[str, np.ndarray]) -> list:
        """Serialise a request once (tritonclient `InferInput`s), to send it many times with `send`."""
        request = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = self._module.InferInput(name, list(array.shape), triton_datatype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        return request

    def send(self, model: str, request: list, outputs: list[str] | None = None, version: str = ""):
        """Send a `prepare`d request; returns tritonclient's result (raises `ServiceError` on refusal)."""
        wanted = [self._module.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            kwargs = {"client_timeout": self._timeout_s} if self.protocol == "grpc" else {}
            return self._client.infer(model, request, outputs=wanted, model_version=version, **kwargs)
        except Exception as err:  # noqa: BLE001 - refusals and network errors alike become ServiceError
            raise self._error(err, model) from None

    def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, version: str = ""
    ) -> dict[str, np.ndarray]:
        """Run `model` on one request (arrays with the batch axis first); returns all (or `outputs`)
        outputs."""
        result = self.send(model, self.prepare(inputs), outputs, version)
        response = result.get_response(as_json=True) if self.protocol == "grpc" else result.get_response()
        return {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}

    def _error(self, err: Exception, model: str) -> ServiceError:
        status = getattr(err, "status", None)
        status = status() if callable(status) else status
        message = err.message() if hasattr(err, "message") and callable(err.message) else str(err)
        message = _last_line_of_traceback(message)
        return ServiceError(
            f"{self.protocol} request to model {model!r} failed ({status}): {message}", str(status)
        )

    # --- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _last_line_of_traceback(message: str) -> str:
    """PyTriton forwards a Python error as its traceback (wrapped by Triton); keep the error line itself."""
    if "Traceback (most recent call last)" not in message:
        return message.strip()
    errors = [ln.strip() for ln in message.splitlines() if _ERROR_LINE.match(ln.strip())]
    return errors[-1] if errors else message.strip().splitlines()[-1].strip()


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")
