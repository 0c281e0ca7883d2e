"""``aevb explore``: the JSON/PNG API behind the page, its refusals of malformed requests, the
command's start and Ctrl-C, and the page itself in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageStat

from aevb.cli import main
from aevb.errors import AevbError
from aevb.runs import load_run
from aevb.views import explore
from aevb.views.explore import MAX_REQUESTS, MAX_UPLOAD, Explorer, RequestError, make_server
from aevb.views.latent_space import decode

QUICK = ["--hidden", "32", "--epochs", "2", "--batch-size", "64", "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train(out: Path, *flags: str) -> Path:
    assert main(["train", "--out", str(out), *QUICK, *flags]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny digits run (8×8 images, labels) with 3 latent units."""
    return train(tmp_path_factory.mktemp("explore") / "run", "--latent-dim", "3")


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def serving(explorer: Explorer):
    """The explorer's server on 127.0.0.1 and a free port, serving from a thread until the
    fixture that yields from this ends."""
    server = make_server(explorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def server(run):
    yield from serving(Explorer(run, num_examples=200))


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    """(status, headers, body) of one request; 4xx and 5xx are returned, not raised."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def get_json(server, path: str) -> dict:
    status, headers, body = request(server, "GET", path)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def pixels(uri_or_png: str | bytes) -> np.ndarray:
    """The grey levels (H, W) uint8 of a PNG, or of a PNG data URI."""
    if isinstance(uri_or_png, str):
        prefix = "data:image/png;base64,"
        assert uri_or_png.startswith(prefix)
        uri_or_png = base64.b64decode(uri_or_png[len(prefix) :])
    assert uri_or_png.startswith(PNG_SIGNATURE)
    return np.asarray(Image.open(io.BytesIO(uri_or_png)).convert("L"))


def levels(images: torch.Tensor) -> np.ndarray:
    """Decoder means (N, 1, H, W) as the grey levels a PNG of them holds."""
    return np.round(images.clamp(0, 1).numpy() * 255).astype(np.uint8)[:, 0]


def z_text(z) -> str:
    return ",".join(f"{float(v):.5g}" for v in z)


def png_of(image: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode).save(buffer, format=fmt)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the API
def test_serves_on_loopback_on_a_free_port(server):
    host, port = server.server_address[:2]
    assert host == "127.0.0.1" and port > 0
    assert server.url == f"http://127.0.0.1:{port}/"
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script>" in page and b"/api/decode" in page
    assert b'src="http' not in page and b'href="http' not in page  # no external resources


def test_info_ranks_sliders_by_activity(server, run):
    info = get_json(server, "/api/info")
    assert info["latent_dim"] == 3 and info["event_shape"] == [1, 8, 8] and info["is_image"]
    assert sorted(info["sliders"]) == [0, 1, 2]
    activity = [info["activity"][unit] for unit in info["sliders"]]
    assert activity == sorted(activity, reverse=True)
    assert all(
        low < origin < high
        for (low, high), origin in zip(info["ranges"], info["origin"], strict=True)
    )
    assert info["num_test"] == 200 and info["classes"] is None


def test_decode_returns_the_decoder_mean_and_changes_with_z(server, run):
    at_origin = get_json(server, "/api/decode?z=0,0,0")["image"]
    moved = get_json(server, "/api/decode?z=2.5,-2.5,1")["image"]
    assert pixels(at_origin).shape == (8, 8)
    assert not np.array_equal(pixels(at_origin), pixels(moved))
    expected = levels(decode(run, torch.tensor([[2.5, -2.5, 1.0]])))[0]
    assert np.abs(pixels(moved).astype(int) - expected).max() <= 1
    status, headers, png = request(server, "GET", "/api/decode.png?z=2.5,-2.5,1")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert np.array_equal(pixels(png), pixels(moved))


def test_grid_tiles_are_decoded_latents_over_two_units(server, run):
    data = get_json(server, "/api/grid?i=0&j=2&size=4&z=0,0.5,0")
    grid = pixels(data["image"])
    assert grid.shape == (4 * 8 + 3, 4 * 8 + 3)  # 1-pixel padding between tiles
    across, down = data["across"], data["down"]
    assert across == sorted(across) and down == sorted(down, reverse=True)
    for row in (0, 3):
        for column in (0, 3):
            z = torch.tensor([[across[column], 0.5, down[row]]])
            tile = grid[row * 9 : row * 9 + 8, column * 9 : column * 9 + 8]
            assert np.abs(tile.astype(int) - levels(decode(run, z))[0]).max() <= 1
    assert not np.array_equal(grid[:8, :8], grid[-8:, -8:])


def test_interpolation_runs_between_the_two_reconstructions(server, run):
    data = get_json(server, "/api/interpolate?a=0&b=1&steps=5")
    assert len(data["images"]) == 5 and data["a"]["index"] == 0 and data["b"]["index"] == 1
    x = run.split("test", 2)
    ends = levels(run.reconstruct(x))
    assert np.abs(pixels(data["images"][0]).astype(int) - ends[0]).max() <= 1
    assert np.abs(pixels(data["images"][-1]).astype(int) - ends[1]).max() <= 1
    seen = levels(run.transforms.inverse(run.prepare(x)))  # the test rows as the model sees them
    assert np.array_equal(pixels(data["a"]["image"]), seen[0])
    assert data["a"]["label"] == int(run.labels("test", 1)[0])
    mean = run.encode(x[:1]).mean[0]
    assert np.allclose(data["a"]["mean"], mean.numpy(), rtol=1e-4, atol=1e-4)


def test_encode_upload_round_trip(server, run):
    """A test image uploaded as a PNG has the posterior and reconstruction of the image."""
    x = run.split("test", 4)[3:4]
    seen = run.transforms.inverse(run.prepare(x))  # binary: exact in 8-bit grey levels
    body = png_of(levels(seen)[0])
    status, _, answer = request(server, "POST", "/api/encode", body, {"Content-Type": "image/png"})
    assert status == 200, answer
    data = json.loads(answer)
    q = run.encode(seen)
    assert np.allclose(data["mean"], q.mean[0].numpy(), rtol=1e-4, atol=1e-4)
    assert np.allclose(data["std"], q.stddev[0].numpy(), rtol=1e-4, atol=1e-4)
    assert np.array_equal(pixels(data["input"]), levels(seen)[0])
    assert (
        np.abs(pixels(data["reconstruction"]).astype(int) - levels(run.reconstruct(seen))[0]).max()
        <= 1
    )
    # the sliders follow the posterior mean: decoding it gives the reconstruction
    decoded = get_json(server, f"/api/decode?z={z_text(data['mean'])}")["image"]
    assert np.abs(pixels(decoded).astype(int) - pixels(data["reconstruction"])).max() <= 1


def test_encode_resizes_colour_jpeg_and_inverts(server):
    """A larger colour JPEG becomes an 8×8 grey input; ``invert`` flips its levels."""
    image = np.zeros((64, 48, 3), np.uint8)
    image[8:56, 20:28] = 255  # a bright vertical bar
    body = png_of(image, "RGB", "JPEG")
    plain = json.loads(request(server, "POST", "/api/encode", body)[2])
    inverted = json.loads(request(server, "POST", "/api/encode?invert=1", body)[2])
    assert len(plain["mean"]) == 3 and pixels(plain["input"]).shape == (8, 8)
    assert plain["mean"] != inverted["mean"]
    # the input is binarized by the run (Bernoulli), so bright pixels stay mostly on
    bar = pixels(plain["input"])[1:7, 3:5]
    assert bar.mean() > 128 and pixels(inverted["input"])[1:7, 3:5].mean() < 128


def raw_request(server, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; the status and body of the answer."""
    with socket.create_connection(server.server_address[:2], timeout=30) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


MALFORMED = [
    ("GET", "/api/decode?z=a,b,c", None, {}, 400, "must be a number"),
    ("GET", "/api/decode?z=1,2", None, {}, 400, "must hold 3 values"),
    ("GET", "/api/decode?z=nan,0,0", None, {}, 400, "finite"),
    ("GET", "/api/decode?z=1e9,0,0", None, {}, 400, "finite"),
    ("GET", "/api/decode", None, {}, 400, "z"),
    ("GET", "/api/decode?z=0,0,0&label=1", None, {}, 400, "not conditional"),
    ("GET", "/api/decode?z=0,0,0&label=x", None, {}, 400, "integer"),
    ("GET", "/api/grid?i=0&j=0", None, {}, 400, "two different"),
    ("GET", "/api/grid?i=0&j=9", None, {}, 400, "latent units are 0…2"),
    ("GET", "/api/grid?i=0&j=1&size=500", None, {}, 400, "size"),
    ("GET", "/api/grid?i=zero&j=1", None, {}, 400, "integer"),
    ("GET", "/api/test?index=-1", None, {}, 400, "0…199"),
    ("GET", "/api/test?index=200", None, {}, 400, "0…199"),
    ("GET", "/api/interpolate?a=0&b=1&steps=1000", None, {}, 400, "steps"),
    ("GET", "/api/interpolate?a=0", None, {}, 400, "missing"),
    ("GET", "/nowhere", None, {}, 404, "no such path"),
    ("POST", "/api/decode?z=0,0,0", b"", {}, 405, "takes GET"),
    ("GET", "/api/encode", None, {}, 405, "takes POST"),
    ("DELETE", "/api/info", None, {}, 405, "takes GET"),
    ("POST", "/api/encode", b"not an image", {}, 400, "not a readable PNG or JPEG"),
    ("POST", "/api/encode", b"", {}, 400, "no body"),
    ("POST", "/api/encode", PNG_SIGNATURE + b"\x00" * 40, {}, 400, "not a readable"),
    ("GET", "/api/info", None, {"Host": "attacker.example"}, 403, "Host"),
    ("GET", "/api/info", None, {"Host": "127.attacker.example"}, 403, "Host"),
    ("GET", "/api/info", None, {"Host": "127.0.0.1.attacker.example:80"}, 403, "Host"),
    ("GET", "/api/info", None, {"Host": "localhost.evil.com"}, 403, "Host"),
    ("GET", "/api/info", None, {"Host": "[::1.evil.com]:80"}, 403, "Host"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    MALFORMED,
    ids=[f"{m} {p[:40]} {s}" for m, p, _, _, s, _ in MALFORMED],
)
def test_malformed_requests_get_a_4xx_and_the_server_serves_on(
    server, capfd, method, path, body, headers, status, message
):
    got, reply_headers, reply = request(server, method, path, body, headers)
    assert got == status, reply
    assert reply.count(b"\n") == 0 and message in json.loads(reply)["error"]
    if status == 405:
        assert reply_headers["Allow"] in ("GET", "POST")
    assert request(server, "GET", "/api/info")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8000", True),
        ("127.0.0.2", True),
        ("LocalHost:8000", True),
        ("localhost.", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("", False),
        ("127.attacker.example", False),
        ("localhost.evil.com:8000", False),
        ("127.1", False),
        ("10.0.0.1:8000", False),
        ("[::1", False),
        ("[2001:db8::1]:80", False),
    ],
)
def test_only_loopback_host_names_are_answered(server, host, allowed):
    """DNS rebinding: a name that merely starts like a loopback address is not one."""
    assert server.host_allowed(host) is allowed


def test_a_busy_server_answers_503_and_serves_on(server, monkeypatch):
    """While MAX_REQUESTS requests are being answered, another waits a moment, then gets a
    one-line 503; once one ends, requests are answered again."""
    monkeypatch.setattr(explore, "BUSY_WAIT", 0.1)
    held = 0
    try:
        while held < MAX_REQUESTS:
            assert server.slots.acquire(timeout=30)
            held += 1
        status, _, reply = request(server, "GET", "/api/info")
        assert status == 503 and "busy" in json.loads(reply)["error"]
        assert reply.count(b"\n") == 0
        status, _, reply = request(server, "POST", "/api/encode", b"1" * 1000)
        assert status == 503
    finally:
        for _ in range(held):
            server.slots.release()
    assert request(server, "GET", "/api/info")[0] == 200


def test_oversized_truncated_and_garbled_requests(server, capfd):
    """Bodies too large (refused unread), a broken request line, a request cut short: each a
    one-line JSON error, with no traceback, and the server still answers."""
    too_big = (
        f"POST /api/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {MAX_UPLOAD + 1}\r\n\r\n"
    )
    status, body = raw_request(server, too_big.encode())
    assert status == 413 and "at most" in json.loads(body)["error"]
    status, body = raw_request(server, b"GARBAGE\r\n\r\n")
    assert status == 400 and "error" in json.loads(body)
    status, body = raw_request(server, b"POST /api/encode HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 411
    huge = Image.new("L", (5000, 5000))  # compresses to a few kB; 25 M pixels decoded
    status, _, reply = request(server, "POST", "/api/encode", png_of(np.asarray(huge)))
    assert status == 413 and "pixels" in json.loads(reply)["error"]
    with socket.create_connection(server.server_address[:2], timeout=5) as connection:
        connection.sendall(b"GET /api/inf")  # and leave
    assert request(server, "GET", "/api/info")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_encoding_an_upload_runs_without_gradients(run, monkeypatch):
    explorer = Explorer(run, num_examples=20)
    modes = []

    def prepare(x, where="the data"):
        modes.append(torch.is_grad_enabled())
        return type(run).prepare(run, x, where)

    monkeypatch.setattr(run, "prepare", prepare)
    encoded = explorer.encode(run.split("test", 1))
    assert modes and not any(modes) and torch.is_grad_enabled()
    assert not encoded.mean.requires_grad and not encoded.reconstruction.requires_grad


def test_non_loopback_host_is_refused_unless_allowed(run):
    explorer = Explorer(run, num_examples=20)
    with pytest.raises(AevbError, match="not a loopback address"):
        make_server(explorer, "0.0.0.0")
    server = make_server(explorer, "0.0.0.0", allow_remote=True)
    try:
        assert not server.loopback and server.server_address[0] == "0.0.0.0"
    finally:
        server.server_close()
    with pytest.raises(AevbError, match="port"):
        make_server(explorer, port=70000)


def test_conditional_model_decodes_the_chosen_class(tmp_path):
    run = load_run(train(tmp_path / "c", "--latent-dim", "2", "--conditional", "--epochs", "1"))
    explorer = Explorer(run, num_examples=50)
    assert explorer.info.classes == 10
    z = torch.zeros(2)
    assert not torch.equal(explorer.decode(z, 0), explorer.decode(z, 7))
    with pytest.raises(RequestError, match="0…9"):
        explorer.decode(z, 10)
    # a test row is encoded with its own label
    _, mean, _, label = explorer.test_row(0)
    x = run.split("test", 1)
    assert torch.allclose(mean, run.encode(x, labels=torch.tensor([label])).mean[0])


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A run on a 6-column table (a 2-factor model plus noise), 2 latent units."""
    folder = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(300, 2))
    table = factors @ rng.normal(size=(2, 6)) + 0.1 * rng.normal(size=(300, 6)) + 5
    path = folder / "table.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,c,d,e,f", comments="")
    return load_run(train(folder / "run", "--dataset", str(path), "--latent-dim", "2"))


@pytest.fixture(scope="module")
def table_server(table_run):
    yield from serving(Explorer(table_run, num_examples=30))


def test_table_run_decodes_rows_and_encodes_csv(table_server, table_run):
    run, server = table_run, table_server
    info = get_json(server, "/api/info")
    assert not info["is_image"] and info["columns"] == 6 and len(info["column_ranges"]) == 6
    values = get_json(server, "/api/decode?z=1,-1")["values"]
    expected = decode(run, torch.tensor([[1.0, -1.0]]))[0]
    assert np.allclose(values, expected.numpy(), rtol=1e-4, atol=1e-3)
    assert len(get_json(server, "/api/grid?i=0&j=1&size=3")["values"]) == 9
    assert len(get_json(server, "/api/interpolate?a=0&b=1&steps=4")["values"]) == 4
    row = run.split("test", 1)
    csv = ", ".join(f"{v:.9g}" for v in row[0].tolist()).encode()
    status, _, reply = request(server, "POST", "/api/encode", csv, {"Content-Type": "text/csv"})
    assert status == 200, reply
    data = json.loads(reply)
    assert np.allclose(data["mean"], run.encode(row).mean[0].numpy(), rtol=1e-4, atol=1e-4)
    assert np.allclose(
        data["reconstruction"], run.reconstruct(row)[0].numpy(), rtol=1e-4, atol=1e-3
    )
    status, _, reply = request(server, "POST", "/api/encode", b"1,2,3")
    assert status == 400 and "6 numbers" in json.loads(reply)["error"]
    status, _, reply = request(server, "POST", "/api/encode", b"1,2,3,4,5,x")
    assert status == 400 and "number" in json.loads(reply)["error"]
    status, _, reply = request(server, "POST", "/api/encode", b"\xff\xfe1,2")
    assert status == 400 and "UTF-8" in json.loads(reply)["error"]
    assert request(server, "GET", "/api/decode.png?z=0,0")[0] == 400


def test_command_prints_the_url_and_stops_cleanly_on_ctrl_c(run_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "aevb.cli", "explore", str(run_dir), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, process.stderr.read() if process.poll() else line
        url = line.split()[2]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/info")
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "stopped" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------- in a browser
def start_chrome():
    """Headless Chromium driven by Selenium, or a skip naming what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [
        name for name, found in (("chromium", browser), ("chromedriver", driver)) if not found
    ]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not found on PATH (Debian: apt-get install chromium "
            "chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    return webdriver.Chrome(options=options, service=Service(driver))


def check_screenshot(png: bytes, name: str) -> None:
    """A screenshot that is not blank (many colours, a spread of grey levels); kept in the
    folder AEVB_SCREENSHOTS names, when set."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 16, f"{name}: {len(colours)} colours"
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10
    folder = os.environ.get("AEVB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def full_page(driver) -> bytes:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 80, 8000))
    return driver.get_screenshot_as_png()


def wait_for(condition, timeout: float = 30, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_decodes_live_in_a_browser(server, run, tmp_path):
    driver = start_chrome()
    try:
        driver.get(server.url)
        source = "return (document.getElementById('decoded-image') || {}).src"
        before = wait_for(lambda: driver.execute_script(source), what="the decoded image")
        assert before.startswith("data:image/png;base64,")
        unit = get_json(server, "/api/info")["sliders"][0]
        driver.execute_script(
            "const s = document.getElementById(arguments[0]); s.value = s.max;"
            "s.dispatchEvent(new Event('input'));",
            f"z{unit}",
        )
        after = wait_for(
            lambda: (src := driver.execute_script(source)) != before and src, what="a new image"
        )
        assert not np.array_equal(pixels(before), pixels(after))
        # the image shown is the decoder mean at the slider's value, the others at the origin
        info = get_json(server, "/api/info")
        z = torch.tensor(info["origin"])
        z[unit] = float(driver.execute_script(f"return document.getElementById('z{unit}').value"))
        assert np.abs(pixels(after).astype(int) - levels(decode(run, z[None]))[0]).max() <= 1
        # the grid and the interpolation were drawn; an upload sets the sliders
        wait_for(lambda: driver.execute_script("return !!document.querySelector('#grid-image')"))
        wait_for(
            lambda: driver.execute_script("return document.querySelectorAll('#interp img').length")
        )
        upload = tmp_path / "upload.png"
        seen = run.transforms.inverse(run.prepare(run.split("test", 1)))
        upload.write_bytes(png_of(levels(seen)[0]))
        driver.find_element("id", "upload").send_keys(str(upload))
        driver.find_element("id", "encode-go").click()
        wait_for(lambda: driver.execute_script("return !!document.getElementById('encoded-rows')"))
        mean = run.encode(seen).mean[0]
        shown = float(driver.execute_script(f"return document.getElementById('z{unit}').value"))
        low, high = info["ranges"][unit]
        assert shown == pytest.approx(min(max(float(mean[unit]), low), high), abs=0.05)
        assert driver.execute_script("return document.getElementById('status').textContent") == ""
        check_screenshot(full_page(driver), "explore.png")
    finally:
        driver.quit()


def test_table_page_charts_rows_in_a_browser(table_server):
    """For a table the page draws the decoded row as a chart; a slider redraws it, and the
    grid, interpolation and an encoded CSV row are drawn too."""
    driver = start_chrome()
    try:
        driver.get(table_server.url)
        values = "return document.getElementById('decoded').dataset.values"
        before = wait_for(lambda: driver.execute_script(values), what="the decoded row")
        assert len(before.split(",")) == 6
        assert (
            driver.execute_script("return document.querySelectorAll('#decoded rect').length") == 6
        )
        driver.execute_script(
            "const s = document.getElementById('z0'); s.value = s.min;"
            "s.dispatchEvent(new Event('input'));"
        )
        wait_for(lambda: driver.execute_script(values) != before, what="a new decoded row")
        wait_for(
            lambda: (
                driver.execute_script("return document.querySelectorAll('#grid svg').length") == 81
            )
        )
        wait_for(
            lambda: (
                driver.execute_script("return document.querySelectorAll('#interp svg').length")
                == 10
            )
        )
        driver.find_element("id", "row-fill").click()
        wait_for(lambda: driver.execute_script("return document.getElementById('row-text').value"))
        driver.find_element("id", "encode-row-go").click()
        wait_for(lambda: driver.execute_script("return !!document.getElementById('encoded-rows')"))
        assert driver.execute_script("return document.getElementById('status').textContent") == ""
        check_screenshot(full_page(driver), "explore_table.png")
    finally:
        driver.quit()
