// barstream's live chart: candlesticks and volume of one topic, picked from GET /v1/topics;
// history from GET /v1/bars/…?format=json, then every change from the SSE stream
// /v1/stream/… applied as series[start_offset:] = bars (the forming bar updating in
// place, revisions replacing bars); a status panel from GET /v1/status.
//
// What tests read: body[data-ready="1"] once the first history is drawn, body[data-last-seq]
// the seq of the last applied stream event, #last-close (data-close: the raw number) and
// #last-time the newest bar. The charting library is the npm-installed lightweight-charts,
// served by `barstream serve` under /static/vendor/ (nothing comes from another host).

import {
  applyEvent,
  candlePoint,
  formatPrice,
  newSeries,
  priceDecimals,
  timeframeMs,
  volumePoint,
} from "./series.js";
import { el, pollStatus } from "./status.js";

const LIBRARY = "/static/vendor/lightweight-charts/lightweight-charts.standalone.production.mjs";
const HISTORY_LIMIT = 1000;
/** Bars the stream's first event repeats: overlap that joins it to the REST history. */
const STREAM_HISTORY = 200;
const RECONNECT_MS = 2000;
const UP = "#26a69a";
const DOWN = "#ef5350";
const FORMING = { color: "#90a4ae", borderColor: "#607d8b", wickColor: "#607d8b" };

const $ = (id) => document.getElementById(id);

let lib = null;
let chart = null;
let candles = null;
let volume = null;
let topics = [];
let view = null; // { topic, series, source, generation }
let generation = 0;

main().catch((e) => fail(`the chart could not start: ${e.message || e}`));

async function main() {
  pollStatus($("status"));
  try {
    lib = await import(LIBRARY);
  } catch (e) {
    fail(
      "the charting library is missing (lightweight-charts from npm): run `make web` " +
        `in the checkout, then reload. (${e.message || e})`,
    );
    return;
  }
  makeChart();
  topics = await loadTopics();
  if (!topics.length) {
    fail("the gateway has no topic yet: wait for the pipeline's first bars, then reload");
    return;
  }
  const wanted = wantedTopic();
  fillPicker(topics.find((t) => t.topic === wanted) || defaultTopic(topics));
  for (const id of ["symbol", "side", "timeframe"]) $(id).addEventListener("change", onPick);
  window.addEventListener("popstate", () => {
    const t = topics.find((x) => x.topic === wantedTopic());
    if (t && t.topic !== view?.topic) {
      fillPicker(t);
      show(t.topic);
    }
  });
  await show(currentTopic());
}

// -- the chart ----------------------------------------------------------------------------

function makeChart() {
  const root = $("chart");
  chart = lib.createChart(root, {
    autoSize: true,
    layout: { background: { color: "#ffffff" }, textColor: "#263238", fontSize: 12 },
    grid: { vertLines: { color: "#eceff1" }, horzLines: { color: "#eceff1" } },
    timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#cfd8dc" },
    rightPriceScale: { borderColor: "#cfd8dc" },
    crosshair: { mode: lib.CrosshairMode.Normal },
    localization: { timeFormatter: (t) => utc(t * 1000) },
  });
  candles = chart.addSeries(lib.CandlestickSeries, {
    upColor: UP,
    downColor: DOWN,
    borderUpColor: UP,
    borderDownColor: DOWN,
    wickUpColor: UP,
    wickDownColor: DOWN,
  });
  volume = chart.addSeries(lib.HistogramSeries, { priceFormat: { type: "volume" } }, 1);
  const panes = chart.panes();
  if (panes.length > 1) {
    panes[0].setStretchFactor(3);
    panes[1].setStretchFactor(1);
  }
}

/** Show `series` on the chart; `change` (from applyEvent) lets a tail change update only
 * the points it touched — the forming bar, a new bar — instead of redrawing all. */
function draw(series, change = null) {
  const bars = series.bars;
  const last = bars[bars.length - 1];
  if (change && change.tail) {
    for (let i = change.from; i < bars.length; i++) {
      candles.update(candlePoint(bars[i], FORMING));
      volume.update(volumePoint(bars[i], UP + "80", DOWN + "80"));
    }
  } else {
    if (last) {
      const d = priceDecimals(last.close);
      candles.applyOptions({ priceFormat: { type: "price", precision: d, minMove: 10 ** -d } });
    }
    candles.setData(bars.map((b) => candlePoint(b, FORMING)));
    volume.setData(bars.map((b) => volumePoint(b, UP + "80", DOWN + "80")));
  }
  showLast(last);
}

function showLast(bar) {
  const close = $("last-close");
  const time = $("last-time");
  const state = $("last-state");
  if (!bar) {
    close.textContent = "–";
    time.textContent = "–";
    state.textContent = "no bar yet";
    delete close.dataset.close;
    return;
  }
  close.textContent = formatPrice(bar.close);
  close.dataset.close = String(bar.close);
  close.className = bar.close >= bar.open ? "up" : "down";
  time.textContent = bar.time || new Date(bar.ts_ms).toISOString().replace(".000Z", "Z");
  time.dataset.tsMs = String(bar.ts_ms);
  state.textContent = bar.provisional ? "forming" : "closed";
}

// -- one topic: history, then the stream ---------------------------------------------------

