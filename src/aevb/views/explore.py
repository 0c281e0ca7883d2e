"""``aevb explore``: a local web page that decodes a run's latent space live.

:class:`Explorer` holds the run's model (behind a lock: the server answers each request in a
thread) and the posterior means of the first test rows; :func:`make_server` puts it behind a
small JSON/PNG API (``http.server``, standard library only) and the page ``explore.html``
(package data, no external resources); :func:`serve` runs it until Ctrl-C.

The API (every error is a 4xx, or a 503 while :data:`MAX_REQUESTS` requests are being
answered, with one line of JSON, ``{"error": "…"}``):

* ``GET /api/info`` — the page's setup: latent size, the units with sliders and their ranges;
* ``GET /api/decode?z=z1,…,zL[&label=k]`` — E[x|z] as ``{"image": PNG data URI}`` (images) or
  ``{"values": […]}`` (table rows); ``GET /api/decode.png?…`` — the PNG itself;
* ``GET /api/grid?i=&j=&size=[&z=][&label=]`` — decoded latents over units i and j (the
  prior's quantiles 0.05 to 0.95), the others held at z;
* ``GET /api/test?index=`` — a test row, its posterior mean and standard deviation;
* ``GET /api/interpolate?a=&b=&steps=[&label=]`` — decoded latents on the line between the
  posterior means of test rows a and b;
* ``POST /api/encode[?label=&invert=1]`` — the body a PNG or JPEG image (resized and
  converted to the run's shape) or a CSV row of numbers (tables): its posterior mean and
  standard deviation, the input as the model sees it, and its reconstruction.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import re
import socket
import sys
import threading
import warnings
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from aevb.conditional import is_conditional
from aevb.errors import AevbError
from aevb.plots import grid_png
from aevb.runs import Run, load_run
from aevb.views.latent_space import (
    GRID_QUANTILES,
    data_uri,
    decode,
    encode_rows,
    grid_over,
    prior_quantiles,
    test_labels,
)

__all__ = ["Explorer", "ExplorerInfo", "ExplorerServer", "RequestError", "make_server", "serve"]

# Test rows encoded at start-up (the interpolation's choices, the sliders' ranking).
TEST_ROWS = 1000
# Latent units given a slider: the most active ones.
MAX_SLIDERS = 16
# Largest side of a decoded grid, and most interpolation steps.
MAX_GRID = 25
MAX_STEPS = 32
# Largest |z| a request may ask to decode.
MAX_LATENT = 1000.0
# Largest upload (bytes) and decoded image (pixels) accepted by /api/encode.
MAX_UPLOAD = 8 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096
# Prior quantiles spanned by the sliders, and by the grid.
SLIDER_QUANTILES = (0.0015, 0.5, 0.9985)
# Seconds a connection may stall while a request is read.
REQUEST_TIMEOUT = 30
# Requests answered at once (each may hold an upload and its decoded image), and the seconds
# another waits for one of them to end before it is answered 503.
MAX_REQUESTS = 4
BUSY_WAIT = 2.0
PAGE = "explore.html"


class RequestError(AevbError):
    """A request the API cannot answer: ``status`` (4xx) and a one-line message."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST, allow: str = ""):
        super().__init__(message)
        self.status = int(status)
        self.allow = allow  # the method the path takes, for a 405


@dataclass(frozen=True)
class ExplorerInfo:
    """What the page needs to set itself up (``GET /api/info``).

    ``sliders``: the units with a slider, most active first (Var_x of the test posterior
    means, ``activity``); ``ranges``: (low, high) of every unit's slider, the prior's 0.15%
    and 99.85% quantiles widened to the test means; ``origin``: where every unit starts (the
    prior's medians). ``columns`` and ``column_ranges``: for tables, the number of values per
    row and each column's range over the test rows (the chart's scale)."""

    run: str
    dataset: str
    latent_dim: int
    sliders: list[int]
    activity: list[float]
    ranges: list[list[float]]
    origin: list[float]
    is_image: bool
    event_shape: list[int]
    classes: int | None
    num_test: int
    columns: int
    column_ranges: list[list[float]] | None
    max_grid: int
    max_steps: int
    max_upload: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Encoded:
    """An encoded upload: the posterior ``mean`` and ``std`` (latent_dim,), the ``input`` as
    the model saw it and its ``reconstruction``, both (1, *data_shape) in the data's units."""

    mean: Tensor
    std: Tensor
    input: Tensor
    reconstruction: Tensor


