// The status panel: GET /v1/status every few seconds — the gateway, each service (up, lag,
// gaps, held streams) and what needs attention. Every field may be missing: the panel
// shows what the answer has ("–" for the rest) and never throws on its shape.

export const STATUS_INTERVAL_MS = 3000;

/** Poll `url` every `intervalMs` into `root`; returns a function that stops polling. */
export function pollStatus(root, url = "/v1/status", intervalMs = STATUS_INTERVAL_MS) {
  let timer = null;
  let stopped = false;
  async function tick() {
    try {
      const r = await fetch(url, { cache: "no-store" });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.message || body.error || `HTTP ${r.status}`);
      renderStatus(root, body);
    } catch (e) {
      renderUnavailable(root, String(e.message || e));
    }
    if (!stopped) timer = setTimeout(tick, intervalMs);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** The services of a status answer as [{name, ...}] — a list, or an object by name. */
export function servicesOf(status) {
  const s = status && status.services;
  if (Array.isArray(s)) return s.filter((x) => x && typeof x === "object");
  if (s && typeof s === "object") {
    return Object.entries(s).map(([name, v]) => ({ name, ...(v && typeof v === "object" ? v : {}) }));
  }
  return [];
}

function renderStatus(root, status) {
  root.dataset.state = "ok";
  root.replaceChildren(
    gatewayLine(status.gateway),
    servicesTable(servicesOf(status)),
    attentionList(status.attention, status.faults),
    el("p", { className: "status-updated" }, `updated ${new Date().toISOString().slice(11, 19)} UTC`),
  );
}

function renderUnavailable(root, why) {
  root.dataset.state = "error";
  const old = root.querySelector(".status-error");
  const line = el("p", { className: "status-error" }, `status unavailable: ${why}`);
  if (old) old.replaceWith(line);
  else root.prepend(line);
}

function gatewayLine(gw) {
  if (!gw || typeof gw !== "object") return el("p", { className: "gateway" }, "gateway: –");
  const parts = [`gateway ${gw.instance ?? ""}`.trim()];
  if (typeof gw.upstream_age_s === "number") {
    parts.push(gw.upstream_age_s < 0 ? "no upstream message yet" : `upstream ${seconds(gw.upstream_age_s)} ago`);
  }
  if (typeof gw.consumers === "number") parts.push(`${gw.consumers} consumer(s)`);
  if (typeof gw.published === "number") parts.push(`${gw.published.toLocaleString("en")} published`);
  return el("p", { className: "gateway" }, parts.join(" · "));
}

function servicesTable(services) {
  const table = el("table", { className: "services" });
  const head = el("tr", {}, ...["service", "up", "lag", "gaps", "held"].map((h) => el("th", {}, h)));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const s of services) {
    const up = s.up === true ? "up" : s.up === false ? "down" : "–";
    const lag = s.lag_s ?? s.feed_lag_seconds;
    const gaps = gapCount(s.gaps);
    const held = Array.isArray(s.held) ? s.held : [];
    const row = el(
      "tr",
      { className: up === "down" ? "bad" : "" },
      el("td", {}, String(s.name ?? "?")),
      el("td", { className: `up-${up}` }, up === "up" ? "●" : up === "down" ? "✕" : "–"),
      el("td", {}, typeof lag === "number" ? seconds(lag) : "–"),
      el("td", { className: gaps ? "warn" : "" }, gaps === null ? "–" : String(gaps)),
      el("td", { className: held.length ? "warn" : "" }, held.length ? held.join(", ") : "none"),
    );
    row.dataset.service = String(s.name ?? "");
    body.append(row);
  }
  if (!services.length) body.append(el("tr", {}, el("td", { colSpan: 5 }, "no service reported")));
  table.append(body);
  return table;
}

/** Gap days in a `gaps` field: a number, or {stream: days}; null when absent. */
export function gapCount(gaps) {
  if (typeof gaps === "number") return gaps;
  if (gaps && typeof gaps === "object") {
    return Object.values(gaps).reduce((n, v) => n + (typeof v === "number" ? v : 0), 0);
  }
  return null;
}

function attentionList(attention, faults) {
  const items = [];
  for (const f of Array.isArray(faults) ? faults : []) items.push(String(f));
  for (const a of Array.isArray(attention) ? attention : []) {
    if (typeof a === "string") items.push(a);
    else if (a && typeof a === "object") {
      items.push([a.service, a.stream, a.why ?? a.kind].filter(Boolean).join(": "));
    }
  }
  const list = el("ul", { className: "attention" });
  for (const text of items) list.append(el("li", {}, text));
  return el("div", {}, el("h3", {}, items.length ? "needs attention" : "needs attention: none"), list);
}

function seconds(s) {
  return s < 10 ? `${s.toFixed(1)} s` : `${Math.round(s)} s`;
}

export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
