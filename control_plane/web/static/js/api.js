// The JSON API (docs/http-api.md) as the pages use it: one fetch wrapper that turns error answers into
// ApiError (status, code, message, field) and sends an unauthenticated browser to the login page.

export class ApiError extends Error {
  constructor(status, code, message, field = null, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.extra = extra;
  }
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

export async function getJSON(path, params = {}, { signal } = {}) {
  let response;
  try {
    response = await fetch(`/api/v1${path}${query(params)}`, {
      headers: { Accept: "application/json" }, credentials: "same-origin", signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", "this master does not answer");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok) return body;
  const error = (body && body.error) || {};
  if (response.status === 401) {
    const next = location.pathname + location.search;
    location.assign(`/login?next=${encodeURIComponent(next)}`);
  }
  throw new ApiError(response.status, error.code || `http_${response.status}`,
                     error.message || response.statusText || "request failed", error.field || null, error);
}

export const api = {
  cluster: (opts) => getJSON("/cluster", {}, opts),
  agents: (params, opts) => getJSON("/agents", params, opts),
  agent: (id, opts) => getJSON(`/agents/${encodeURIComponent(id)}`, {}, opts),
  frameworks: (params, opts) => getJSON("/frameworks", params, opts),
  framework: (id, opts) => getJSON(`/frameworks/${encodeURIComponent(id)}`, {}, opts),
  tasks: (params, opts) => getJSON("/tasks", params, opts),
  task: (ref, opts) => getJSON(`/tasks/${encodeURIComponent(ref)}`, {}, opts),
  timeline: (ref, opts) => getJSON(`/tasks/${encodeURIComponent(ref)}/timeline`, {}, opts),
  trace: (ref, opts) => getJSON(`/tasks/${encodeURIComponent(ref)}/trace`, {}, opts),
  output: (ref, stream, opts) => getJSON(`/tasks/${encodeURIComponent(ref)}/output`, { stream, tail: 8192 }, opts),
  events: (params, opts) => getJSON("/events", params, opts),
  stateAt: (at, opts, page = {}) => getJSON("/state", { at, ...page }, opts),
  diff: (from, to, opts, page = {}) => getJSON("/diff", { from, to, ...page }, opts),
  services: (opts) => getJSON("/services", {}, opts),
  service: (id, opts) => getJSON(`/services/${encodeURIComponent(id)}`, {}, opts),
};

// The live event stream: an EventSource on /api/v1/events/stream with handlers per message kind.
// The browser reconnects by itself and resumes after the last id it saw (Last-Event-ID).
export function eventStream(params, { onEvent, onHeartbeat, onGap, onError, onOpen }) {
  const source = new EventSource(`/api/v1/events/stream${query(params)}`);
  source.addEventListener("event", (m) => onEvent && onEvent(JSON.parse(m.data)));
  source.addEventListener("heartbeat", (m) => onHeartbeat && onHeartbeat(JSON.parse(m.data)));
  source.addEventListener("gap", (m) => onGap && onGap(JSON.parse(m.data)));
  source.addEventListener("open", () => onOpen && onOpen());
  source.addEventListener("error", () => onError && onError(source.readyState));
  return source;
}