class Explorer:
    """The model behind the explorer's API. Every method uses the model under its lock and
    without gradients (:meth:`using_model`), so the server's threads use it one at a time;
    arguments are checked (:class:`RequestError`)."""

    def __init__(self, run: Run, num_examples: int = TEST_ROWS, max_sliders: int = MAX_SLIDERS):
        self.run = run
        self.lock = threading.Lock()
        self.conditional = is_conditional(run.model)
        test_x = run.split("test", num_examples)
        self.test_labels = test_labels(run, num_examples)
        given = self.test_labels if self.conditional else None
        self.codes = encode_rows(run, test_x, given)
        # The test rows as the model sees them (binarized like its evaluation data), shown.
        self.test_seen = run.transforms.inverse(run.prepare(test_x)).cpu()
        latent_dim = run.model.latent_dim
        activity = self.codes.activity
        order = torch.argsort(activity, descending=True, stable=True)
        low, median, high = prior_quantiles(run, torch.tensor(SLIDER_QUANTILES))
        low = torch.minimum(low, self.codes.means.min(0).values)
        high = torch.maximum(high, self.codes.means.max(0).values)
        column_ranges = None
        if not run.is_image:
            seen = self.test_seen
            column_ranges = torch.stack((seen.min(0).values, seen.max(0).values), 1).tolist()
        self.origin = median
        self.info = ExplorerInfo(
            run=str(run.run_dir),
            dataset=str(run.record.data["name"]),
            latent_dim=latent_dim,
            sliders=order[:max_sliders].tolist(),
            activity=_rounded(activity),
            ranges=[
                [_round(a), _round(b)] for a, b in zip(low.tolist(), high.tolist(), strict=True)
            ],
            origin=_rounded(median),
            is_image=run.is_image,
            event_shape=list(run.record.event_shape),
            classes=run.model.num_classes if self.conditional else None,
            num_test=len(test_x),
            columns=math.prod(run.record.event_shape),
            column_ranges=column_ranges,
            max_grid=MAX_GRID,
            max_steps=MAX_STEPS,
            max_upload=MAX_UPLOAD,
        )

    @contextmanager
    def using_model(self) -> Iterator[None]:
        """The model's lock held, gradients off (in this thread)."""
        with self.lock, torch.no_grad():
            yield

    # ------------------------------------------------------------------ checked arguments
    def latent(self, z: Tensor) -> Tensor:
        """z (latent_dim,) checked: the right length, finite, |z_j| ≤ MAX_LATENT."""
        if z.shape != (self.run.model.latent_dim,):
            raise RequestError(
                f"z must hold {self.run.model.latent_dim} values (one per latent unit), got "
                f"{z.numel()}"
            )
        if not bool(torch.isfinite(z).all()) or float(z.abs().max()) > MAX_LATENT:
            raise RequestError(
                f"z values must be finite numbers in [-{MAX_LATENT:g}, {MAX_LATENT:g}]"
            )
        return z.float()

    def label(self, label: int | None) -> int | None:
        """A class for a conditional model (default 0); ``None`` for any other."""
        if not self.conditional:
            if label is not None:
                raise RequestError("this model is not conditional: it takes no label")
            return None
        classes = self.run.model.num_classes
        if label is None:
            return 0
        if not 0 <= label < classes:
            raise RequestError(f"label must be a class in 0…{classes - 1}, got {label}")
        return label

    def index(self, index: int) -> int:
        if not 0 <= index < len(self.test_seen):
            raise RequestError(f"test index must be in 0…{len(self.test_seen) - 1}, got {index}")
        return index

    # ------------------------------------------------------------------ model calls
    def decode(self, z: Tensor, label: int | None = None) -> Tensor:
        """E[x|z] of one latent z (latent_dim,), in the data's units: (1, *data_shape)."""
        z, label = self.latent(z), self.label(label)
        with self.using_model():
            return decode(self.run, z[None], label)

    def grid(
        self,
        first: int,
        second: int,
        size: int,
        base: Tensor | None = None,
        label: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoded latents over units ``first`` (columns) and ``second`` (rows, high values at
        the top) at size prior quantiles 0.05…0.95 each, the other units at ``base`` (default
        the origin): (size², *data_shape), and the two units' values (size,) each."""
        latent_dim = self.run.model.latent_dim
        for unit in (first, second):
            if not 0 <= unit < latent_dim:
                raise RequestError(f"latent units are 0…{latent_dim - 1}, got {unit}")
        if first == second:
            raise RequestError("the grid needs two different latent units")
        if not 2 <= size <= MAX_GRID:
            raise RequestError(f"size must be in 2…{MAX_GRID}, got {size}")
        base = self.origin if base is None else self.latent(base)
        label = self.label(label)
        with self.using_model():
            values = prior_quantiles(self.run, torch.linspace(*GRID_QUANTILES, size))
            across, down = values[:, first], values[:, second].flip(0)
            images = decode(self.run, grid_over(base, first, second, across, down), label)
        return images, across, down

    def test_row(self, index: int) -> tuple[Tensor, Tensor, Tensor, int | None]:
        """Test row ``index`` as the model sees it (1, *data_shape), its posterior mean and
        standard deviation (latent_dim,) each, and its label (if the data have labels)."""
        index = self.index(index)
        label = None if self.test_labels is None else int(self.test_labels[index])
        seen = self.test_seen[index : index + 1]
        return seen, self.codes.means[index], self.codes.stds[index], label

    def interpolate(self, a: int, b: int, steps: int, label: int | None = None) -> Tensor:
        """E[x|z] at ``steps`` evenly spaced points of the line from the posterior mean of test
        row ``a`` to that of row ``b`` (both ends included): (steps, *data_shape)."""
        a, b = self.index(a), self.index(b)
        if not 2 <= steps <= MAX_STEPS:
            raise RequestError(f"steps must be in 2…{MAX_STEPS}, got {steps}")
        t = torch.linspace(0, 1, steps)[:, None]
        z = (1 - t) * self.codes.means[a] + t * self.codes.means[b]
        label = self.label(label)
        with self.using_model():
            return decode(self.run, z, label)

    def encode(self, x: Tensor, label: int | None = None) -> Encoded:
        """q(z|x) of one row as loaded x: (1, *data_shape) (given ``label`` for a conditional
        model), with the row as the model sees it and its reconstruction."""
        label = self.label(label)
        labels = None if label is None else torch.tensor([label])
        with self.using_model():
            q = self.run.encode(x, labels=labels)
            return Encoded(
                q.mean[0].cpu(),
                q.stddev[0].cpu(),
                self.run.transforms.inverse(self.run.prepare(x)).cpu(),
                self.run.reconstruct(x, labels).cpu(),
            )

    # ------------------------------------------------------------------ uploads
    def read_upload(self, body: bytes, invert: bool = False) -> Tensor:
        """An uploaded image (PNG or JPEG: converted to the run's channels and resized to its
        height and width, values k/255; ``invert``: 1 − value) or, for a table, a CSV row of
        numbers: (1, *data_shape) as loaded."""
        if not body:
            raise RequestError("the request has no body: send an image or a CSV row")
        if not self.run.is_image:
            return _read_row(body, self.info.columns)
        channels, height, width = self.run.record.event_shape
        image = _read_image(body)
        if image.mode in ("RGBA", "LA", "P"):  # transparency is flattened onto white
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, "white")
            image.alpha_composite(rgba)
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = pixels.reshape(height, width, channels).permute(2, 0, 1).float() / 255
        return (1 - x if invert else x)[None]


