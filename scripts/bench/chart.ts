/**
 * PNG charts (pureimage: pure JavaScript, no native canvas): a line chart (one line per system
 * through its points, each point labelled, linear axes from zero) and a bar chart (a panel per
 * figure, each with its own scale from zero, a labelled bar per system). Text needs a TrueType
 * font; DejaVu Sans (Debian's fonts-dejavu-core) is used when present, and the chart is drawn without
 * text otherwise (it says so).
 */
import { createWriteStream, existsSync } from 'node:fs';
import * as PImage from 'pureimage';

export interface Series {
  readonly name: string;
  readonly color: string;
  readonly points: ReadonlyArray<{ x: number; y: number; label: string }>;
}

const FONT = '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf';

/** A white image, and whether text can be drawn on it (the font is there). */
function blank(width: number, height: number) {
  const image = PImage.make(width, height);
  const ctx = image.getContext('2d');
  let text = false;
  if (existsSync(FONT)) {
    PImage.registerFont(FONT, 'DejaVu').loadSync();
    text = true;
  } else {
    console.log(`(the chart has no text: ${FONT} is missing; apt-get install fonts-dejavu-core)`);
  }
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, width, height);
  return { image, ctx, text };
}

function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

export async function drawChart(
  path: string,
  chart: { title: string; xLabel: string; yLabel: string; series: readonly Series[] },
): Promise<void> {
  const width = 900;
  const height = 560;
  const left = 80;
  const right = 30;
  const top = 60;
  const bottom = 70;
  const { image, ctx, text } = blank(width, height);
  const points = chart.series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const xMax = niceMax(Math.max(...points.map((p) => p.x)) * 1.05);
  const yMax = niceMax(Math.max(...points.map((p) => p.y)) * 1.05);
  const px = (x: number): number => left + (x / xMax) * (width - left - right);
  const py = (y: number): number => height - bottom - (y / yMax) * (height - top - bottom);
  // Grid and axes.
  ctx.strokeStyle = '#dddddd';
  ctx.lineWidth = 1;
  for (let k = 0; k <= 5; k++) {
    ctx.beginPath();
    ctx.moveTo(px(0), py((yMax * k) / 5));
    ctx.lineTo(px(xMax), py((yMax * k) / 5));
    ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(px((xMax * k) / 5), py(0));
    ctx.lineTo(px((xMax * k) / 5), py(yMax));
    ctx.stroke();
  }
  ctx.strokeStyle = '#000000';
  ctx.beginPath();
  ctx.moveTo(px(0), py(yMax));
  ctx.lineTo(px(0), py(0));
  ctx.lineTo(px(xMax), py(0));
  ctx.stroke();
  if (text) {
    ctx.fillStyle = '#000000';
    ctx.font = '18px DejaVu';
    ctx.fillText(chart.title, left, 30);
    ctx.font = '13px DejaVu';
    for (let k = 0; k <= 5; k++) {
      ctx.fillText(String(Math.round((xMax * k) / 5)), px((xMax * k) / 5) - 12, py(0) + 20);
      ctx.fillText(String(Math.round(((yMax * k) / 5) * 10) / 10), 20, py((yMax * k) / 5) + 4);
    }
    ctx.fillText(chart.xLabel, width / 2 - 30, height - 20);
    ctx.fillText(chart.yLabel, 10, top - 10);
  }
  chart.series.forEach((series, s) => {
    const valid = series.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
    ctx.strokeStyle = series.color;
    ctx.fillStyle = series.color;
    ctx.lineWidth = 3;
    ctx.beginPath();
    for (const [k, p] of valid.entries()) {
      if (k === 0) ctx.moveTo(px(p.x), py(p.y));
      else ctx.lineTo(px(p.x), py(p.y));
    }
    ctx.stroke();
    for (const p of valid) {
      ctx.fillRect(px(p.x) - 4, py(p.y) - 4, 8, 8);
      if (text) ctx.fillText(p.label, px(p.x) + 6, py(p.y) - 6);
    }
    if (text) {
      ctx.fillRect(width - 160, top + 10 + s * 22, 14, 14);
      ctx.font = '15px DejaVu';
      ctx.fillText(series.name, width - 140, top + 22 + s * 22);
      ctx.font = '13px DejaVu';
    }
  });
  await PImage.encodePNGToStream(image, createWriteStream(path));
}

export interface Panel {
  readonly title: string;
  readonly bars: ReadonlyArray<{ name: string; color: string; value: number }>;
}

/** Panels side by side, `columns` to a row; a bar that was not measured is left out. */
export async function drawBars(path: string, chart: { title: string; panels: readonly Panel[] }): Promise<void> {
  const columns = 4;
  const panelWidth = 280;
  const panelHeight = 260;
  const rows = Math.ceil(chart.panels.length / columns);
  const width = columns * panelWidth + 20;
  const height = 60 + rows * panelHeight;
  const { image, ctx, text } = blank(width, height);
  if (text) {
    ctx.fillStyle = '#000000';
    ctx.font = '18px DejaVu';
    ctx.fillText(chart.title, 20, 30);
  }
  chart.panels.forEach((panel, k) => {
    const x0 = 20 + (k % columns) * panelWidth;
    const y0 = 60 + Math.floor(k / columns) * panelHeight;
    const base = y0 + panelHeight - 50;
    const top = y0 + 40;
    const max = niceMax(Math.max(...panel.bars.map((b) => (Number.isFinite(b.value) ? b.value : 0))) * 1.1);
    const slot = (panelWidth - 40) / panel.bars.length;
    ctx.strokeStyle = '#000000';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x0, base);
    ctx.lineTo(x0 + panelWidth - 40, base);
    ctx.stroke();
    if (text) {
      ctx.fillStyle = '#000000';
      ctx.font = '14px DejaVu';
      ctx.fillText(panel.title, x0, y0 + 20);
    }
    panel.bars.forEach((bar, b) => {
      const left = x0 + b * slot + 6;
      if (text) {
        ctx.fillStyle = '#000000';
        ctx.font = '11px DejaVu';
        ctx.fillText(bar.name, left, base + 16);
      }
      if (!Number.isFinite(bar.value)) return;
      const h = (bar.value / max) * (base - top);
      ctx.fillStyle = bar.color;
      ctx.fillRect(left, base - h, slot - 12, h);
      if (text) {
        ctx.fillStyle = '#000000';
        ctx.fillText(bar.value.toLocaleString('en-US', { maximumFractionDigits: 1 }), left, base - h - 4);
      }
    });
  });
  await PImage.encodePNGToStream(image, createWriteStream(path));
}
