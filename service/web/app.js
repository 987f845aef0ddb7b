// swinxseg web page: upload a CT as a job, follow its progress, view the mask over the CT with
// NiiVue (vendored, served by this server), show the organ statistics and offer every output.
// Talks only to this server's /v1/jobs API; an API key goes in the X-API-Key header, never a URL.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("swinxseg-config").textContent);
  const KEY_STORE = "swinxseg-api-key";
  const POLL_MS = 600;
  const CT_WINDOW = { width: 400, level: 40 }; // abdomen soft tissue
  const STAGE_WORDS = {
    queued: "Waiting in the queue",
    reading: "Reading the scan",
    preprocessing: "Preparing the scan (orientation, spacing, body crop)",
    inference: "Segmenting",
    writing: "Writing the results",
    done: "Done",
  };
  // What an HTTP status means for the person at the page; the server's detail follows it.
  const STATUS_WORDS = {
    400: "The server could not read the upload.",
    401: "The API key is missing or wrong.",
    404: "The job no longer exists.",
    408: "The upload was too slow and the server stopped waiting.",
    409: "The job is not finished.",
    410: "The results have expired and were deleted.",
    413: "The file is too large for this server.",
    415: "This file is not a CT format the service can read.",
    422: "This CT cannot be segmented as it is.",
    429: "The server is busy with other scans.",
    500: "Something went wrong on the server.",
    503: "The service is not ready yet.",
  };
  const DOWNLOADS = [
    ["nifti", "Mask (NIfTI .nii.gz)"],
    ["rtstruct", "RT Structure Set (RTSTRUCT .dcm)"],
    ["seg", "DICOM SEG (.dcm)"],
    ["preview", "Preview (PNG)"],
    ["statistics", "Statistics (JSON)"],
  ];

  const $ = (id) => document.getElementById(id);
  const labelInfo = new Map(config.labels.map((entry) => [entry.label, entry]));
  const state = {
    key: sessionStorage.getItem(KEY_STORE) || "",
    runId: 0, // bumped by each upload: a stale poll loop stops
    nv: null,
    present: [],
    hidden: new Set(),
    objectUrls: [],
  };

  class ApiError extends Error {
    constructor(status, code, detail, retryAfter) {
      super(detail);
      this.status = status;
      this.code = code;
      this.detail = detail;
      this.retryAfter = retryAfter;
    }

    static async from(response) {
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
      return new ApiError(response.status, body && body.error, detail, response.headers.get("Retry-After"));
    }
  }

  function authHeaders() {
    return state.key ? { "X-API-Key": state.key } : {};
  }

  async function api(path, options = {}) {
    const headers = { ...authHeaders(), ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (!response.ok) {
      throw await ApiError.from(response);
    }
    return response;
  }

  function explain(error) {
    if (!(error instanceof ApiError)) {
      return `The page could not reach the server or read its answer (${error.message}).`;
    }
    const lead = STATUS_WORDS[error.status] || `The server answered ${error.status}.`;
    const retry = error.retryAfter ? ` Try again in about ${error.retryAfter} s.` : "";
    return `${lead} ${error.detail}${retry}`;
  }

  function jobFailureWords(job) {
    const detail = job.error ? job.error.detail : "no reason given";
    return `The segmentation failed. ${detail}`;
  }

  // ------------------------------------------------------------------ status area
  function showStatus(text) {
    $("status-section").hidden = false;
    $("status-text").textContent = text;
  }

  function showError(text) {
    const box = $("error-box");
    box.hidden = !text;
    box.textContent = text || "";
  }

  function showWarnings(warnings) {
    const list = $("warning-list");
    list.replaceChildren(...(warnings || []).map((warning) => {
      const item = document.createElement("li");
      item.textContent = `Warning: ${warning.message}`;
      return item;
    }));
    list.hidden = !list.children.length;
  }

  function showProgress(progress) {
    const row = $("progress-row");
    const bar = $("progress-bar");
    if (!progress) {
      row.hidden = true;
      return;
    }
    row.hidden = false;
    const total = progress.windows_total || 0;
    if (progress.stage === "done") {
      bar.max = 1;
      bar.value = 1;
      $("progress-count").textContent = total ? `${total} of ${total} windows` : "";
    } else if (total > 0) {
      bar.max = total;
      bar.value = progress.windows_done;
      $("progress-count").textContent = `${progress.windows_done} of ${total} windows`;
    } else {
      bar.removeAttribute("value"); // indeterminate until the window count is known
      $("progress-count").textContent = "";
    }
  }

  function describeJob(job) {
    const progress = job.progress || {};
    if (job.status === "queued") {
      const place = progress.queue_position;
      return place ? `Waiting in the queue: position ${place}.` : "Waiting in the queue.";
    }
    const words = STAGE_WORDS[progress.stage] || job.status;
    if (progress.stage === "inference" && progress.windows_total) {
      const percent = Math.floor((100 * progress.windows_done) / progress.windows_total);
      return `${words}: ${percent} %.`;
    }
    return `${words}.`;
  }

  // ------------------------------------------------------------------ upload and polling
  function wantsDicomOutputs(file) {
    return /\.zip$/i.test(file.name);
  }

  async function submit(file, withDicomOutputs) {
    const params = new URLSearchParams({ image: "true", preview: "true", filename: file.name });
    if (withDicomOutputs) {
      params.set("outputs", "nifti,rtstruct,seg");
    }
    const response = await api(`/v1/jobs?${params}`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
    return response.json();
  }

  function dicomOutputsRefused(job) {
    return job.status === "failed" && job.error && job.error.error === "invalid_dicom_series"
      && /(RTSTRUCT|SEG)\b/.test(job.error.detail);
  }

  async function pollUntilFinished(job, runId) {
    let current = job;
    while (current.status === "queued" || current.status === "running") {
      showStatus(describeJob(current));
      showProgress(current.progress);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (runId !== state.runId) {
        return null; // a newer upload took over
      }
      current = await (await api(current.links.self)).json();
    }
    return current;
  }

  // For people nothing; for tests and scripts: where the last upload stands (busy, done, failed).
  function markState(value) {
    document.body.dataset.jobState = value;
  }

  async function runUpload(file) {
    const runId = ++state.runId;
    markState("busy");
    showError(null);
    showWarnings([]);
    $("result-section").hidden = true;
    showProgress(null);
    showStatus(`Uploading ${file.name} (${(file.size / 2 ** 20).toFixed(1)} MB)...`);
    let notice = null;
    try {
      let withDicom = wantsDicomOutputs(file);
      let job = await pollUntilFinished(await submit(file, withDicom), runId);
      if (job && withDicom && dicomOutputsRefused(job)) {
        // The series cannot carry RTSTRUCT/SEG (e.g. blank UIDs): segment it without them.
        notice = `RTSTRUCT and SEG cannot be made for this series: ${job.error.detail} The mask is made without them.`;
        withDicom = false;
        job = await pollUntilFinished(await submit(file, withDicom), runId);
      }
      if (!job) {
        return;
      }
      showWarnings([...(notice ? [{ message: notice }] : []), ...(job.warnings || [])]);
      if (job.status === "failed") {
        showProgress(null);
        showStatus("The segmentation failed.");
        showError(jobFailureWords(job));
        markState("failed");
        return;
      }
      showStatus(`Done: ${file.name} segmented in ${jobSeconds(job)}.`);
      showProgress(job.progress);
      await showResult(job);
      markState("done");
    } catch (error) {
      if (runId !== state.runId) {
        return;
      }
      showProgress(null);
      showStatus("The scan was not segmented.");
      showError(explain(error));
      markState("failed");
      if (error instanceof ApiError && error.status === 401) {
        askForKey(true);
      }
    }
  }

  function jobSeconds(job) {
    const seconds = job.metrics && job.metrics.total_seconds;
    return seconds ? `${seconds.toFixed(1)} s` : "a moment";
  }

  // ------------------------------------------------------------------ viewer
  async function viewer() {
    if (state.nv) {
      return state.nv;
    }
    const nv = new niivue.Niivue({
      backColor: [0.07, 0.08, 0.1, 1],
      crosshairColor: [1, 0.85, 0.2, 1],
      show3Dcrosshair: true,
      isColorbar: false,
      dragAndDropEnabled: false,
      multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
      multiplanarLayout: niivue.MULTIPLANAR_TYPE.GRID,
      logLevel: "warn",
      loadingText: "loading...",
    });
    await nv.attachToCanvas($("viewer"));
    nv.setSliceType(nv.sliceTypeMultiplanar);
    // The 3D render shows the organs through a translucent body (overlay blended over the CT),
    // seen from the front left and above.
    nv.opts.renderOverlayBlend = 2;
    nv.setRenderAzimuthElevation(120, 30);
    state.nv = nv;
    return nv;
  }

  function labelColormap() {
    const cmap = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
    for (const label of state.present) {
      const info = labelInfo.get(label) || { name: `label ${label}`, colour: [255, 255, 0] };
      cmap.R.push(info.colour[0]);
      cmap.G.push(info.colour[1]);
      cmap.B.push(info.colour[2]);
      cmap.A.push(state.hidden.has(label) ? 0 : 255);
      cmap.I.push(label);
      cmap.labels.push(info.name);
    }
    return cmap;
  }

  function applyLabelColours() {
    const mask = state.nv && state.nv.volumes[1];
    if (!mask) {
      return;
    }
    mask.setColormapLabel(labelColormap());
    state.nv.updateGLVolume();
  }

  function labelsIn(mask) {
    const seen = new Set();
    const voxels = mask.img;
    for (let i = 0; i < voxels.length; i += 1) {
      seen.add(voxels[i]);
    }
    seen.delete(0);
    return [...seen].sort((a, b) => a - b);
  }

  async function showResult(job) {
    $("result-section").hidden = false; // the canvas needs its size before NiiVue attaches
    const nv = await viewer();
    const opacity = Number($("opacity").value);
    const headers = authHeaders();
    await nv.loadVolumes([
      {
        url: job.links.image, name: "ct.nii.gz", headers, colormap: "gray", trustCalMinMax: true,
        cal_min: CT_WINDOW.level - CT_WINDOW.width / 2, cal_max: CT_WINDOW.level + CT_WINDOW.width / 2,
      },
      { url: job.links.mask, name: "mask.nii.gz", headers, opacity },
    ]);
    state.present = labelsIn(nv.volumes[1]);
    state.hidden = new Set();
    applyLabelColours();
    buildLegend();
    buildStatistics(job.statistics || []);
    buildDownloads(job);
    $("result-section").dataset.jobId = job.id;
  }

  function buildLegend() {
    const items = state.present.map((label) => {
      const info = labelInfo.get(label) || { name: `label ${label}`, colour: [255, 255, 0] };
      const item = document.createElement("li");
      item.dataset.label = String(label);
      const box = document.createElement("input");
      box.type = "checkbox";
      box.id = `label-${label}`;
      box.checked = true;
      box.addEventListener("change", () => {
        if (box.checked) {
          state.hidden.delete(label);
        } else {
          state.hidden.add(label);
        }
        applyLabelColours();
      });
      const text = document.createElement("label");
      text.htmlFor = box.id;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = `rgb(${info.colour.join(",")})`;
      text.append(swatch, document.createTextNode(`${label} ${info.name}`));
      item.append(box, text);
      return item;
    });
    $("legend-list").replaceChildren(...items);
  }

  function buildStatistics(organs) {
    const rows = organs.map((organ) => {
      const row = document.createElement("tr");
      row.dataset.label = String(organ.label);
      const name = (labelInfo.get(organ.label) || { name: organ.name }).name;
      for (const text of [name, organ.volume_ml.toFixed(1), organ.mean_hu.toFixed(0)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    });
    $("stats-table").querySelector("tbody").replaceChildren(...rows);
  }

  function downloadLinks(job) {
    const outputs = (job.links && job.links.outputs) || {};
    const links = { ...outputs, preview: job.links.preview, statistics: job.links.statistics };
    return DOWNLOADS.filter(([kind]) => links[kind]).map(([kind, text]) => [kind, text, links[kind]]);
  }

  function buildDownloads(job) {
    for (const url of state.objectUrls) {
      URL.revokeObjectURL(url);
    }
    state.objectUrls = [];
    const items = downloadLinks(job).map(([kind, text, href]) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = href;
      link.textContent = text;
      link.className = "button";
      link.dataset.kind = kind;
      link.setAttribute("download", "");
      link.addEventListener("click", (event) => {
        if (state.key) {
          event.preventDefault(); // a plain link cannot send the key header
          downloadWithKey(href).catch((error) => showError(explain(error)));
        }
      });
      item.append(link);
      return item;
    });
    $("download-list").replaceChildren(...items);
  }

  async function downloadWithKey(href) {
    const response = await api(href);
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const url = URL.createObjectURL(await response.blob());
    state.objectUrls.push(url);
    const temporary = document.createElement("a");
    temporary.href = url;
    temporary.download = match ? match[1] : "download";
    temporary.click();
  }

  // ------------------------------------------------------------------ controls
  function askForKey(again) {
    $("key-section").hidden = false;
    if (again) {
      sessionStorage.removeItem(KEY_STORE);
      state.key = "";
    }
    $("key-input").focus();
  }

  function setUpKey() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.key = $("key-input").value.trim();
      sessionStorage.setItem(KEY_STORE, state.key);
      $("key-input").value = "";
      $("key-section").hidden = true;
      showError(null);
      $("file-input").focus();
    });
    if (config.api_key_required && !state.key) {
      askForKey(false);
    }
  }

  function setUpUpload() {
    const zone = $("drop-zone");
    const input = $("file-input");
    input.addEventListener("change", () => {
      if (input.files.length) {
        runUpload(input.files[0]);
        input.value = ""; // the same file can be chosen again
      }
    });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "drop"]) {
      zone.addEventListener(name, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer.files[0];
      if (file) {
        runUpload(file);
      }
    });
    // A file dropped beside the zone must not make the browser leave the page to open it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  function setUpOpacity() {
    const slider = $("opacity");
    slider.addEventListener("input", () => {
      $("opacity-value").textContent = `${Math.round(Number(slider.value) * 100)} %`;
      if (state.nv && state.nv.volumes[1]) {
        state.nv.setOpacity(1, Number(slider.value));
      }
    });
  }

  setUpKey();
  setUpUpload();
  setUpOpacity();
  document.body.dataset.ready = "true";
})();
