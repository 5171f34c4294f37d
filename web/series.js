// The chart's copy of one topic's series, and the one rule that changes it: an SSE event
// says "from start_offset on, the series now reads bars" (series[start_offset:] = bars).
// Pure functions, no DOM: the page and a test can call them with five bars.
//
// A Series holds a window of the gateway's store: bars[i] is the record at offset base + i.
// The REST history (GET /v1/bars) carries no offsets, so base is null until the first
// stream event, which joins the history by bar time.

/** Bars kept in the page; older ones are dropped from the front (base moves on). */
export const KEEP_BARS = 5000;

export function newSeries(bars = []) {
  return { base: null, bars: bars.slice() };
}

/**
 * Apply one stream event to `series` in place. Returns `{ from, tail }`: bars[from:] are
 * new; `tail` is true when only the newest bar was rewritten and/or bars appended (nothing
 * removed, nothing older changed), so a chart may update just those points.
 */
export function applyEvent(series, ev, keep = KEEP_BARS) {
  const incoming = Array.isArray(ev.bars) ? ev.bars : [];
  const start = Number(ev.start_offset);
  const before = series.base === null ? -1 : series.bars.length;
  let from;
  if (series.base === null) {
    // First event over the REST history: keep the history bars before the event's first bar
    // when the two join (the history holds that bar, or reaches no further back than it);
    // otherwise a hole may lie between them and the event alone is the truth.
    // An event with no bar says only that the series ends at start_offset: nothing ties the
    // history to an offset (bars may have come between the two answers), so the window
    // starts empty at start_offset rather than guess.
    const first = incoming.length ? incoming[0].ts_ms : Infinity;
    const k = incoming.length ? countBefore(series.bars, first) : 0;
    const joins =
      incoming.length > 0 &&
      (k === 0 || (k < series.bars.length && series.bars[k].ts_ms === first));
    const kept = joins ? series.bars.slice(0, k) : [];
    series.base = start - kept.length;
    series.bars = kept.concat(incoming);
    from = joins ? k : 0;
  } else {
    const rel = start - series.base;
    if (rel < 0 || rel > series.bars.length) {
      // The change starts before the window (a revision reaching further back than the
      // page holds, a reset) or after its end (a hole): the window restarts at start_offset.
      series.base = start;
      series.bars = incoming.slice();
      from = 0;
    } else {
      series.bars.length = rel;
      for (const bar of incoming) series.bars.push(bar);
      from = rel;
    }
  }
  let tail = before > 0 && from >= before - 1 && series.bars.length >= before;
  const over = series.bars.length - keep;
  if (over > 0) {
    series.bars.splice(0, over);
    series.base += over;
    from = Math.max(0, from - over);
    tail = false;
  }
  return { from, tail };
}

/** How many of `bars` (oldest first) open before `ts_ms`. */
export function countBefore(bars, ts_ms) {
  let lo = 0;
  let hi = bars.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (bars[mid].ts_ms < ts_ms) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Decimals a price is shown with: 5 below 20 (EUR-USD 1.14503), 3 below 1000 (USD-JPY
 * 156.123), else 2. tests/browser/test_chart.py formats the gateway's close the same way.
 */
export function priceDecimals(price) {
  const p = Math.abs(price);
  if (p < 20) return 5;
  if (p < 1000) return 3;
  return 2;
}

export function formatPrice(price, decimals = priceDecimals(price)) {
  return Number.isFinite(price) ? price.toFixed(decimals) : "–";
}

const UNIT_MS = { s: 1e3, m: 6e4, h: 36e5, d: 864e5, W: 6048e5, M: 2592e6, Y: 31536e6 };

/** A timeframe's rough length in ms ("1m" → 60000), for ordering the picker; unknown: 0. */
export function timeframeMs(tf) {
  const m = /^(\d+)([smhdWMY])$/.exec(tf);
  return m ? Number(m[1]) * UNIT_MS[m[2]] : 0;
}

/** Candle and volume points for lightweight-charts (UTC seconds) from a bar object. */
export function candlePoint(bar, forming) {
  const point = {
    time: bar.ts_ms / 1000,
    open: bar.open,
    high: bar.high,
    low: bar.low,
    close: bar.close,
  };
  if (bar.provisional) Object.assign(point, forming);
  return point;
}

export function volumePoint(bar, up, down) {
  return { time: bar.ts_ms / 1000, value: bar.volume, color: bar.close >= bar.open ? up : down };
}