def _read_image(body: bytes) -> Image.Image:
    """A PNG or JPEG image from bytes, refused if it is another format, too large or broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body), formats=("PNG", "JPEG"))
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise RequestError(
                    f"the image has {image.width}×{image.height} pixels; at most "
                    f"{MAX_UPLOAD_PIXELS:,} are accepted",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise RequestError(
            f"the upload is not a readable PNG or JPEG image ({type(error).__name__})"
        ) from error
    except Image.DecompressionBombWarning as warning:
        raise RequestError(str(warning), HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from warning
    return image


def _read_row(body: bytes, columns: int) -> Tensor:
    """One row of ``columns`` numbers from CSV text (commas, semicolons or white space)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RequestError("the row is not UTF-8 text") from error
    cells = [cell for cell in re.split(r"[,;\s]+", text) if cell]
    if len(cells) != columns:
        raise RequestError(f"a row must hold {columns} numbers, got {len(cells)}")
    values = [_number(cell, "row value") for cell in cells]
    if not all(math.isfinite(v) for v in values):
        raise RequestError("row values must be finite numbers")
    return torch.tensor([values], dtype=torch.float32)


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RequestError(f"{name} must be a number, got {text[:40]!r}") from None


def _png(images: Tensor, ncols: int | None = None) -> bytes:
    """Images (N, C, H, W) as one PNG grid at their own size (the page scales it up)."""
    return grid_png(images, ncols, min_pixels=0)


