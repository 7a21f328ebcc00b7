/** A point of a loss curve. */
export interface LossPoint {
  step: number;
  loss: number;
}

/**
 * A small text chart of one or two loss curves over steps: `*` train loss, `o` validation loss (`@` where both
 * fall in the same cell). The y axis is labelled with the loss at the top, middle and bottom rows.
 */
export function renderLossChart(train: LossPoint[], val: LossPoint[] = [], options: { width?: number; height?: number } = {}): string {
  const points = [...train, ...val];
  if (points.length === 0) return "(no loss values)";
  const width = options.width ?? 60;
  const height = options.height ?? 12;
  const maxStep = Math.max(...points.map((p) => p.step));
  const minStep = Math.min(...points.map((p) => p.step));
  let lo = Math.min(...points.map((p) => p.loss));
  let hi = Math.max(...points.map((p) => p.loss));
  if (hi - lo < 1e-9) {
    hi += 0.5;
    lo -= 0.5;
  }
  const grid = Array.from({ length: height }, () => Array<string>(width).fill(" "));
  const place = (p: LossPoint, mark: string) => {
    const x = maxStep === minStep ? 0 : Math.round(((p.step - minStep) / (maxStep - minStep)) * (width - 1));
    const y = Math.round(((hi - p.loss) / (hi - lo)) * (height - 1));
    const cell = grid[y]![x]!;
    grid[y]![x] = cell === " " || cell === mark ? mark : "@";
  };
  for (const p of train) place(p, "*");
  for (const p of val) place(p, "o");
  const label = (row: number) => {
    if (row === 0) return hi.toFixed(3);
    if (row === height - 1) return lo.toFixed(3);
    if (row === Math.floor((height - 1) / 2)) return (hi - ((hi - lo) * row) / (height - 1)).toFixed(3);
    return "";
  };
  const labelWidth = Math.max(...[0, Math.floor((height - 1) / 2), height - 1].map((r) => label(r).length));
  const lines = grid.map((row, i) => `${label(i).padStart(labelWidth)} │${row.join("")}`);
  lines.push(`${" ".repeat(labelWidth)} └${"─".repeat(width)}`);
  const left = `step ${minStep}`;
  const right = `step ${maxStep}`;
  lines.push(`${" ".repeat(labelWidth + 2)}${left}${" ".repeat(Math.max(1, width - left.length - right.length))}${right}`);
  lines.push(`${" ".repeat(labelWidth + 2)}* train loss${val.length ? "   o validation loss   @ both" : ""}`);
  return lines.join("\n");
}
