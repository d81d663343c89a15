// Time charts (uPlot): one metric over time, as a line of averages with a min-max band when
// the data is bucketed. Used by the device detail (live and historic) and by replay, whose
// clock moves the cursor.

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export class TimeChart {
  constructor(root, { height = 160 } = {}) {
    this.root = root;
    this.height = height;
    this.plot = null;
    this.data = [[], [], [], []];
  }

  /** Rows of `{t (epoch seconds), avg, min, max}`; min and max may be absent (raw values). */
  set(name, rows) {
    const t = [];
    const avg = [];
    const min = [];
    const max = [];
    for (const r of rows) {
      t.push(r.t);
      avg.push(r.avg);
      min.push(r.min ?? r.avg);
      max.push(r.max ?? r.avg);
    }
    this.data = [t, avg, min, max];
    this.render(name);
  }

  /** A live value at the end; older points beyond `keepS` seconds fall off. */
  push(t, value, keepS) {
    const [ts, avg, min, max] = this.data;
    if (ts.length && t < ts[ts.length - 1]) return;
    ts.push(t);
    avg.push(value);
    min.push(value);
    max.push(value);
    const cut = t - keepS;
    while (ts.length > 1 && ts[0] < cut) for (const column of this.data) column.shift();
    if (this.plot) this.plot.setData(this.data);
  }

  render(name) {
    if (this.plot) this.plot.destroy();
    const width = Math.max(200, this.root.clientWidth || 280);
    this.plot = new uPlot(
      {
        width,
        height: this.height,
        legend: { show: true, live: true },
        cursor: { drag: { x: false, y: false } },
        series: [
          {},
          { label: name, stroke: '#2563eb', width: 1.5, value: (u, v) => (v == null ? '–' : round(v)) },
          { label: 'min', stroke: 'rgba(37,99,235,.25)', value: (u, v) => (v == null ? '–' : round(v)) },
          { label: 'max', stroke: 'rgba(37,99,235,.25)', value: (u, v) => (v == null ? '–' : round(v)) },
        ],
        bands: [{ series: [3, 2], fill: 'rgba(37,99,235,.12)' }],
        axes: [{}, { size: 48 }],
      },
      this.data,
      this.root,
    );
  }

  /** Puts the cursor at a time (epoch seconds), as replay's clock moves. */
  cursorAt(t) {
    if (!this.plot || !this.data[0].length) return;
    const left = this.plot.valToPos(t, 'x');
    if (Number.isFinite(left)) this.plot.setCursor({ left, top: this.height / 3 });
  }

  empty() {
    return this.data[0].length === 0;
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.data = [[], [], [], []];
  }
}

function round(v) {
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2);
}

/** Bucket rows of the API (`ts` RFC 3339, `avg`, `min`, `max`) as chart rows. */
export function fromBuckets(rows) {
  return rows.map((r) => ({ t: Date.parse(r.ts) / 1000, avg: r.avg, min: r.min, max: r.max }));
}