def _round(value: float) -> float:
    """A float shortened to 5 significant digits, for compact JSON."""
    return float(f"{value:.5g}")


def _rounded(values: Tensor) -> list[float]:
    return [_round(v) for v in values.reshape(-1).tolist()]


# --------------------------------------------------------------------------- HTTP
@dataclass(frozen=True)
class _Response:
    content_type: str
    body: bytes
    status: int = HTTPStatus.OK
    allow: str = ""


def _json(values: dict[str, Any], status: int = HTTPStatus.OK, allow: str = "") -> _Response:
    return _Response("application/json", json.dumps(values).encode(), status, allow)


class _Query:
    """A request's query parameters, each read once and checked."""

    def __init__(self, query: str):
        try:
            self.values = parse_qs(query, keep_blank_values=True, max_num_fields=32)
        except ValueError as error:
            raise RequestError(f"malformed query: {error}") from None

    def text(self, name: str) -> str | None:
        found = self.values.get(name)
        return None if found is None else found[-1]

    def integer(self, name: str, default: int | None = None) -> int | None:
        text = self.text(name)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise RequestError(f"{name} must be an integer, got {text[:40]!r}") from None

    def required(self, name: str) -> int:
        value = self.integer(name)
        if value is None:
            raise RequestError(f"the parameter {name} is missing")
        return value

    def vector(self, name: str) -> Tensor | None:
        text = self.text(name)
        if text is None:
            return None
        values = [_number(cell, name) for cell in text.split(",")] if text else []
        return torch.tensor(values, dtype=torch.float64)


