// nasvit dashboard: plain JavaScript over the /api/v1 endpoints, drawn with the locally served
// plotly.js. No build step, so the file is shipped as written.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "nasvit.token";
const ACTIVE_STATUSES = new Set(["queued", "running"]);
// A running job is polled often enough to feel live; an idle page still notices new jobs.
const POLL_ACTIVE_MS = 2000;
const POLL_IDLE_MS = 10000;
const TRIALS_PAGE = 500;
const JOBS_PAGE = 100;
const FRONT_COLOR = "#1f77b4";
const DOMINATED_COLOR = "#b0b0b0";
const MEASURED_COLOR = "#ff7f0e";
const BUDGET_COLOR = "#d62728";
const COMPARE_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
  "#17becf", "#bcbd22"];

const state = {
  jobs: [],
  devices: [],
  selectedId: null,
  compared: new Set(),
  // job id -> {job, trials, pareto, final}; final: fetched after the job stopped changing.
  details: new Map(),
  timer: null,
  polling: false,
  pollAgain: false,
};

// ---- HTTP ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function apiFetch(path) {
  const response = await fetch(API + path, { headers: authHeaders() });
  if (response.ok) return response;
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    // Not JSON: keep the status text.
  }
  if (response.status === 401 || response.status === 403) {
    detail = `${detail} — this server needs an API token to read: paste one above`;
  }
  throw new ApiError(response.status, detail);
}

async function apiJson(path) {
  return (await apiFetch(path)).json();
}

// "&device=pi": which device's results, for a search of several devices.
function deviceQuery(device) {
  return device ? `&device=${encodeURIComponent(device)}` : "";
}

// Trials from ``offset`` on, following the pages; also the total the server reports.
async function fetchTrials(jobId, offset, device = null) {
  const items = [];
  for (let at = offset; ; at += TRIALS_PAGE) {
    const page = await apiJson(
      `/searches/${jobId}/trials?offset=${at}&limit=${TRIALS_PAGE}${deviceQuery(device)}`);
    items.push(...page.items);
    if (page.items.length === 0 || offset + items.length >= page.total) {
      return { items, total: page.total };
    }
  }
}

// The server marks a trial dominated when another is at least as good in score (accuracy with
// the loss tie-break) and latency and better in one. A running job is fetched incrementally, so
// the flags of older trials are recomputed here as new ones arrive (same rule, O(n log n)).
function markDominated(trials) {
  const order = trials.map((_, i) => i).sort((a, b) =>
    trials[a].predicted_ms - trials[b].predicted_ms || trials[b].score - trials[a].score);
  let bestFaster = -Infinity;
  for (let start = 0; start < order.length;) {
    const latency = trials[order[start]].predicted_ms;
    let end = start;
    while (end < order.length && trials[order[end]].predicted_ms === latency) end += 1;
    const top = trials[order[start]].score;
    for (const i of order.slice(start, end)) {
      trials[i].dominated = !(trials[i].score === top && top > bestFaster);
    }
    bestFaster = Math.max(bestFaster, top);
    start = end;
  }
  return trials;
}

async function fetchPareto(jobId, device = null) {
  try {
    return await apiJson(`/searches/${jobId}/pareto${device ? `?device=${encodeURIComponent(device)}` : ""}`);
  } catch (error) {
    // A job with no finished trial yet may have no front; draw it empty until one appears.
    if (error instanceof ApiError && (error.status === 404 || error.status === 409)) return null;
    throw error;
  }
}

// ---- formatting ---------------------------------------------------------------------------

function formatMs(value) {
  if (value === null || value === undefined) return "—";
  return `${Number(value.toPrecision(4))} ms`;
}

// "2 ms", "2 ms at p90" or "2 ms at 90% confidence": the budget as the job stated it.
function formatBudget(job) {
  let text = formatMs(job.budget_ms);
  if (job.budget_percentile !== null && job.budget_percentile !== undefined) {
    text += ` at p${job.budget_percentile}`;
  } else if (job.budget_confidence !== null && job.budget_confidence !== undefined) {
    text += ` at ${Number((100 * job.budget_confidence).toPrecision(4))}% confidence`;
  }
  return text;
}