async function show(topic) {
  const gen = ++generation;
  if (view && view.source) view.source.close();
  view = { topic, series: newSeries(), source: null, generation: gen };
  document.body.dataset.ready = "0";
  delete document.body.dataset.lastSeq;
  document.title = `${topic} · barstream`;
  setConn("loading history…");
  clearError();
  let body;
  try {
    body = await getJson(`/v1/bars/${path(topic)}?format=json&limit=${HISTORY_LIMIT}`);
  } catch (e) {
    if (gen === generation) fail(`history of ${topic}: ${e.message}`);
    return;
  }
  if (gen !== generation) return; // another topic was picked meanwhile
  view.series = newSeries(Array.isArray(body.bars) ? body.bars : []);
  draw(view.series);
  chart.timeScale().scrollToRealTime();
  document.body.dataset.ready = "1";
  stream(view);
}

function stream(v) {
  const url = `/v1/stream/${path(v.topic)}?history=${STREAM_HISTORY}&closed_only=false`;
  const source = new EventSource(url);
  v.source = source;
  source.addEventListener("open", () => setConn("live"));
  source.addEventListener("bars", (msg) => {
    if (v.generation !== generation) return;
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      fail(`stream of ${v.topic}: an event that is not JSON (id ${msg.lastEventId})`);
      return;
    }
    draw(v.series, applyEvent(v.series, ev));
    document.body.dataset.lastSeq = String(ev.seq);
    setConn("live");
  });
  source.addEventListener("error", () => {
    if (v.generation !== generation) return;
    if (source.readyState === EventSource.CLOSED) {
      // Refused (an HTTP error, not a dropped connection): EventSource gives up; start a
      // new stream — its first event (kind "history") carries offsets, so nothing is lost.
      setConn("stream refused; retrying…");
      setTimeout(() => v.generation === generation && stream(v), RECONNECT_MS);
    } else {
      setConn("reconnecting…"); // the browser resumes with Last-Event-ID by itself
    }
  });
}

// -- the picker ----------------------------------------------------------------------------

async function loadTopics() {
  const body = await getJson("/v1/topics");
  const list = Array.isArray(body.topics) ? body.topics : [];
  return list
    .map((t) => {
      const [symbol, side, timeframe] = String(t.topic || "").split("/");
      return { ...t, symbol: t.symbol || symbol, side: t.side || side, timeframe: t.timeframe || timeframe };
    })
    .filter((t) => t.symbol && t.side && t.timeframe);
}

function defaultTopic(list) {
  const byLength = [...list].sort((a, b) => timeframeMs(a.timeframe) - timeframeMs(b.timeframe));
  return byLength.find((t) => t.timeframe === "1m") || byLength.find((t) => timeframeMs(t.timeframe)) || list[0];
}

/** The topic the address asks for: ?topic=EUR-USD/BID/1m, or ?symbol=&side=&timeframe=. */
function wantedTopic() {
  const q = new URLSearchParams(location.search);
  if (q.get("topic")) return q.get("topic");
  if (q.get("symbol")) return `${q.get("symbol")}/${q.get("side") || "BID"}/${q.get("timeframe") || "1m"}`;
  return "";
}

/** Fill the three selects for topic `t`; true when the selection changed. */
function fillPicker(t) {
  const before = currentTopic();
  const unique = (xs) => [...new Set(xs)];
  setOptions($("symbol"), unique(topics.map((x) => x.symbol)).sort(), t.symbol);
  const sides = unique(topics.filter((x) => x.symbol === t.symbol).map((x) => x.side));
  setOptions($("side"), sides, t.side);
  const tfs = unique(topics.filter((x) => x.symbol === t.symbol && x.side === t.side).map((x) => x.timeframe));
  tfs.sort((a, b) => timeframeMs(a) - timeframeMs(b) || a.localeCompare(b));
  setOptions($("timeframe"), tfs, t.timeframe);
  return before !== currentTopic();
}

function setOptions(select, values, selected) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, selected: v === selected }, v)));
  if (!values.includes(selected) && values.length) select.value = values[0];
}

function onPick(e) {
  const symbol = $("symbol").value;
  let side = $("side").value;
  let timeframe = $("timeframe").value;
  const has = (s, f) => topics.some((x) => x.symbol === symbol && x.side === s && (!f || x.timeframe === f));
  if (!has(side)) side = topics.find((x) => x.symbol === symbol).side;
  if (!has(side, timeframe)) {
    timeframe = defaultTopic(topics.filter((x) => x.symbol === symbol && x.side === side)).timeframe;
  }
  const t = topics.find((x) => x.symbol === symbol && x.side === side && x.timeframe === timeframe);
  fillPicker(t);
  history.pushState(null, "", `?topic=${encodeURIComponent(t.topic).replaceAll("%2F", "/")}`);
  show(t.topic);
  e.target.blur();
}

function currentTopic() {
  return `${$("symbol").value}/${$("side").value}/${$("timeframe").value}`;
}

// -- small helpers -------------------------------------------------------------------------

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  let body = {};
  try {
    body = await r.json();
  } catch {
    if (r.ok) throw new Error(`GET ${url}: the answer is not JSON`);
  }
  if (!r.ok) throw new Error(body.message || body.error || `GET ${url}: HTTP ${r.status}`);
  return body;
}

function path(topic) {
  return topic.split("/").map(encodeURIComponent).join("/");
}

function utc(ms) {
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

function setConn(text) {
  $("conn").textContent = text;
}

function fail(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  setConn("stopped");
}

function clearError() {
  $("error").hidden = true;
}