class _Api:
    """The routes: (method, path) → a function of the request's query and body."""

    def __init__(self, explorer: Explorer, page: bytes):
        self.explorer = explorer
        self.page = page
        self.routes: dict[str, tuple[str, Callable[[_Query, bytes], _Response]]] = {
            "/": ("GET", lambda query, body: _Response("text/html; charset=utf-8", self.page)),
            "/api/info": ("GET", lambda query, body: _json(explorer.info.to_dict())),
            "/api/decode": ("GET", self.decode),
            "/api/decode.png": ("GET", self.decode_png),
            "/api/grid": ("GET", self.grid),
            "/api/test": ("GET", self.test),
            "/api/interpolate": ("GET", self.interpolate),
            "/api/encode": ("POST", self.encode),
        }

    def _shown(self, rows: Tensor, columns: int | None = None) -> dict[str, Any]:
        """Decoded rows as the page shows them: one PNG data URI per image (or a grid of
        ``columns`` images as one), or lists of values for table rows."""
        if not self.explorer.run.is_image:
            return {"values": [_rounded(row) for row in rows]}
        if columns is not None:
            return {"image": data_uri(_png(rows, columns))}
        return {"images": [data_uri(_png(row[None])) for row in rows]}

    def _z(self, query: _Query, required: bool = True) -> Tensor | None:
        z = query.vector("z")
        if z is None and required:
            raise RequestError("the parameter z (comma-separated latent values) is missing")
        return z

    def decode(self, query: _Query, body: bytes) -> _Response:
        z = self._z(query)
        assert z is not None
        row = self.explorer.decode(z, query.integer("label"))
        shown = self._shown(row, 1)
        return _json(shown if "image" in shown else {"values": shown["values"][0]})

    def decode_png(self, query: _Query, body: bytes) -> _Response:
        if not self.explorer.run.is_image:
            raise RequestError("this run's data are table rows, not images: use /api/decode")
        z = self._z(query)
        assert z is not None
        return _Response("image/png", _png(self.explorer.decode(z, query.integer("label"))))

    def grid(self, query: _Query, body: bytes) -> _Response:
        size = query.integer("size", 9)
        assert size is not None
        images, across, down = self.explorer.grid(
            query.required("i"),
            query.required("j"),
            size,
            self._z(query, required=False),
            query.integer("label"),
        )
        return _json(
            {**self._shown(images, size), "across": _rounded(across), "down": _rounded(down)}
        )

    def _test(self, index: int) -> dict[str, Any]:
        shown, mean, std, label = self.explorer.test_row(index)
        values = {"index": index, "label": label, "mean": _rounded(mean), "std": _rounded(std)}
        if self.explorer.run.is_image:
            return {**values, "image": data_uri(_png(shown))}
        return {**values, "values": _rounded(shown[0])}

    def test(self, query: _Query, body: bytes) -> _Response:
        return _json(self._test(query.required("index")))

    def interpolate(self, query: _Query, body: bytes) -> _Response:
        a, b = query.required("a"), query.required("b")
        steps = query.integer("steps", 8)
        assert steps is not None
        rows = self.explorer.interpolate(a, b, steps, query.integer("label"))
        return _json({"a": self._test(a), "b": self._test(b), **self._shown(rows)})

    def encode(self, query: _Query, body: bytes) -> _Response:
        invert = query.integer("invert", 0) == 1
        x = self.explorer.read_upload(body, invert)
        encoded = self.explorer.encode(x, query.integer("label"))
        values: dict[str, Any] = {"mean": _rounded(encoded.mean), "std": _rounded(encoded.std)}
        if self.explorer.run.is_image:
            values["input"] = data_uri(_png(encoded.input))
            values["reconstruction"] = data_uri(_png(encoded.reconstruction))
        else:
            values["input"] = _rounded(encoded.input[0])
            values["reconstruction"] = _rounded(encoded.reconstruction[0])
        return _json(values)