const known = (value) => value !== null && value !== undefined;

// "1.02 ms [0.95, 1.12] at 90%": the prediction with its interval, when the table has one.
function formatPrediction(point) {
  const predicted = formatMs(point.predicted_ms);
  if (!known(point.low_ms) || !known(point.high_ms)) return `${predicted} (no interval)`;
  const bound = (value) => Number(value.toPrecision(3));
  const confidence = known(point.interval_confidence)
    ? ` at ${Number((100 * point.interval_confidence).toPrecision(4))}%` : "";
  return `${predicted} [${bound(point.low_ms)}, ${bound(point.high_ms)}]${confidence}`;
}

function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

// A search of several devices: "pi 20 ms · jetson 5 ms at p90".
function deviceBudgets(job) {
  return job.devices.map((d) => `${d.name} ${formatBudget(d)}`).join(" · ");
}

function jobLabel(job) {
  if (job.devices) return `${job.space} · ${deviceBudgets(job)} (${job.id.slice(0, 8)})`;
  return `${job.space} · ${job.device || "this CPU"} · ${formatBudget(job)} (${job.id.slice(0, 8)})`;
}

function setMessage(text, isError = false) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// ---- jobs table ---------------------------------------------------------------------------

function progressCell(job) {
  const cell = element("td");
  const progress = job.progress || {};
  const bar = element("progress");
  bar.max = 1;
  bar.value = progress.fraction || (job.status === "succeeded" ? 1 : 0);
  cell.append(bar);
  const parts = [];
  if (progress.total) parts.push(`${progress.done}/${progress.total}`);
  if (progress.stage) parts.push(progress.stage);
  cell.append(element("span", ` ${parts.join(" ")}`, "muted"));
  return cell;
}

function renderJobs(listing) {
  const body = document.querySelector("#jobs-table tbody");
  body.replaceChildren();
  document.getElementById("jobs-total").textContent = `(${listing.total})`;
  document.getElementById("jobs-empty").hidden = listing.items.length > 0;
  for (const job of listing.items) {
    const row = element("tr");
    row.dataset.jobId = job.id;
    row.classList.toggle("selected", job.id === state.selectedId);

    const compareCell = element("td");
    const box = element("input");
    box.type = "checkbox";
    box.className = "compare";
    box.title = "Compare on one plot";
    box.checked = state.compared.has(job.id);
    box.addEventListener("click", (event) => event.stopPropagation());
    box.addEventListener("change", () => toggleCompared(job.id, box.checked));
    compareCell.append(box);
    row.append(compareCell);

    row.append(element("td", job.id.slice(0, 8), "mono"));
    row.append(element("td", job.space));
    if (job.devices) {
      row.append(element("td", job.devices.map((d) => d.name).join(", ")));
      row.append(element("td", job.devices.map((d) => formatBudget(d)).join(", ")));
    } else {
      row.append(element("td", job.device || "this CPU"));
      row.append(element("td", formatBudget(job)));
    }
    row.append(element("td", job.controller));
    const statusCell = element("td");
    statusCell.append(element("span", job.status, `status status-${job.status}`));
    if (job.error) statusCell.title = job.error;
    row.append(statusCell);
    row.append(progressCell(job));
    const bestText = (best) => `${(100 * best.accuracy).toFixed(1)} % @ ${formatMs(best.predicted_ms)}`;
    if (job.devices) {
      const bests = job.devices.filter((d) => d.best).map((d) => `${d.name}: ${bestText(d.best)}`);
      row.append(element("td", bests.length ? bests.join("; ") : "—"));
    } else {
      row.append(element("td", job.best ? bestText(job.best) : "—"));
    }
    row.append(element("td", formatTime(job.created_at)));
    row.addEventListener("click", () => selectJob(job.id));
    body.append(row);
  }
}

// ---- devices table ------------------------------------------------------------------------

// "3.2 %": a fraction or a percentage figure, to 2 significant digits.
function formatPercent(value, isFraction) {
  if (!known(value)) return "—";
  const percent = isFraction ? 100 * value : value;
  return `${Number(percent.toPrecision(2))} %`;
}

