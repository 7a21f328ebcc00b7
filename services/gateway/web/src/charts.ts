/** Live line charts on uPlot: points are appended as a stream delivers them and drawn once per frame. */
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom.js";

export interface SeriesSpec {
  label: string;
  stroke: string;
  /** Draw points (sparse series such as validation loss). */
  points?: boolean;
}

export class LiveChart {
  readonly element: HTMLDivElement;
  readonly #xs: number[] = [];
  readonly #ys: (number | null)[][];
  readonly #plot: uPlot;
  #pending = false;

  constructor(title: string, xLabel: string, series: SeriesSpec[], options: { id?: string; log?: boolean } = {}) {
    this.element = h("div", { class: "chart", ...(options.id ? { id: options.id } : {}), "data-points": "0" });
    this.#ys = series.map(() => []);
    this.#plot = new uPlot(
      {
        title,
        width: 620,
        height: 260,
        scales: { x: { time: false }, ...(options.log ? { y: { distr: 3 } } : {}) },
        // Steps are whole numbers; small values (learning rates) read best in exponent form.
        axes: [
          { label: xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] },
          { size: 70, values: (_u, ticks) => ticks.map((t) => (t !== 0 && Math.abs(t) < 0.01 ? t.toExponential(1) : String(+t.toPrecision(4)))) },
        ],
        series: [{ label: xLabel }, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, spanGaps: true, points: { show: s.points ?? false } }))],
      },
      [[], ...series.map(() => [])],
      this.element,
    );
  }

  /** Appends one x with a value per series (null: no value of that series at this x). */
  push(x: number, values: (number | null | undefined)[]): void {
    this.#xs.push(x);
    this.#ys.forEach((ys, i) => ys.push(values[i] ?? null));
    this.element.dataset.points = String(this.#xs.length);
    if (this.#pending) return;
    this.#pending = true;
    requestAnimationFrame(() => {
      this.#pending = false;
      this.#plot.setData([this.#xs, ...this.#ys] as uPlot.AlignedData);
    });
  }

  get size(): number {
    return this.#xs.length;
  }
}

/** A static bar chart (counts by label) drawn with uPlot's bars path. */
export function barChart(title: string, labels: string[], values: number[], options: { id?: string; stroke?: string } = {}): HTMLDivElement {
  const el = h("div", { class: "chart", ...(options.id ? { id: options.id } : {}), "data-points": String(values.length) });
  const xs = labels.map((_, i) => i);
  new uPlot(
    {
      title,
      width: 620,
      height: 240,
      scales: { x: { time: false, range: [-0.5, Math.max(0.5, labels.length - 0.5)] }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{ values: (_u, ticks) => ticks.map((t) => labels[t] ?? ""), splits: () => xs, rotate: 0 } as uPlot.Axis, { size: 60 }],
      series: [{}, { label: "count", stroke: options.stroke ?? "#3b6fb6", fill: `${options.stroke ?? "#3b6fb6"}88`, paths: uPlot.paths.bars!({ size: [0.6, 80] }), points: { show: false } }],
      legend: { show: false },
    },
    [xs, values],
    el,
  );
  return el;
}