class _Handler(BaseHTTPRequestHandler):
    """One request: routed, answered, and every failure turned into a one-line JSON error."""

    server: ExplorerServer
    timeout = REQUEST_TIMEOUT
    server_version = "aevb-explore"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _not_allowed(self) -> None:
        self._answer(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _answer(self, method: str) -> None:
        slots = self.server.slots
        if not slots.acquire(timeout=BUSY_WAIT):
            self.close_connection = True  # any body is left unread
            self._send(
                _json({"error": "the explorer is busy: try again"}, HTTPStatus.SERVICE_UNAVAILABLE)
            )
            return
        try:
            self._send(self._response(method))
        finally:
            slots.release()

    def _response(self, method: str) -> _Response:
        """The answer to the request, or its one-line JSON error."""
        try:
            return self._route(method)
        except RequestError as error:
            return _json({"error": str(error)}, error.status, error.allow)
        except AevbError as error:  # the run refused the data (shape, range, …)
            return _json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
        except TimeoutError:
            return _json({"error": "the request body came too slowly"}, HTTPStatus.REQUEST_TIMEOUT)
        except Exception as error:  # a bug: one line here, one line to the page, serving on
            print(
                f"aevb explore: {method} {self.path[:200]} failed: {error!r:.300}", file=sys.stderr
            )
            return _json({"error": f"internal error ({type(error).__name__})"}, 500)

    def _route(self, method: str) -> _Response:
        if not self.server.host_allowed(self.headers.get("Host", "")):
            raise RequestError("unexpected Host header", HTTPStatus.FORBIDDEN)
        url = urlsplit(self.path)
        route = self.server.api.routes.get(url.path)
        if route is None:
            raise RequestError(f"no such path: {url.path[:100]}", HTTPStatus.NOT_FOUND)
        allowed, answer = route
        if method != allowed:
            raise RequestError(
                f"{url.path} takes {allowed}, not {method[:20]}",
                HTTPStatus.METHOD_NOT_ALLOWED,
                allowed,
            )
        query = _Query(url.query)
        return answer(query, self._body() if method == "POST" else b"")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
        try:
            size = int(length)
        except ValueError:
            raise RequestError("Content-Length must be an integer") from None
        if size < 0:
            raise RequestError("Content-Length must not be negative")
        if size > MAX_UPLOAD:
            self.close_connection = True  # the body is left unread
            raise RequestError(
                f"the upload has {size:,} bytes; at most {MAX_UPLOAD:,} are accepted",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        return self.rfile.read(size)

    def _send(self, response: _Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            if response.allow:
                self.send_header("Allow", response.allow)
            self.end_headers()
            self.wfile.write(response.body)
        except (ConnectionError, TimeoutError):  # the client left: nothing to tell it
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's errors (a malformed request line, an unknown method, a URL
        too long) as one line of JSON too."""
        self.close_connection = True
        # A request line too broken to read leaves HTTP/0.9, which has no status line.
        self.request_version = "HTTP/1.0"
        text = message or HTTPStatus(code).phrase
        self._send(_json({"error": text}, code))

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the terminal shows the URL and any internal error."""


class ExplorerServer(ThreadingHTTPServer):
    """The explorer's HTTP server: a thread per request (daemon threads, so Ctrl-C ends it at
    once), at most :data:`MAX_REQUESTS` of them answering at a time (``slots``); ``url`` is
    where it listens."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: _Api, loopback: bool):
        self.api = api
        self.loopback = loopback
        self.slots = threading.BoundedSemaphore(MAX_REQUESTS)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}/"

    def host_allowed(self, header: str) -> bool:
        """On a loopback address only requests whose Host (``name[:port]``) is ``localhost``
        or a loopback IP address (``[::1]`` for IPv6) are answered, so that another site
        cannot reach the server through a DNS name rebound to 127.0.0.1."""
        if not self.loopback:
            return True
        if header.startswith("["):  # [IPv6 address]:port
            inside, bracket, _ = header[1:].partition("]")
            name = inside if bracket else ""
        else:
            name = header.rpartition(":")[0] if ":" in header else header
        name = name.lower().removesuffix(".")
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection dropped mid-request is not an error worth a traceback."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | TimeoutError):
            print(
                f"aevb explore: a request from {client_address[0]} failed: {error!r:.300}",
                file=sys.stderr,
            )


class _ServerV6(ExplorerServer):
    address_family = socket.AF_INET6


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as error:
        raise AevbError(f"cannot resolve the host {host!r}: {error}") from None
    return all(ipaddress.ip_address(entry[4][0]).is_loopback for entry in found)


def make_server(
    explorer: Explorer, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False
) -> ExplorerServer:
    """The explorer's server, bound (not yet serving) to ``host``:``port`` (0: a free port).
    A host that is not a loopback address is refused unless ``allow_remote``: the page has no
    authentication, and anyone who can reach it can use the model."""
    if not 0 <= port <= 65535:
        raise AevbError(f"port must be in 0…65535, got {port}")
    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise AevbError(
            f"{host} is not a loopback address: the explorer has no authentication, so it "
            "serves on 127.0.0.1 unless a host is given explicitly (allow_remote=True)"
        )
    page = resources.files("aevb.views").joinpath(PAGE).read_bytes()
    server_class = _ServerV6 if ":" in host else ExplorerServer
    try:
        return server_class((host, port), _Api(explorer, page), loopback)
    except OSError as error:
        raise AevbError(f"cannot listen on {host} port {port}: {error.strerror or error}") from None


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "cpu",
    open_browser: bool = True,
    allow_remote: bool = False,
    which: str = "best",
) -> None:
    """Serve the explorer of the run in ``run_dir`` until Ctrl-C (or SIGTERM), printing its
    URL; ``open_browser`` opens it in the default browser."""
    print(f"aevb explore: loading {run_dir} …", file=sys.stderr, flush=True)
    explorer = Explorer(load_run(run_dir, which=which, device=device))
    server = make_server(explorer, host, port, allow_remote)
    if not server.loopback:
        print(
            f"warning: serving on {host}, which is not a loopback address: anyone who can reach "
            "this machine can use the model (there is no authentication)",
            file=sys.stderr,
        )
    print(f"aevb explore: {server.url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("aevb explore: stopped", file=sys.stderr)
    finally:
        server.server_close()