function coverageCell(device) {
  const cell = element("td", undefined, "coverage-cell");
  const spaces = Object.entries(device.coverage || {});
  if (spaces.length === 0) cell.textContent = "—";
  for (const [space, { done, total }] of spaces) {
    const line = element("span", undefined, "coverage");
    line.dataset.space = space;
    const bar = element("progress");
    bar.max = Math.max(total, 1);
    bar.value = done;
    line.append(`${space} ${done}/${total} `, bar);
    cell.append(line);
  }
  return cell;
}

const QUEUE_STATUSES = ["queued", "leased", "done"];

function queueCell(device) {
  const cell = element("td", undefined, "queue-cell");
  const kinds = Object.entries(device.queue || {});
  if (kinds.length === 0) cell.textContent = "—";
  for (const [kind, counts] of kinds) {
    const line = element("span", undefined, "queue-kind");
    line.dataset.kind = kind;
    line.textContent = `${kind}: ${QUEUE_STATUSES.map((s) => `${counts[s] || 0} ${s}`).join(", ")}`;
    cell.append(line);
  }
  return cell;
}

function renderDevices(devices) {
  const body = document.querySelector("#devices-table tbody");
  body.replaceChildren();
  document.getElementById("devices-total").textContent = `(${devices.length})`;
  document.getElementById("devices-empty").hidden = devices.length > 0;
  for (const device of devices) {
    const row = element("tr");
    row.dataset.deviceId = device.id;
    const name = element("td", device.name);
    name.title = `id ${device.id}`;
    row.append(name);
    const statusCell = element("td");
    statusCell.append(element("span", device.status, `status status-${device.status}`));
    row.append(statusCell);
    const seen = device.last_seen_at ? `${formatTime(device.last_seen_at)} · ${device.last_agent || ""}` : "—";
    row.append(element("td", seen, "last-seen"));
    row.append(element("td", String(device.entries), "entries"));
    row.append(coverageCell(device));
    row.append(element("td", formatPercent(device.prediction_mape, false), "validation-error"));
    row.append(element("td", formatPercent(device.interval_width, true), "interval-width"));
    row.append(queueCell(device));
    body.append(row);
  }
  state.devices = devices;
}

// ---- per-job plots ------------------------------------------------------------------------

function hoverData(point) {
  const measured = known(point.measured_ms) ? formatMs(point.measured_ms) : "not measured";
  // The value the budget was judged on, where it is not the prediction itself (a budget at a
  // confidence or a percentile).
  const judged = known(point.judged_ms) && point.judged_ms !== point.predicted_ms
    ? `<br>judged ${formatMs(point.judged_ms)} against the budget` : "";
  return [point.short, formatPrediction(point), measured, point.index, judged];
}

const HOVER_TEMPLATE = "<b>%{customdata[0]}</b><br>accuracy %{y:.4f}<br>"
  + "predicted %{customdata[1]}<br>measured %{customdata[2]}%{customdata[4]}"
  + "<extra>trial %{customdata[3]}</extra>";

function pointsTrace(name, points, x, marker, extra = {}) {
  return {
    type: "scatter", mode: "markers", name,
    x: points.map(x), y: points.map((p) => p.accuracy),
    customdata: points.map(hoverData), hovertemplate: HOVER_TEMPLATE, marker, ...extra,
  };
}

function budgetShape(budgetMs, color = BUDGET_COLOR) {
  return {
    type: "line", name: "budget", xref: "x", yref: "paper", x0: budgetMs, x1: budgetMs, y0: 0, y1: 1,
    line: { color, width: 2, dash: "dash" },
  };
}

