"""A real Orthanc (Debian's orthanc + orthanc-dicomweb) for the tests: free loopback ports, a
temporary storage folder and configuration, DICOMweb on, HTTP basic authentication on.

``OrthancServer.start()`` waits until its REST API answers; ``stop()`` terminates it (and is safe to
call twice). ``send(folder)`` C-STOREs a folder with dcmtk's storescu, as a scanner would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
STORESCU = shutil.which("storescu")
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER, PASSWORD = "swinxseg", "orthanc-test-password"
AET = "ORTHANCTEST"


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        for path in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return path
    return None


def missing_tools() -> str | None:
    """Why the Orthanc tests cannot run here (None: they can)."""
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (make orthanc installs the Debian orthanc package)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (make orthanc installs orthanc-dicomweb)"
    if STORESCU is None:
        return "dcmtk's storescu is not installed (make orthanc installs dcmtk)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class OrthancServer:
    folder: Path
    lua: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)  # e.g. deploy/orthanc/orthanc.json, under the test overrides
    env: dict = field(default_factory=dict)  # added to the Orthanc process's environment
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        storage = self.folder / "storage"
        return {
            **self.base,
            "Name": "swinxseg-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": self.base.get("Plugins", [str(dicomweb_plugin())]),
            "DicomWeb": self.base.get("DicomWeb", {"Enable": True, "Root": "/dicom-web/"}),
            "StableAge": 1, "LuaScripts": [str(p) for p in self.lua], "DicomCheckCalledAet": False,
            "HttpTimeout": 60, **self.extra,
        }

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - kept open for the process
        self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.rest("get", "/system").ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test paused it
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, auth=(USER, PASSWORD), timeout=30, **kwargs)

    def send(self, folder: Path) -> None:
        """C-STORE every file of ``folder`` (dcmtk storescu, as a scanner does)."""
        files = sorted(str(p) for p in folder.iterdir())
        result = subprocess.run([STORESCU, "-aec", AET, "-aet", "SCANNER", "127.0.0.1", str(self.dicom_port),
                                 *files], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Orthanc's own view (REST API) of a study's series: [{"uid", "modality", "instances": [ids]}]."""
        found = self.rest("post", "/tools/lookup", data=study_uid).json()
        study = next(item for item in found if item["Type"] == "Study")
        answer = self.rest("get", f"/studies/{study['ID']}/series").json()
        return [{"uid": s["MainDicomTags"]["SeriesInstanceUID"], "modality": s["MainDicomTags"].get("Modality"),
                 "instances": s["Instances"]} for s in answer]

    def delete_instance(self, sop_uid: str) -> None:
        found = self.rest("post", "/tools/lookup", data=sop_uid).json()
        instance = next(item for item in found if item["Type"] == "Instance")
        self.rest("delete", f"/instances/{instance['ID']}").raise_for_status()
