"""The MLflow UI as a user meets it, in headless Chromium: a real sweep's store served by ``mlflow/serve.sh``,
its runs table (run names told apart), a fine-tune run's CAM figure and the aggregate run's artifacts.

MLflow's UI is a React app: every check waits for the elements (WebDriverWait) instead of reading the page
once it has loaded. Screenshots of each page land in the test's tmp_path, for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from browser import chromium, require_browser
from conftest import PROJECT_ROOT, run_sweep_cli
from test_run_names import UI_CUT

pytestmark = pytest.mark.e2e

WAIT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(store_uri: str, artifacts: Path, log_path: Path):
    """``mlflow/serve.sh`` on a free port of 127.0.0.1 over ``store_uri``; stopped (its process group) after."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_PORT": str(port),
        "MLFLOW_BACKEND_STORE_URI": store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
        "PYTHON": sys.executable,
    }
    log = open(log_path, "w")
    server = subprocess.Popen(
        ["bash", str(PROJECT_ROOT / "mlflow" / "serve.sh"), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the MLflow server did not answer within 180 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        log.close()


def wait_for(driver, condition, what: str, shots: Path, timeout: float = WAIT_S):
    """``condition``'s first truthy answer; on a timeout, a screenshot of the page as it was (in ``shots``)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        shot = shots / f"timeout-{what.replace('/', '_').replace(' ', '_')}.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(f"{what}: not shown within {timeout:.0f}s at {driver.current_url} (see {shot})") from None


def run_links(driver) -> dict[str, str]:
    """Run name -> run id, from the runs table's links to the runs."""
    from selenium.webdriver.common.by import By

    links = {}
    for link in driver.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']"):
        href, text = link.get_attribute("href") or "", link.text.strip()
        run_id = href.rstrip("/").split("/runs/")[-1].split("/")[0]
        if text and len(run_id) == 32:
            links[text] = run_id
    return links


def shown_image(driver, name: str):
    """The ``<img>`` showing artifact ``name``, once the browser has decoded it (naturalWidth > 0): the UI
    fetches the file and shows it from a ``blob:`` URL (older versions: from ``get-artifact?path=...``)."""
    from selenium.webdriver.common.by import By

    for image in driver.find_elements(By.TAG_NAME, "img"):
        source = (image.get_attribute("src") or "").replace("%2F", "/")
        if (source.startswith("blob:") or name in source) and driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 32", image
        ):
            return image
    return None


def test_mlflow_browser_runs_table_cam_figure_and_aggregate(tmp_path, data_root):
    require_browser()
    from selenium.webdriver.common.by import By

    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": store}
    sweep = run_sweep_cli(
        [
            "sweeps/smoke.yaml",
            *("--set", f"output_dir={tmp_path / 'outputs'}", "--set", f"results_dir={tmp_path / 'results'}"),
            *("--set", "name=browser", "--set", "grid.class_weight=[none]", "--set", "finetune.epochs=1"),
            *("--set", "grid.label_fraction=[0.1,0.05]"),
            *("--set", "cam.faithfulness=false", "--set", "cam.images_per_class=2"),
        ],
        env,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("browser").experiment_id
    assert f"/#/experiments/{experiment}/runs" in sweep.stdout  # the sweep's end names the runs table
    finetune = client.search_runs([experiment], "tags.stage = 'finetune'")
    aggregate = client.search_runs([experiment], "tags.stage = 'aggregate'")
    assert len(finetune) == 2 and len(aggregate) == 1
    for run in finetune:
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["pneumoniamnist@28"]
    cam_run = finetune[0]
    cams = [item.path for item in client.list_artifacts(cam_run.info.run_id, "cam") if item.path.endswith(".png")]
    assert cams, "the fine-tune run logged no CAM figure"
    aggregate_files = {item.path for item in client.list_artifacts(aggregate[0].info.run_id)}
    has_report = "report.html" in aggregate_files  # added by the results report, when that is in this checkout

    with served(store, tmp_path / "served-artifacts", tmp_path / "server.log") as ui, chromium() as driver:
        driver.get(f"{ui}/#/experiments/{experiment}/runs")
        names = {run.info.run_name for run in finetune}
        links = wait_for(
            driver, lambda d: (found := run_links(d)) and names <= set(found) and found, "the runs table", tmp_path
        )
        driver.save_screenshot(str(tmp_path / "runs_table.png"))
        assert len({name[:UI_CUT] for name in names}) == len(names), names  # told apart within the cut
        assert links[cam_run.info.run_name] == cam_run.info.run_id
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "pneumoniamnist@28" in body, "the Dataset column does not name the data"

        figure = cams[0]
        driver.get(f"{ui}/#/experiments/{experiment}/runs/{cam_run.info.run_id}/artifacts")
        folder = wait_for(
            driver,
            lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='cam']"),
            "the cam/ folder",
            tmp_path,
        )
        folder[0].click()
        leaf = Path(figure).name
        entry = wait_for(
            driver, lambda d: d.find_elements(By.XPATH, f"//*[normalize-space(text())='{leaf}']"), figure, tmp_path
        )
        entry[0].click()
        wait_for(driver, lambda d: shown_image(d, figure), f"the image {figure}", tmp_path)
        driver.save_screenshot(str(tmp_path / "cam_figure.png"))

        driver.get(f"{ui}/#/experiments/{experiment}/runs/{aggregate[0].info.run_id}/artifacts")
        tables = "summary.csv" if "summary.csv" in aggregate_files else sorted(aggregate_files)[0]
        expected = "report.html" if has_report else tables
        named = f"//*[normalize-space(text())='{expected}']"
        wait_for(driver, lambda d: d.find_elements(By.XPATH, named), f"the aggregate run's {expected}", tmp_path)
        driver.save_screenshot(str(tmp_path / "aggregate_artifacts.png"))
        driver.find_elements(By.XPATH, named)[0].click()
        if expected == "summary.csv":  # the table's preview shows its first cell; report.html shows in a frame
            local = client.download_artifacts(aggregate[0].info.run_id, expected, str(tmp_path))
            first = Path(local).read_text().splitlines()[1].split(",")[0]
            cell = f"//*[normalize-space(text())='{first}']"
            shown = lambda d: d.find_elements(By.XPATH, cell)  # noqa: E731
        else:
            shown = lambda d: len(d.find_elements(By.XPATH, named)) >= 2  # noqa: E731 (headed by its name)
        wait_for(driver, shown, f"{expected}'s preview", tmp_path)
        driver.save_screenshot(str(tmp_path / "aggregate_preview.png"))