function paretoTraces(detail) {
  const trials = detail.trials;
  const front = trials.filter((p) => !p.dominated).sort((a, b) => a.predicted_ms - b.predicted_ms);
  const dominated = trials.filter((p) => p.dominated);
  const measured = trials.filter((p) => p.measured_ms !== null && p.measured_ms !== undefined);
  const best = detail.job.best;
  const bestPoints = best ? trials.filter((p) => p.short === best.short).slice(0, 1) : [];
  // Trace order is fixed (front, dominated, measured, best, front line) so the page and its
  // tests can tell the traces apart.
  return [
    pointsTrace("Pareto front", front, (p) => p.predicted_ms, { color: FRONT_COLOR, size: 9 }),
    pointsTrace("dominated", dominated, (p) => p.predicted_ms, { color: DOMINATED_COLOR, size: 7 }),
    pointsTrace("measured (end to end)", measured, (p) => p.measured_ms,
      { color: MEASURED_COLOR, size: 9, symbol: "diamond-open", line: { width: 2 } }),
    pointsTrace("best", bestPoints, (p) => p.predicted_ms,
      { color: "#000000", size: 16, symbol: "star-open", line: { width: 2 } }),
    {
      type: "scatter", mode: "lines", name: "front", showlegend: false, hoverinfo: "skip",
      x: front.map((p) => p.predicted_ms), y: front.map((p) => p.accuracy),
      line: { color: FRONT_COLOR, width: 1, shape: "hv" },
    },
  ];
}

// A search of several devices: one front per device on one chart, each in its colour with its
// budget line, measured points and best. Trace names start with the device's name.
function deviceTraces(detail) {
  const traces = [];
  const shapes = [];
  detail.devices.forEach((device, i) => {
    const color = COMPARE_COLORS[i % COMPARE_COLORS.length];
    const trials = device.trials;
    const front = trials.filter((p) => !p.dominated).sort((a, b) => a.predicted_ms - b.predicted_ms);
    const measured = trials.filter((p) => known(p.measured_ms));
    const best = device.best;
    const bestPoints = best ? trials.filter((p) => p.short === best.short).slice(0, 1) : [];
    traces.push(
      {
        ...pointsTrace(`${device.name}: Pareto front`, front, (p) => p.predicted_ms, { color, size: 9 }),
        mode: "lines+markers", line: { color, width: 1, shape: "hv" }, meta: device.name,
        legendgroup: device.name,
      },
      pointsTrace(`${device.name}: measured (end to end)`, measured, (p) => p.measured_ms,
        { color, size: 9, symbol: "diamond-open", line: { width: 2 } },
        { meta: device.name, legendgroup: device.name }),
      pointsTrace(`${device.name}: best`, bestPoints, (p) => p.predicted_ms,
        { color, size: 16, symbol: "star-open", line: { width: 2 } },
        { meta: device.name, legendgroup: device.name }),
    );
    shapes.push(budgetShape(device.budget_ms, color));
  });
  return { traces, shapes };
}

function drawDevicePareto(detail) {
  const { traces, shapes } = deviceTraces(detail);
  const counts = detail.devices.map((d) => `${d.name} ${d.trials.length}`).join(", ");
  const layout = {
    title: { text: `Accuracy vs latency per device — trials: ${counts}` },
    xaxis: { title: { text: "latency (ms; predicted, measured where shown)" }, zeroline: false },
    yaxis: { title: { text: "validation accuracy" }, zeroline: false, range: accuracyRange(traces) },
    shapes,
    legend: { orientation: "h", y: -0.2 },
    margin: { t: 50, r: 20 },
    hovermode: "closest",
  };
  const plot = document.getElementById("pareto-plot");
  Plotly.react(plot, traces, layout, { displaylogo: false, responsive: true });
  plot.dataset.trials = String(detail.trials.length);
  plot.dataset.jobId = detail.job.id;
  plot.dataset.devices = detail.devices.map((d) => d.name).join(",");
  if (!plot.dataset.clickBound) {
    plot.on("plotly_click", (event) => downloadBest(plot.dataset.jobId, event.points[0].data.meta));
    plot.dataset.clickBound = "1";
  }
}

function drawPareto(detail) {
  if (detail.devices) {
    drawDevicePareto(detail);
    return;
  }
  const plot = document.getElementById("pareto-plot");
  delete plot.dataset.devices;
  const budget = detail.job.budget_ms;
  const layout = {
    title: { text: `Accuracy vs latency — ${detail.trials.length} trials` },
    xaxis: { title: { text: "latency (ms; predicted, measured where shown)" }, zeroline: false },
    yaxis: { title: { text: "validation accuracy" } },
    shapes: [budgetShape(budget)],
    annotations: [{
      x: budget, y: 1, xref: "x", yref: "paper", text: `budget ${formatBudget(detail.job)}`,
      showarrow: false, xanchor: "left", yanchor: "top", font: { color: BUDGET_COLOR },
    }],
    legend: { orientation: "h", y: -0.2 },
    margin: { t: 50, r: 20 },
    hovermode: "closest",
  };
  Plotly.react(plot, paretoTraces(detail), layout, { displaylogo: false, responsive: true });
  plot.dataset.trials = String(detail.trials.length);
  plot.dataset.jobId = detail.job.id;
  if (!plot.dataset.clickBound) {
    // A point's trace names its device (meta) on a chart of several devices.
    plot.on("plotly_click", (event) => downloadBest(plot.dataset.jobId, event.points[0].data.meta));
    plot.dataset.clickBound = "1";
  }
}

// Each job's curve; a search of several devices has one per device.
function hypervolumeTraces(ids) {
  const curves = [];
  for (const id of ids) {
    const detail = state.details.get(id);
    if (detail.devices) {
      for (const device of detail.devices) {
        curves.push([`${device.name} (${detail.job.id.slice(0, 8)})`, device.pareto]);
      }
    } else {
      curves.push([jobLabel(detail.job), detail.pareto]);
    }
  }
  return curves.map(([name, pareto], i) => {
    const curve = (pareto && pareto.hypervolume_curve) || [];
    return {
      type: "scatter", mode: "lines+markers", name,
      x: curve.map((c) => c.evaluations), y: curve.map((c) => c.hypervolume),
      line: { color: COMPARE_COLORS[i % COMPARE_COLORS.length], shape: "hv" },
      marker: { size: 4 },
    };
  });
}

function drawHypervolume() {
  const ids = [state.selectedId, ...[...state.compared].filter((id) => id !== state.selectedId)]
    .filter((id) => id && state.details.has(id));
  Plotly.react(document.getElementById("hypervolume-plot"), hypervolumeTraces(ids), {
    title: { text: "Hypervolume over evaluations" },
    xaxis: { title: { text: "evaluations" } },
    // From zero: a flat curve (no improvement yet) would otherwise be centred in +-1.
    yaxis: { title: { text: "hypervolume (under the budget)" }, rangemode: "tozero" },
    legend: { orientation: "h", y: -0.2 },
    margin: { t: 50, r: 20 },
    showlegend: ids.length > 1 || ids.some((id) => state.details.get(id).devices),
  }, { displaylogo: false, responsive: true });
}

function renderSummary(detail) {
  const job = detail.job;
  document.getElementById("job-section").hidden = false;
  document.getElementById("job-id").textContent = job.id;
  const status = document.getElementById("job-status");
  status.textContent = job.status;
  status.className = `status status-${job.status}`;
  const parts = [`space ${job.space}`];
  if (job.devices) parts.push(`devices ${deviceBudgets(job)}`);
  else parts.push(`device ${job.device || "this CPU"}`, `budget ${formatBudget(job)}`);
  parts.push(`controller ${job.controller}`, `${job.evaluations} evaluations`, `seed ${job.seed}`);
  const progress = job.progress || {};
  if (progress.stage) parts.push(`${progress.stage} ${progress.done}/${progress.total}`);
  if (job.worker) parts.push(`worker ${job.worker}`);
  if (job.started_at) parts.push(`started ${formatTime(job.started_at)}`);
  if (job.finished_at) parts.push(`finished ${formatTime(job.finished_at)}`);
  if (detail.pareto && !job.devices) {
    parts.push(`hypervolume ${Number(detail.pareto.hypervolume.toPrecision(4))}`);
  }
  for (const device of job.devices || []) {
    if (!device.best) continue;
    parts.push(`best on ${device.name} ${device.best.short}: accuracy `
      + `${device.best.accuracy.toFixed(4)}, predicted ${formatPrediction(device.best)}, `
      + `measured there ${formatMs(device.best.measured_ms)}`);
  }
  if (job.best && !job.devices) {
    parts.push(`best ${job.best.short}: accuracy ${job.best.accuracy.toFixed(4)}, predicted `
      + `${formatPrediction(job.best)}, measured ${formatMs(job.best.measured_ms)}`);
  }
  if (job.error) parts.push(`error: ${job.error}`);
  document.getElementById("job-summary").textContent = parts.join(" · ");
  document.getElementById("download-best").disabled = job.status !== "succeeded";
}

// ---- comparison ---------------------------------------------------------------------------

function drawComparison() {
  const section = document.getElementById("compare-section");
  const ids = [...state.compared].filter((id) => state.details.has(id));
  section.hidden = ids.length === 0;
  if (ids.length === 0) return;
  const traces = [];
  const shapes = [];
  // One front per job, or per device of a search of several devices.
  const fronts = [];
  for (const id of ids) {
    const detail = state.details.get(id);
    if (detail.devices) {
      for (const device of detail.devices) {
        fronts.push({ id, device: device.name, label: `${device.name} · ${jobLabel(detail.job)}`,
          pareto: device.pareto, budget: device.budget_ms });
      }
    } else {
      fronts.push({ id, device: null, label: jobLabel(detail.job), pareto: detail.pareto,
        budget: detail.job.budget_ms });
    }
  }
  fronts.forEach((entry, i) => {
    const color = COMPARE_COLORS[i % COMPARE_COLORS.length];
    const front = (entry.pareto && entry.pareto.front) || [];
    traces.push({
      ...pointsTrace(entry.label, front, (p) => p.predicted_ms, { color, size: 8 }),
      mode: "lines+markers", line: { color, shape: "hv" }, meta: [entry.id, entry.device],
    });
    shapes.push(budgetShape(entry.budget, color));
  });
  const plot = document.getElementById("compare-plot");
  Plotly.react(plot, traces, {
    title: { text: "Pareto fronts compared (predicted latency)" },
    xaxis: { title: { text: "predicted latency (ms)" }, zeroline: false },
    yaxis: { title: { text: "validation accuracy" }, zeroline: false, range: accuracyRange(traces) },
    shapes,
    legend: { orientation: "h", y: -0.2 },
    margin: { t: 50, r: 20 },
    hovermode: "closest",
  }, { displaylogo: false, responsive: true });
  if (!plot.dataset.clickBound) {
    plot.on("plotly_click", (event) => downloadBest(...event.points[0].data.meta));
    plot.dataset.clickBound = "1";
  }
}

// Plotly pads a flat series to +-1, which hides fronts of one accuracy level; pad by the data.
function accuracyRange(traces) {
  const values = traces.flatMap((t) => t.y);
  if (values.length === 0) return undefined;
  const low = Math.min(...values);
  const high = Math.max(...values);
  const pad = Math.max(0.02, 0.1 * (high - low));
  return [low - pad, high + pad];
}

function toggleCompared(jobId, checked) {
  if (checked) state.compared.add(jobId);
  else state.compared.delete(jobId);
  refreshDetails().catch(reportError);
}

// ---- downloads ----------------------------------------------------------------------------

// A search of several devices has a best.onnx per device: ``device`` names which (the first
// device's when not given).
async function downloadBest(jobId, device = null) {
  if (!jobId) return;
  const detail = state.details.get(jobId);
  if (!device && detail && detail.devices) device = detail.devices[0].name;
  try {
    // fetch + blob rather than a plain link: a link cannot carry the Authorization header.
    const query = device ? `?device=${encodeURIComponent(device)}` : "";
    const response = await apiFetch(`/searches/${jobId}/artifacts/best.onnx${query}`);
    const url = URL.createObjectURL(await response.blob());
    const link = element("a");
    link.href = url;
    link.download = device ? `${jobId}-${device}-best.onnx` : `${jobId}-best.onnx`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    setMessage(`Downloaded best.onnx of ${jobId.slice(0, 8)}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      setMessage(`best.onnx of ${jobId.slice(0, 8)} is not there yet (it is written when the search finishes)`, true);
    } else {
      reportError(error);
    }
  }
}

// ---- loading and polling ------------------------------------------------------------------

// A search of several devices: each device's front and trials, fetched whole (such searches
// are few and small next to a single search's trial pages).
async function loadDevices(job) {
  return Promise.all(job.devices.map(async (device) => {
    const [pareto, fetched] = await Promise.all([
      fetchPareto(job.id, device.name), fetchTrials(job.id, 0, device.name)]);
    return { ...device, pareto, trials: markDominated(fetched.items) };
  }));
}

async function loadDetail(jobId) {
  const known = state.details.get(jobId);
  if (known && known.final) return known;
  const job = await apiJson(`/searches/${jobId}`);
  const final = !ACTIVE_STATUSES.has(job.status);
  if (job.devices) {
    const devices = await loadDevices(job);
    const detail = { job, devices, pareto: devices[0].pareto, trials: devices[0].trials, final };
    state.details.set(jobId, detail);
    return detail;
  }
  // While a job runs its trials only grow, so a poll fetches the new ones. A finished job is
  // fetched whole once more: its measured latencies arrive with the final report.
  const from = known && !final ? known.trials.length : 0;
  const [pareto, fetched] = await Promise.all([fetchPareto(jobId), fetchTrials(jobId, from)]);
  let trials = from ? known.trials.concat(fetched.items) : fetched.items;
  if (trials.length !== fetched.total) trials = (await fetchTrials(jobId, 0)).items; // rewritten
  const detail = { job, pareto, trials: markDominated(trials), final };
  state.details.set(jobId, detail);
  return detail;
}

async function refreshDetails() {
  if (state.selectedId) {
    const detail = await loadDetail(state.selectedId);
    renderSummary(detail);
    drawPareto(detail);
  }
  await Promise.all([...state.compared].map(loadDetail));
  if (state.selectedId) drawHypervolume();
  drawComparison();
}

function selectJob(jobId) {
  state.selectedId = jobId;
  history.replaceState(null, "", `#job=${jobId}`);
  for (const row of document.querySelectorAll("#jobs-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.jobId === jobId);
  }
  refreshDetails().catch(reportError);
}

function anyActive() {
  const watched = [state.selectedId, ...state.compared].filter(Boolean);
  // A device with work queued or leased is being measured: its coverage moves.
  const busy = state.devices.some((device) => Object.values(device.queue || {})
    .some((counts) => (counts.queued || 0) + (counts.leased || 0) > 0));
  return busy || state.jobs.some((job) => ACTIVE_STATUSES.has(job.status))
    || watched.some((id) => state.details.has(id) && !state.details.get(id).final);
}

function reportError(error) {
  setMessage(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), true);
}

async function tick() {
  // One poll at a time: a token change while a poll is in flight asks for one more afterwards.
  if (state.polling) {
    state.pollAgain = true;
    return;
  }
  state.polling = true;
  clearTimeout(state.timer);
  try {
    const [listing, devices] = await Promise.all([
      apiJson(`/searches?offset=0&limit=${JOBS_PAGE}`),
      apiJson("/devices"),
    ]);
    state.jobs = listing.items;
    renderJobs(listing);
    renderDevices(devices);
    // A job that left the active states gets one last full fetch.
    for (const job of listing.items) {
      const detail = state.details.get(job.id);
      if (detail && detail.job.status !== job.status) detail.final = false;
    }
    await refreshDetails();
    if (document.getElementById("message").classList.contains("error")) setMessage("");
    document.body.dataset.loaded = "1";
  } catch (error) {
    reportError(error);
  } finally {
    state.polling = false;
    const delay = state.pollAgain ? 0 : anyActive() ? POLL_ACTIVE_MS : POLL_IDLE_MS;
    state.pollAgain = false;
    state.timer = setTimeout(tick, delay);
  }
}

function setUpToken() {
  const input = document.getElementById("token-input");
  input.value = localStorage.getItem(TOKEN_KEY) || "";
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    setMessage(token ? "Token saved in this browser" : "Token removed");
    tick();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    input.value = "";
    localStorage.removeItem(TOKEN_KEY);
    setMessage("Token removed");
    tick();
  });
}

function start() {
  setUpToken();
  document.getElementById("download-best").addEventListener("click", () => downloadBest(state.selectedId));
  const fromHash = /^#job=([0-9a-zA-Z-]+)$/.exec(location.hash);
  if (fromHash) state.selectedId = fromHash[1];
  tick();
}

start();
